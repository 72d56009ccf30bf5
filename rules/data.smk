# Tokenize each distinct dataset once; every run that uses it depends on its meta.json.


rule prepare_data:
    output:
        f"{RESULTS}/data/{{data_id}}/meta.json",
    params:
        args=lambda wc: " ".join(
            f"--set {shlex.quote(a)}"
            for a in set_args(DATA[wc.data_id]) + [f"data.cache_dir={RESULTS}/data"]
        ),
    log:
        f"{RESULTS}/logs/data/{{data_id}}.log",
    resources:
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        f"{STABILITY} prepare-data {{params.args}} > {{log}} 2>&1"
