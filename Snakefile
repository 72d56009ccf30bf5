# The stability workflow: model scale x LR x intervention grids -> training runs ->
# Polars aggregation -> sensitivity, scaling fits and forecasts -> Altair figures.
# Kept thin: the grid logic lives in stability/grid.py, the work in the `stability` package.
import sys

from snakemake.utils import min_version, validate

min_version("9.0")


# The default study, unless the user names another with --configfile (Snakemake would
# otherwise deep-merge the two and run both studies' grids).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


sys.path.insert(0, workflow.basedir)  # the package works uninstalled, too
from stability.config import ConfigError
from stability.grid import load_workflow, schema_error

SCHEMA = "workflow/schemas/config.schema.yaml"


def refuse(message):
    """Bad input: one line naming the field and exit 2, before any job (as the CLI does)."""
    sys.stderr.write(f"error: invalid config: {message}\n")
    sys.exit(2)


# Snakemake reads config files as YAML 1.1 (`1e-3` is a string, `yes` a boolean); re-read
# them with the product's YAML 1.2 loader, so the schema and the grid see what was written.
try:
    _product_config = load_workflow(workflow.configfiles, workflow.config_settings.config)
except ConfigError as e:
    refuse(e)
config.clear()
config.update(_product_config)

try:
    validate(config, SCHEMA)
except WorkflowError:  # its message dumps the schema: name the one field instead
    refuse(schema_error(config, SCHEMA))


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/train.smk"
include: "rules/analyse.smk"
include: "rules/figures.smk"
include: "rules/findings.smk"
include: "rules/leaderboard.smk"


report: "workflow/report/workflow.rst"


# Light rules run on the submitting node, not as cluster jobs.
localrules:
    all,
    aggregate,
    analyse,
    figure,
    findings,
    leaderboard,
    leaderboard_doc,


rule all:
    input:
        final_targets(),
    default_target: True
