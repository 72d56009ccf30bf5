"""Study grids: scale x LR x variant x seed -> resolved run configs -> run ids.

A workflow config (config/*.yaml) names a ladder of scales and a set of studies. Each study
expands to one resolved `RunConfig` per grid point; a run's id is the hash of that config,
so two studies that ask for the same run share it (it trains once).
"""
from __future__ import annotations

import functools
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from . import corpus
from .config import ConfigError, RunConfig, diff_from_defaults, flatten, from_dict, load_yaml, merge


@dataclass(frozen=True)
class GridPoint:  # frozen, so its cached run_id never goes stale
    study: str
    scale: str
    variant: str
    lr: float
    seed: int
    config: RunConfig = field(compare=False, hash=False)

    @functools.cached_property
    def run_id(self) -> str:
        return self.config.run_id()

    def manifest_row(self) -> dict[str, Any]:
        return {"study": self.study, "run_id": self.run_id, "scale": self.scale, "variant": self.variant,
                "lr": self.lr, "seed": self.seed}


@dataclass
class Study:
    name: str
    points: list[GridPoint]
    findings: list[int]
    reference: str  # the variant with every mitigation on (the study's baseline)
    options: dict[str, Any]  # study-level analysis options (forecast targets, probe_step, ...)

    @property
    def run_ids(self) -> list[str]:
        return sorted({p.run_id for p in self.points})


def _require(d: dict, key: str, where: str, kind: type) -> Any:
    if key not in d:
        raise ConfigError(f"{where}.{key}: missing (expected {kind.__name__})")
    value = d[key]
    if not isinstance(value, kind):
        raise ConfigError(f"{where}.{key}: expected {kind.__name__}, got {value!r}")
    return value


def _dotted(d: dict | None, where: str) -> dict[str, Any]:
    """Accept either dotted keys ({optim.lr: 1}) or nested sections ({optim: {lr: 1}})."""
    if d is None:
        return {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping of config keys, got {d!r}")
    return flatten(d)


def expand_study(name: str, study: dict, workflow: dict) -> Study:
    where = f"studies.{name}"
    if not isinstance(study, dict):
        raise ConfigError(f"{where}: expected a mapping")
    scales_cfg = workflow.get("scales") or {}
    if not isinstance(scales_cfg, dict):  # `stability grid` has no JSON schema in front of it
        raise ConfigError(f"scales: expected a mapping of name -> {{d_model, n_layers, head_dim}}, got {scales_cfg!r}")
    scale_names = _require(study, "scales", where, list)
    lrs = _require(study, "lrs", where, list)
    seeds = study.get("seeds", [0])
    # numbers pass on to the seed field's own check, which refuses 0.5 rather than truncating it
    if not isinstance(seeds, list) or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where}.seeds: expected a list of integers, got {seeds!r}")
    findings = study.get("findings", [])
    if not isinstance(findings, list) or not all(isinstance(f, int) and not isinstance(f, bool) for f in findings):
        raise ConfigError(f"{where}.findings: expected a list of finding numbers, got {findings!r}")
    if not isinstance(study.get("analysis") or {}, dict):
        raise ConfigError(f"{where}.analysis: expected a mapping of analysis options, got {study['analysis']!r}")
    variants = study.get("variants") or {"default": {}}
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{where}.variants: expected a non-empty mapping of name -> overrides")
    reference = study.get("reference", next(iter(variants)))
    if not isinstance(reference, str) or reference not in variants:
        raise ConfigError(f"{where}.reference: unknown variant {reference!r} (expected one of: {', '.join(variants)})")
    for s in scale_names:
        if not isinstance(s, str) or s not in scales_cfg:
            raise ConfigError(f"{where}.scales: unknown scale {s!r} (expected one of: {', '.join(scales_cfg) or 'none defined'})")
    for lr in lrs:
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ConfigError(f"{where}.lrs: expected positive numbers, got {lr!r}")
    base = {"code_version": workflow.get("code_version", 1),
            **_dotted(workflow.get("defaults"), "defaults"), **_dotted(study.get("overrides"), f"{where}.overrides")}
    points = []
    for scale in scale_names:
        scale_over = _dotted(scales_cfg[scale], f"scales.{scale}")
        scale_over = {k if "." in k else f"model.{k}": v for k, v in scale_over.items()}
        for vname, vover in variants.items():
            vover = _dotted(vover, f"{where}.variants.{vname}")
            for lr in lrs:
                for seed in seeds:
                    # seed as written: the field's check refuses 0.5 rather than int() truncating it
                    over = {**base, **scale_over, **vover, "optim.lr": float(lr), "seed": seed}
                    try:
                        cfg = from_dict(merge({}, over))
                    except ConfigError as e:
                        raise ConfigError(f"{where} (scale={scale}, variant={vname}, lr={lr}): {e}") from None
                    points.append(GridPoint(name, scale, vname, float(lr), cfg.seed, cfg))
    return Study(name=name, points=points, findings=list(study.get("findings", [])), reference=reference,
                 options=dict(study.get("analysis") or {}))


def expand(workflow: dict) -> dict[str, Study]:
    """Every study of a workflow config, expanded and validated."""
    studies = workflow.get("studies") or {}
    if not isinstance(studies, dict) or not studies:
        raise ConfigError("studies: expected at least one study")
    out = {name: expand_study(name, s, workflow) for name, s in studies.items()}
    with corpus.frozen():  # every run id of a local corpus from one fingerprint of its files
        for st in out.values():
            for p in st.points:
                p.run_id  # noqa: B018 - computes and caches it
    return out


def runs_by_id(studies: dict[str, Study]) -> dict[str, RunConfig]:
    """Unique runs across studies (shared runs appear once)."""
    out: dict[str, RunConfig] = {}
    for st in studies.values():
        for p in st.points:
            out.setdefault(p.run_id, p.config)
    return out


def set_args(cfg: RunConfig) -> list[str]:
    """The `--set key=value` list that rebuilds cfg from the built-in defaults.

    Lossless: the CLI reads each value by its field's declared type (config._coerce), so a
    string comes back verbatim (`a #1`, `2024`, `yes`), a float from its repr (which
    round-trips exactly) and a bool from `True`/`False`."""
    return [f"{k}={v}" for k, v in sorted(diff_from_defaults(cfg).items())]


def observer_set_args(cfg: RunConfig) -> tuple[list[str], list[str]]:
    """set_args split in two: the keys that make the run (its id) and its observer keys
    (RunConfig.observer_keys: they only change what it writes about itself)."""
    observers = tuple(f"{k}=" for k in cfg.observer_keys())
    args = set_args(cfg)
    return [a for a in args if not a.startswith(observers)], [a for a in args if a.startswith(observers)]


def data_set_args(cfg: RunConfig) -> list[str]:
    """The part of set_args that the token cache depends on (`stability prepare-data`)."""
    return [a for a in set_args(cfg) if a.startswith(("data.", "train.seq_len="))]


def shell_set_args(args: Iterable[str]) -> str:
    """`--set` arguments for a job's shell command, each quoted as one word."""
    return " ".join(f"--set {shlex.quote(a)}" for a in args)


def _deep_update(base: dict, new: Mapping) -> None:
    """Snakemake's merge of config files (nested mappings merge, anything else replaces)."""
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = dict(value) if isinstance(value, Mapping) else value


def load_workflow(paths: Iterable[str | Path], overrides: Mapping | None = None) -> dict:
    """The workflow config as the product reads it: each file by the product's YAML 1.2
    loader (Snakemake's YAML 1.1 reads `lrs: [1e-3]` as strings), merged in order, then
    Snakemake's `--config` overrides. Raises ConfigError naming a bad file."""
    out: dict = {}
    for path in paths:
        _deep_update(out, load_yaml(path))
    _deep_update(out, overrides or {})
    return out


def schema_error(config: Mapping[str, Any], schema_path: str | Path) -> str:
    """One line for the schema violation that best explains why `config` fails the workflow
    schema: the dotted path of the field, then jsonschema's message (Snakemake's own
    message prints the whole schema). Returns "" when the config is valid."""
    import jsonschema  # Snakemake's dependency: only the workflow calls this

    schema = load_yaml(Path(schema_path))
    validator = jsonschema.validators.validator_for(schema)(schema)
    err = jsonschema.exceptions.best_match(validator.iter_errors(dict(config)))
    if err is None:
        return ""
    where = ".".join(str(p) for p in err.absolute_path) or "top level"
    return f"{where}: {err.message}"
