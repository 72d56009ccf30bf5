# One job per unique run. The run id is the hash of the resolved config, so a changed grid
# point is a new target, an unchanged one is never retrained, and a run shared by two
# studies trains once. A retry (or rerun) resumes from the run's last checkpoint.
#
# Fused sweeps (stability.fused; docs/performance.md): runs that are due (outputs missing)
# and differ only in optimizer-side values train as one job, `train_fused_<group>`, which
# writes each member's usual run directory. Groups are planned here, from which runs are
# due, by stability.fusion.plan: a group of one is an ordinary `train` job, so changing one
# LR trains one run. `fuse: auto` fuses only where benchmarks/fused_sweep.py measured it to
# pay on the jobs' device kind (never on CPU); `never` / `always` decide outright.


def run_complete(run_id):
    d = run_dir(run_id)
    return os.path.exists(f"{d}/summary.json") and os.path.exists(f"{d}/metrics.parquet")


FUSE_MEASURED = fusion.load_measurements(FUSE_BENCHMARKS) if FUSE == "auto" else []


def _fuse_pays(cfg):
    return fusion.pays(fusion.job_device_kind(cfg, GPU, GPU_NAME), cfg.model.d_model, FUSE_MEASURED)


try:
    FUSED = fusion.plan(RUNS, [r for r in RUNS if not run_complete(r)], FUSE, _fuse_pays)
except ConfigError as e:
    refuse(e)
# Finished runs whose outputs a fused job wrote: Snakemake recorded that job's (empty) params
# for them, so they are claimed by `train_fused_member`, whose params are also unrecorded;
# `train`'s would differ and retrain them.
FUSED_DONE = fusion.trained_in_sweep(
    sorted(glob.glob(f"{RESULTS}/fused/*.json")), {r: run_dir(r) for r in RUNS if run_complete(r)}
)
FUSED_MEMBERS = sorted({r for members in FUSED.values() for r in members} | FUSED_DONE)


# One run trained alone: `train`, and `train_fused_member` for a fused member that must rerun.
TRAIN_SHELL = (
    f"{STABILITY} train --out {{params.out}} --expect-run-id {{wildcards.run_id}} --quiet{' --pin-gpu' if GPU else ''}"
    " {params.args} {params.observers} --set train.threads={threads} > {log} 2>&1"
)


def _not_in(run_ids):
    """A run id pattern that matches none of run_ids."""
    return f"(?!{'|'.join(run_ids)})[0-9a-f]{{12}}" if run_ids else "[0-9a-f]{12}"


rule train:
    input:
        data=lambda wc: expand(rules.prepare_data.output[0], data_id=RUNS[wc.run_id].data_id()),
    output:
        summary=f"{RESULTS}/runs/{{run_id}}/summary.json",
        metrics=f"{RESULTS}/runs/{{run_id}}/metrics.parquet",
    wildcard_constraints:
        run_id=_not_in(FUSED_MEMBERS),
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
        TRAIN_SHELL


def fused_members(members, threads):
    """The `--member ...` arguments of one group's `stability train-fused` command."""
    return " ".join(f"--member {shlex.quote(run_dir(r))} --expect-run-id {r} {train_args(r)} {observer_args(r)} "
                    f"--set train.threads={threads}" for r in members)


for _group, _members in FUSED.items():

    rule:
        name:
            f"train_fused_{_group}"
        input:
            data=expand(rules.prepare_data.output[0], data_id=RUNS[_members[0]].data_id()),
        output:
            summaries=[f"{run_dir(r)}/summary.json" for r in _members],
            metrics=[f"{run_dir(r)}/metrics.parquet" for r in _members],
            manifest=f"{RESULTS}/fused/{_group}.json",
        log:
            f"{RESULTS}/logs/train/fused-{_group}.log",
        params:
            # Snakemake runs a shell directive's expression when the job runs, after this loop
            # has moved on: each group binds its members here. Derived (takes `output`), so the
            # params rerun trigger records none, as for train_fused_member.
            members=lambda wc, output, threads, m=tuple(_members): fused_members(m, threads),
        threads: 1 if GPU else THREADS
        resources:
            mem_mb=res.sweep_mem_mb([RUNS[r] for r in _members]),
            runtime=lambda wc, threads, m=tuple(_members): res.sweep_runtime_min([RUNS[r] for r in m], threads, GPU),
            gpu=1 if GPU else 0,
        conda:
            CONDA_ENV
        shell:
            f"{STABILITY} train-fused --quiet{' --pin-gpu' if GPU else ''} --manifest {{output.manifest}}"
            " {params.members} > {log} 2>&1"


if FUSED_DONE:

    rule train_fused_member:
        # Trains one run alone, as `train` does, if a finished fused member must rerun (its
        # data changed); its params are derived (take `output`), so Snakemake records none.
        input:
            data=lambda wc: expand(rules.prepare_data.output[0], data_id=RUNS[wc.run_id].data_id()),
        output:
            summary=f"{RESULTS}/runs/{{run_id}}/summary.json",
            metrics=f"{RESULTS}/runs/{{run_id}}/metrics.parquet",
        wildcard_constraints:
            run_id="|".join(sorted(FUSED_DONE)),
        params:
            out=lambda wc, output: run_dir(wc.run_id),
            args=lambda wc, output: train_args(wc.run_id),
            observers=lambda wc, output: observer_args(wc.run_id),
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
            TRAIN_SHELL
