# Shim: the `findings` rule calls one function of the stability package.
from stability.findings_doc import by_study, write_findings
from stability.logs import to_log

with to_log(snakemake.log[0]):
    claims, figures = by_study(snakemake.input.items())
    write_findings(claims, figures, snakemake.output.doc, snakemake.output.figures, snakemake.params.command,
                   sources=snakemake.params.sources)
