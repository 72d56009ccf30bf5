# The stability workflow: model scale x LR x intervention grids -> training runs ->
# Polars aggregation -> sensitivity, scaling fits and forecasts -> Altair figures.
# Kept thin: the grid logic lives in stability/grid.py, the work in the `stability` package.
from snakemake.utils import min_version, validate

min_version("9.0")


# The default study, unless the user names another with --configfile (Snakemake would
# otherwise deep-merge the two and run both studies' grids).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


validate(config, "workflow/schemas/config.schema.yaml")


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/figures.smk"
include: "rules/analyse.smk"


report: "workflow/report/workflow.rst"


# Light rules run on the submitting node, not as cluster jobs.
localrules:
    all,
    aggregate,
    analyse,
    figure,
    findings,


rule all:
    input:
        final_targets(),
    default_target: True
