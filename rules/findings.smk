# The findings page over all studies (and the supplements that have run), with the figures
# it shows copied beside it.


rule findings:
    input:
        unpack(findings_inputs),
    output:
        doc=FINDINGS_DOC,
        figures=directory(FINDINGS_FIGURES),
    params:
        command=REGENERATE_COMMAND,
        sources=findings_doc.supplement_sources(SUPPLEMENTS),
    log:
        f"{RESULTS}/logs/findings.log",
    conda:
        CONDA_ENV
    script:
        "../workflow/scripts/findings.py"
