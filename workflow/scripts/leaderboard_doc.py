# Shim: the `leaderboard_doc` rule calls one function of the stability package.
from stability.leaderboard_doc import write_page
from stability.logs import to_log

with to_log(snakemake.log[0]):
    write_page(snakemake.input.table[0], snakemake.input.claims[0], snakemake.input.png[0], snakemake.output.doc,
               snakemake.output.figure, snakemake.params.command)
