# Per study: aggregate the runs with Polars, then LR sensitivity, scaling fits, the
# forecast with its backtest, and the claims; finally the findings page over all studies.


rule aggregate:
    input:
        study_summaries,
    output:
        runs=f"{RESULTS}/studies/{{study}}/runs.parquet",
        curves=f"{RESULTS}/studies/{{study}}/curves.parquet",
    params:
        manifest=lambda wc: study_manifest(wc.study),
        runs_dir=f"{RESULTS}/runs",
    log:
        f"{RESULTS}/logs/aggregate/{{study}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow/scripts/aggregate.py"


rule analyse:
    input:
        runs=f"{RESULTS}/studies/{{study}}/runs.parquet",
        curves=f"{RESULTS}/studies/{{study}}/curves.parquet",
    output:
        sensitivity=f"{RESULTS}/studies/{{study}}/sensitivity.parquet",
        fits=f"{RESULTS}/studies/{{study}}/fits.parquet",
        forecast=f"{RESULTS}/studies/{{study}}/forecast.json",
        forecast_table=report(
            f"{RESULTS}/studies/{{study}}/forecast.csv",
            caption="../workflow/report/forecast_table.rst",
            category="{study}",
            subcategory="forecast",
        ),
        claims=f"{RESULTS}/studies/{{study}}/claims.json",
    params:
        info=lambda wc: study_info(wc.study),
    log:
        f"{RESULTS}/logs/analyse/{{study}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow/scripts/analyse.py"


rule findings:
    input:
        claims=expand(f"{RESULTS}/studies/{{study}}/claims.json", study=STUDIES),
        figures=[f for s in STUDIES for f in figure_targets(s)],
        # supplements (other config files' results) count only once they exist
        supplement_claims=findings_doc.supplement_claims(SUPPLEMENTS),
        supplement_figures=findings_doc.supplement_figures(SUPPLEMENTS),
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
