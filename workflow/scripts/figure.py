# Shim: the `figure` rule calls one function of the stability package.
from stability.figures import render_figure
from stability.logs import to_log

with to_log(snakemake.log[0]):
    render_figure(snakemake.wildcards.figure, dict(snakemake.input.items()), dict(snakemake.output.items()))
