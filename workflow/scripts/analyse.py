# Shim: the `analyse` rule calls one function of the stability package.
from stability.analysis import analyse_study
from stability.logs import to_log

with to_log(snakemake.log[0]):
    analyse_study(snakemake.input.runs, dict(snakemake.output.items()), snakemake.params.info)
