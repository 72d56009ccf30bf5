# Shim: the `aggregate` rule calls one function of the stability package.
from stability.analysis.aggregate import write_study_tables
from stability.logs import to_log

with to_log(snakemake.log[0]):
    write_study_tables(snakemake.params.manifest, snakemake.params.runs_dir, snakemake.output.runs, snakemake.output.curves)
