# Shim: the `leaderboard` rule calls one function of the stability package.
from stability.leaderboard_doc import write_leaderboard
from stability.logs import to_log

with to_log(snakemake.log[0]):
    write_leaderboard(snakemake.input.runs, dict(snakemake.output.items()), snakemake.wildcards.study,
                      snakemake.params.reference)
