# Shim: the `findings` rule calls one function of the stability package.
from stability.findings_doc import write_findings
from stability.logs import to_log

with to_log(snakemake.log[0]):
    write_findings(snakemake.input.claims + snakemake.input.supplement_claims,
                   snakemake.input.figures + snakemake.input.supplement_figures, snakemake.output.doc,
                   snakemake.output.figures, snakemake.params.command, sources=snakemake.params.sources)
