# One job per (study, figure): each figure is drawn from the study's parquet tables, saved
# as PNG (for the report), SVG and self-contained interactive HTML.
rule figure:
    input:  # the names are stability.figures.TABLES
        runs=rules.aggregate.output.runs,
        curves=rules.aggregate.output.curves,
        sensitivity=rules.analyse.output.sensitivity,
        forecast=rules.analyse.output.forecast,
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
