"""Which runs may train as one fused program (stability.fused) and where fusing pays: the
decisions, without torch, so the workflow can plan with them (rules/train.smk) and the
`stability train-fused` command can validate its members before torch is imported.

A sweep's members share one model shape, dataset and batch shape and differ only in
MEMBER_KEYS. `plan` groups the runs that are due (outputs missing) by that shared part;
a group of one trains as an ordinary run. `should_fuse` reads benchmarks/fused_sweep.py's
JSON: fusing is chosen only where it was measured to pay on the device kind the jobs run on.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from . import interventions
from .config import ConfigError, RunConfig, flatten

# Keys members of one sweep may differ in: the optimizer and loss sections, the seed, and
# train keys that only change when a member stops, what it logs about itself or how it is
# checkpointed. Everything else (model, data, batch shape, logging cadence, device,
# precision) is the one program every member runs.
MEMBER_KEYS = ("seed", "optim.", "loss.", "train.steps", "train.divergence_margin", "train.divergence_window",
               "train.stop_on_divergence", "train.checkpoint_every", "train.probe_step", "train.grad_stats_window",
               "train.threads")

# `fuse:` in a workflow config: `auto` fuses where should_fuse says it pays, `never` trains
# every run alone, `always` fuses every group of two or more due, fusable runs.
MODES = ("auto", "never", "always")

FUSE_MIN_RATIO = 1.2  # a measured fused/one-at-a-time throughput ratio below this is noise or loss


def _member_key(key: str) -> bool:
    return any(key == k or (k.endswith(".") and key.startswith(k)) for k in MEMBER_KEYS)


def unfusable_reason(cfg: RunConfig) -> str | None:
    """Why `cfg` cannot be a member of any fused sweep (a message naming the key), or None."""
    if cfg.train.compile:
        return "train.compile: not supported in a fused sweep (train the runs one at a time)"
    if cfg.train.max_logit_source == "kernel":  # flex_attention has no vmap rule: members are probed
        return ("train.max_logit_source: 'kernel' is not supported in a fused sweep (its max logits come "
                "from the fp32 probe); use 'auto' or 'probe', or train the runs one at a time")
    # The stacked step is AdamW's and calls no seam after it: an intervention that replaces the
    # optimizer or edits weights after the step (stability.interventions) trains one run at a time.
    for iv in interventions.REGISTRY.values():
        if iv.on_in(cfg) and {"optimizer", "after_step"} & set(iv.changes):
            return (f"{', '.join(iv.keys)}: {iv.name} is not supported in a fused sweep (it replaces the "
                    "optimizer or edits weights after the step); train the runs one at a time")
    return None


def check_fusable(cfgs: list[RunConfig]) -> None:
    """Raise ConfigError naming the keys that differ between members but must be shared, an
    unfusable member's key (unfusable_reason), or a run given twice."""
    if not cfgs:
        raise ConfigError("fused sweep: no members")
    first = flatten(cfgs[0].to_dict())
    for i, cfg in enumerate(cfgs[1:], 1):
        other = flatten(cfg.to_dict())
        bad = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k) and not _member_key(k))
        if bad:
            raise ConfigError(f"fused sweep: member {i} differs from member 0 in {', '.join(bad)}; members may "
                              f"differ only in {', '.join(MEMBER_KEYS)}")
    for cfg in cfgs:
        reason = unfusable_reason(cfg)
        if reason:
            raise ConfigError(reason)
    ids = [c.run_id() for c in cfgs]
    dup = sorted({r for r in ids if ids.count(r) > 1})
    if dup:
        raise ConfigError(f"fused sweep: run {dup[0]} appears more than once")


def shape_key(cfg: RunConfig) -> str:
    """12 hex digits naming everything members of one sweep share (the config without
    MEMBER_KEYS): two runs may fuse exactly when their keys are equal and both are fusable."""
    shared = {k: v for k, v in flatten(cfg.to_dict()).items() if not _member_key(k)}
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()[:12]


def group_id(run_ids: Iterable[str]) -> str:
    """12 hex digits naming a set of runs (order does not matter)."""
    return hashlib.sha256(" ".join(sorted(run_ids)).encode()).hexdigest()[:12]


# ---- where fusing pays --------------------------------------------------------------------

def should_fuse(device_kind: str, results: dict | str | Path | None = None, d_model: int | None = None,
                min_ratio: float = FUSE_MIN_RATIO) -> bool:
    """Whether to train a sweep fused on `device_kind` ("cpu", or a CUDA device name such as
    "NVIDIA H200"), from benchmarks/fused_sweep.py's JSON (a dict or its path).

    Fuse only where the benchmark measured this device kind and every measured shape (or the
    one nearest `d_model`) gave combined tokens/s at least `min_ratio` times one run at a
    time. No measurement for the kind, or an unreadable file: do not fuse."""
    if results is None:
        return False
    if not isinstance(results, dict):
        try:
            results = json.loads(Path(results).read_text())
        except (OSError, ValueError):
            return False
    if not isinstance(results, dict):
        return False
    kind = measured_kind(results)
    if not kind or kind.lower() != device_kind.lower():
        return False
    cases = [c for c in results.get("cases", []) if c.get("ratio") is not None]
    if not cases:
        return False
    if d_model is not None:
        nearest = min(abs(c["d_model"] - d_model) for c in cases)
        cases = [c for c in cases if abs(c["d_model"] - d_model) == nearest]
    return all(c["ratio"] >= min_ratio for c in cases)


def measured_kind(results: dict) -> str | None:
    """The device kind a benchmarks/fused_sweep.py JSON was measured on (None: not said)."""
    machine = results.get("machine") or {}
    return machine.get("device_kind") or machine.get("device")


def load_measurements(paths: Iterable[str | Path]) -> list[dict]:
    """The readable benchmarks/fused_sweep.py JSON files among `paths` (others are skipped)."""
    out = []
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
        except (OSError, ValueError):
            continue
        if isinstance(d, dict) and isinstance(d.get("cases"), list) and measured_kind(d):
            out.append(d)
    return out


def pays(device_kind: str | None, d_model: int, measurements: list[dict]) -> bool:
    """should_fuse over every measurement of `device_kind`: at least one, and all say yes.
    An unknown kind (None) never fuses."""
    if device_kind is None:
        return False
    mine = [m for m in measurements if measured_kind(m).lower() == device_kind.lower()]
    return bool(mine) and all(should_fuse(device_kind, m, d_model) for m in mine)


def job_device_kind(cfg: RunConfig, gpu: bool, gpu_name: str | None) -> str | None:
    """The device kind a workflow job of `cfg` trains on, as should_fuse names it: "cpu" for
    `train.device: cpu` or for `auto` in a workflow without `gpu: true`; otherwise the
    workflow's `gpu_name` (None when not given: unknown, so `fuse: auto` does not fuse)."""
    device = cfg.train.device
    if device == "cpu" or (device == "auto" and not gpu):
        return "cpu"
    return gpu_name


def plan(runs: Mapping[str, RunConfig], due: Iterable[str], mode: str,
         fuse_here: Callable[[RunConfig], bool] = lambda cfg: False) -> dict[str, list[str]]:
    """The fused jobs to run: {group_id: member run ids (sorted, two or more)}.

    Only `due` runs (their outputs missing) are grouped, so a finished run is never retrained
    and a changed grid point alone is a group of one, which trains as an ordinary run. Runs
    group by shape_key; unfusable runs stay alone. `mode` is one of MODES; under "auto" a
    group fuses only where `fuse_here(member config)` (e.g. `pays` on its device kind) says so.
    Raises ConfigError for an unknown mode."""
    if mode not in MODES:
        raise ConfigError(f"fuse: expected one of {', '.join(MODES)}, got {mode!r}")
    if mode == "never":
        return {}
    by_shape: dict[str, list[str]] = {}
    for rid in sorted(set(due)):
        cfg = runs[rid]
        if unfusable_reason(cfg) is None:
            by_shape.setdefault(shape_key(cfg), []).append(rid)
    groups = {}
    for members in by_shape.values():
        if len(members) < 2 or (mode == "auto" and not fuse_here(runs[members[0]])):
            continue
        groups[group_id(members)] = members
    return groups


# ---- what a workflow's fused job leaves behind --------------------------------------------

def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def write_manifest(path: str | Path, members: Mapping[str, str | Path]) -> None:
    """Record a finished fused job: {"group": group_id, "members": {run_id: {"out": run
    directory, "summary_sha256": hash of its summary.json}}}. Raises OSError if a member's
    summary.json is missing."""
    from .io import write_text
    record = {"group": group_id(members),
              "members": {rid: {"out": str(out), "summary_sha256": _sha256(Path(out) / "summary.json")}
                          for rid, out in sorted(members.items())}}
    write_text(Path(path), json.dumps(record, indent=1) + "\n")


def trained_in_sweep(manifests: Iterable[str | Path], run_dirs: Mapping[str, str | Path]) -> set[str]:
    """The runs of `run_dirs` ({run_id: directory}) whose outputs are still those a fused job
    wrote: listed in a manifest (write_manifest) whose summary hash equals the summary.json
    there now. A run retrained since, or unreadable manifests, do not count."""
    done = set()
    for path in manifests:
        try:
            members = json.loads(Path(path).read_text()).get("members", {})
        except (OSError, ValueError, AttributeError):
            continue
        for rid, rec in members.items() if isinstance(members, dict) else ():
            if rid in run_dirs and rid not in done:
                try:
                    if _sha256(Path(run_dirs[rid]) / "summary.json") == rec.get("summary_sha256"):
                        done.add(rid)
                except (OSError, AttributeError):
                    continue
    return done
