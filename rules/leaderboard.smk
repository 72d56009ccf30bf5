# The intervention leaderboard (studies with `analysis: {leaderboard: true}`): the variants
# ranked by measured stability, and published claims checked, beside the study's tables; the
# page (with the command that regenerates it) goes to `leaderboard_doc`, by default
# <results>/leaderboard.md when the config has one leaderboard study.


rule leaderboard:
    input:
        runs=rules.aggregate.output.runs,
    output:
        table=f"{RESULTS}/studies/{{study}}/leaderboard/leaderboard.parquet",
        claims=f"{RESULTS}/studies/{{study}}/leaderboard/claims.json",
        png=report(
            f"{RESULTS}/studies/{{study}}/leaderboard/ranking.png",
            caption="../workflow/report/leaderboard.rst",
            category="{study}",
            subcategory="leaderboard",
        ),
        svg=f"{RESULTS}/studies/{{study}}/leaderboard/ranking.svg",
        html=f"{RESULTS}/studies/{{study}}/leaderboard/ranking.html",
    params:
        reference=lambda wc: STUDIES[wc.study].reference,
    log:
        f"{RESULTS}/logs/leaderboard/{{study}}.log",
    conda:
        CONDA_ENV
    script:
        "../workflow/scripts/leaderboard.py"


rule leaderboard_doc:
    input:
        table=lambda wc: expand(rules.leaderboard.output.table, study=LEADERBOARD_STUDY),
        claims=lambda wc: expand(rules.leaderboard.output.claims, study=LEADERBOARD_STUDY),
        png=lambda wc: expand(rules.leaderboard.output.png, study=LEADERBOARD_STUDY),
    output:
        doc=LEADERBOARD_DOC or "leaderboard_doc.unused",
        figure=str(Path(LEADERBOARD_DOC or "leaderboard_doc.unused").with_suffix("")) + "_figures/ranking.png",
    params:
        command=REGENERATE_COMMAND,
    log:
        f"{RESULTS}/logs/leaderboard/doc.log",
    conda:
        CONDA_ENV
    script:
        "../workflow/scripts/leaderboard_doc.py"
