# One job per (study, figure): each figure is drawn from the study's parquet tables, saved
# as PNG (for the report), SVG and self-contained interactive HTML.
rule figure:
    input:
        runs=f"{RESULTS}/studies/{{study}}/runs.parquet",
        curves=f"{RESULTS}/studies/{{study}}/curves.parquet",
        sensitivity=f"{RESULTS}/studies/{{study}}/sensitivity.parquet",
        fits=f"{RESULTS}/studies/{{study}}/fits.parquet",
        forecast=f"{RESULTS}/studies/{{study}}/forecast.json",
    output:
        png=report(
            f"{RESULTS}/studies/{{study}}/figures/{{figure}}.png",
            caption="../workflow/report/figure.rst",
            category="{study}",
            subcategory="{figure}",
        ),
        svg=f"{RESULTS}/studies/{{study}}/figures/{{figure}}.svg",
        html=f"{RESULTS}/studies/{{study}}/figures/{{figure}}.html",
    log:
        f"{RESULTS}/logs/figures/{{study}}-{{figure}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow/scripts/figure.py"
