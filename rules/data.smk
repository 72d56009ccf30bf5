# Tokenize each distinct dataset once; every run that uses it depends on its meta.json.


rule prepare_data:
    output:
        f"{RESULTS}/data/{{data_id}}/meta.json",
    params:
        args=lambda wc: data_args(wc.data_id),
    log:
        f"{RESULTS}/logs/data/{{data_id}}.log",
    resources:
        mem_mb=4000,
    conda:
        CONDA_ENV
    shell:
        f"{STABILITY} prepare-data --expect-data-id {{wildcards.data_id}} {{params.args}} > {{log}} 2>&1"
