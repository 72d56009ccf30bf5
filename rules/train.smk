# One job per unique run. The run id is the hash of the resolved config, so a changed grid
# point is a new target, an unchanged one is never retrained, and a run shared by two
# studies trains once. A retry (or rerun) resumes from the run's last checkpoint.


rule train:
    input:
        data=lambda wc: expand(rules.prepare_data.output[0], data_id=RUNS[wc.run_id].data_id()),
    output:
        summary=f"{RESULTS}/runs/{{run_id}}/summary.json",
        metrics=f"{RESULTS}/runs/{{run_id}}/metrics.parquet",
    params:
        out=lambda wc: run_dir(wc.run_id),
        args=lambda wc: train_args(wc.run_id),
        observers=lambda wc: observer_args(wc.run_id),
    log:
        f"{RESULTS}/logs/train/{{run_id}}.log",
    threads: 1 if GPU else THREADS
    resources:
        mem_mb=lambda wc: res.mem_mb(RUNS[wc.run_id]),
        runtime=lambda wc, threads: res.runtime_min(RUNS[wc.run_id], threads, GPU),
        gpu=1 if GPU else 0,
    conda:
        CONDA_ENV
    shell:
        f"{STABILITY} train --out {{params.out}} --expect-run-id {{wildcards.run_id}} --quiet{' --pin-gpu' if GPU else ''}"
        " {params.args} {params.observers} --set train.threads={threads} > {log} 2>&1"
