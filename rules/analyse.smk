# Per study: aggregate the runs with Polars, then LR sensitivity, scaling fits, the
# forecast with its backtest, and the claims.


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
        runs=rules.aggregate.output.runs,
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
