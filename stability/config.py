"""The run config: typed dataclasses, loaded from YAML, overridden with `a.b=value`,
validated before any compute with errors that name the field.

A run's identity is the hash of its resolved config (`run_id`), so a changed grid point
is a new run and an unchanged one is never retrained.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from . import yamlio


class ConfigError(ValueError):
    """A config value is wrong. The message names the field and what was expected."""


QkNorm = Literal["none", "per_head", "full", "qkv"]
Parametrization = Literal["standard", "mup_simple", "mup_intermediate", "mup_full"]
DataSource = Literal["synthetic", "text", "huggingface"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "fp32", "bf16"]
Tokenizer = Literal["bytes", "bpe"]
WeightDecayOn = Literal["matrices", "hidden_matrices", "all"]


@dataclass
class ModelConfig:
    d_model: int = 64
    n_layers: int = 2
    head_dim: int = 32
    mlp_ratio: int = 4
    vocab_size: int = 0  # 0: taken from the dataset
    # The paper's interventions (what each does, its checks: stability/interventions/paper.py)
    qk_layernorm: QkNorm = "per_head"
    qk_kappa: float = 0.0  # finding 9's logit-threshold transplant; 0 disables it
    parametrization: Parametrization = "standard"
    mup_base_width: int = 256
    layernorm_eps: float = 1e-6
    rope_base: float = 10000.0


@dataclass
class OptimConfig:
    lr: float = 1e-2  # the peak LR
    min_lr: float = 1e-5  # absolute floor of the cosine decay
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    independent_weight_decay: bool = True  # decay = s_t * lambda, not lr_t * lambda
    decay_on: WeightDecayOn = "matrices"
    eps: float = 1e-8
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 disables clipping


@dataclass
class LossConfig:
    z_loss: float = 1e-4


@dataclass
class TrainConfig:
    steps: int = 300
    batch_size: int = 32
    seq_len: int = 128
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 4
    probe_every: int = 0  # steps between exact attention-logit probes; 0 = every log step
    probe_step: int = 2000  # the step at which summary.json reports max_attn_logit (paper: 2000)
    checkpoint_every: int = 100
    device: Device = "auto"
    precision: Precision = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: bool = False
    threads: int = 0  # torch intra-op threads; 0 = leave torch's default
    divergence_margin: float = 1.0  # nats above init_loss that count as diverged
    divergence_window: int = 3  # consecutive logged steps above the margin
    stop_on_divergence: bool = True
    grad_stats_window: int = 0  # steps averaged for grad_rms_final; 0 = last 20% of logs


@dataclass
class DataConfig:
    source: DataSource = "synthetic"
    # synthetic
    vocab_size: int = 256
    n_train_tokens: int = 2_000_000
    n_val_tokens: int = 65_536
    copy_prob: float = 0.06  # chance per position that a copy marker starts a repeat
    markov_alpha: float = 0.05  # Dirichlet concentration of each Markov row (lower = peakier)
    data_seed: int = 1234
    # text / huggingface
    path: str = ""
    tokenizer: Tokenizer = "bytes"
    bpe_vocab_size: int = 4096
    text_field: str = "text"
    val_fraction: float = 0.05
    hf_dataset: str = "allenai/c4"
    hf_config: str = "en"
    hf_split: str = "train"
    hf_tokenizer: str = "t5-base"
    hf_max_tokens: int = 50_000_000
    cache_dir: str = "results/data"


@dataclass
class RunConfig:
    seed: int = 0
    code_version: int = 1  # bump to force retraining every run (it is part of run_id)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)

    # ---- identity -------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        # Sections hold only scalars, so a shallow copy per section equals dataclasses.asdict
        # at a fraction of its cost (it runs for every grid point when Snakemake plans).
        return {k: dict(vars(v)) if dataclasses.is_dataclass(v) else v for k, v in vars(self).items()}

    def run_id(self) -> str:
        """Hash of everything that changes what a run computes, the data's content included."""
        d = self.to_dict()
        for key in NON_SEMANTIC_KEYS + self.observer_keys():
            section, name = key.split(".")
            d[section].pop(name, None)
        content = self.data_content()
        if content:  # absent for synthetic data, so its run ids do not move
            d["data"]["content"] = content
        if "early_warning" in d["train"]:  # `stop` reads the predictor: its content, not its path, is the run's
            from .warning.live import model_fingerprint
            d["train"]["early_warning_model"] = model_fingerprint(d["train"].get("early_warning_model") or None)
        blob = json.dumps(d, sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]

    def observer_keys(self) -> tuple[str, ...]:
        """Keys set on this run that only observe it (`train.early_warning: report` and its
        threshold: every column `off` writes stays bit-identical): out of its run id, and out of
        the workflow's rerun trigger (rules/common.smk), like NON_SEMANTIC_KEYS."""
        if getattr(self.train, "early_warning", "off") == "report":
            return ("train.early_warning", "train.early_warning_threshold", "train.early_warning_model")
        return ()

    def data_id(self) -> str:
        """Hash of what the token cache depends on: runs that share it tokenize once."""
        d = dict(vars(self.data))
        d.pop("cache_dir")
        if self.data.source == "synthetic":
            d["seq_len"] = self.train.seq_len  # synthetic sequences are aligned to it
            for k in TEXT_ONLY_KEYS:
                d.pop(k)
        else:
            for k in SYNTHETIC_ONLY_KEYS:
                d.pop(k)
            content = self.data_content()
            if content:  # absent for a hub dataset and tokenizer (named, not read), as before
                d["content"] = content
        blob = json.dumps(d, sort_keys=True)
        return f"{self.data.source}-{hashlib.sha256(blob.encode()).hexdigest()[:10]}"

    def data_content(self) -> dict[str, str]:
        """Content fingerprints of the local files the tokens come from ({} for synthetic
        data; a hub dataset or tokenizer is identified by its name only). Reads the files
        the first time (see stability.corpus)."""
        from . import corpus
        d = self.data
        if d.source == "text":
            return {"path": corpus.fingerprint(d.path, corpus.TEXT_SUFFIXES, d.cache_dir)}
        if d.source != "huggingface":
            return {}
        out = {}
        if corpus.is_local(d.hf_dataset):
            out["hf_dataset"] = corpus.fingerprint(d.hf_dataset, corpus.HF_SUFFIXES, d.cache_dir)
        tokenizer = corpus.local_tokenizer(d.hf_tokenizer)
        if tokenizer is not None:
            out["hf_tokenizer"] = corpus.fingerprint(tokenizer, (), d.cache_dir)
        return out


# Keys that change how a run is observed or executed, not what it computes.
NON_SEMANTIC_KEYS = ("train.threads", "train.checkpoint_every", "data.cache_dir")
SYNTHETIC_ONLY_KEYS = ("vocab_size", "n_train_tokens", "n_val_tokens", "copy_prob", "markov_alpha", "data_seed")
TEXT_ONLY_KEYS = ("path", "tokenizer", "bpe_vocab_size", "text_field", "val_fraction", "hf_dataset",
                  "hf_config", "hf_split", "hf_tokenizer", "hf_max_tokens")


# ---- building from dicts -------------------------------------------------------------

def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return getattr(tp, "__name__", str(tp))


# The largest integer every float represents exactly: an int field given 1e30 would get
# 1000000000000000019884624838656, not the number written.
_EXACT_INT = 2**53
# Control characters no command line or path can carry (NUL) and lone surrogates (not UTF-8).
_UNCARRIABLE = re.compile("[\x00\ud800-\udfff]")


def _from_text(value: Any) -> Any:
    """A string given to a non-string field (`--set` text, a quoted YAML value) is read as a
    plain YAML 1.2 scalar, the same rule as an unquoted value in a file: `1e-3`, `4e4`, `true`."""
    if not isinstance(value, str):
        return value
    parsed = yamlio.scalar(value.strip())
    if isinstance(parsed, str):
        try:  # Python's spellings too (`nan`, `inf`, `1_000`), so the error can say "finite"
            return float(parsed)
        except ValueError:
            return value
    return parsed


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check (and gently coerce) one leaf value; raise ConfigError naming `where`.

    Strings reach a str field exactly as written; for other fields they are read by the
    YAML 1.2 rules (`_from_text`), so `--set` text and a YAML file agree."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{where}: expected one of {', '.join(map(repr, allowed))}, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            hint = " (quote it in YAML to keep it as text)" if isinstance(value, (bool, int, float)) or value is None else ""
            raise ConfigError(f"{where}: expected a string, got {value!r}{hint}")
        if _UNCARRIABLE.search(value):
            raise ConfigError(f"{where}: expected text without NUL or lone surrogate characters, got {value!r}")
        return value
    shown, value = value, _from_text(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {shown!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected an integer, got {shown!r}")
        if isinstance(value, float):
            if not value.is_integer():
                raise ConfigError(f"{where}: expected an integer, got {shown!r} (not a whole number)")
            if abs(value) > _EXACT_INT:
                raise ConfigError(f"{where}: expected an integer, got {shown!r} (write it in digits: "
                                  f"a float above 2**53 is not the exact number written)")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {shown!r}")
        try:
            value = float(value)
        except OverflowError:  # an integer beyond float range
            raise ConfigError(f"{where}: expected a finite number, got an integer of {len(str(abs(value)))} digits") from None
        if not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {shown!r}")
        return value + 0.0  # -0.0 is 0.0: one number, one run id (and set_args omits a default)
    raise ConfigError(f"{where}: unsupported type {_type_name(tp)}")  # pragma: no cover


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _build(cls: type, data: Any, prefix: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = _type_hints(cls)
    extra = _EXTRA_KEYS.get(cls, {})
    names = {f.name for f in dataclasses.fields(cls)} | set(extra)
    unknown = sorted((k for k in data if k not in names), key=str)  # YAML keys need not be strings
    if unknown:
        where = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ConfigError(f"{where}: unknown key (expected one of: {', '.join(sorted(names))})")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        where = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, data[f.name], where)
        else:
            kwargs[f.name] = _coerce(data[f.name], tp, where)
    obj = cls(**kwargs)
    for name, (tp, default) in extra.items():
        if name in data:
            value = _coerce(data[name], tp, f"{prefix}.{name}")
            if value != default:  # at its default a new key stays out of the config (and the run id)
                setattr(obj, name, value)
    return obj


# Keys that interventions add to a section (stability.interventions): class -> {name: (type, default)}.
# The default lives on the class, so `cfg.model.<key>` always reads; an instance holds the
# key only when it is set off its default.
_EXTRA_KEYS: dict[type, dict[str, tuple[Any, Any]]] = {}


def add_key(section_cls: type, name: str, tp: Any, default: Any) -> None:
    """Add a key (not a dataclass field) to a config section; stability.interventions.register calls it."""
    _EXTRA_KEYS.setdefault(section_cls, {})[name] = (tp, default)
    setattr(section_cls, name, default)
    KEY_TYPES[f"{_SECTION_NAMES[section_cls]}.{name}"] = tp


def default_of(key: str) -> Any:
    """The built-in default of a dotted key (a field's, or a key an intervention added); KeyError if unknown."""
    flat = _flat_defaults()
    if key in flat:
        return flat[key]
    section, _, name = key.partition(".")
    return _EXTRA_KEYS[SECTIONS[section]][name][1]


# safe_load raises these (not YAMLError) for bad scalars (`2001-13-45`, `!!int x`) and deep nesting.
_YAML_SCALAR_ERRORS = (ValueError, TypeError, AttributeError, RecursionError)


def parse_value(text: str) -> Any:
    """The right-hand side of `--set section=value` for a key that is not a field (a whole
    section, `--set model={d_model: 8}`, or an unknown key): parsed as YAML 1.2."""
    try:
        value = yamlio.load(text)
    except (yaml.YAMLError, *_YAML_SCALAR_ERRORS):
        return text
    return text if value is None and text.strip() not in ("null", "~", "") else value


def set_dotted(d: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    if not all(parts):
        raise ConfigError(f"{key}: expected a dotted key like optim.lr")
    cur = d
    for p in parts[:-1]:
        nxt = cur.setdefault(p, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{key}: {p} is not a section")
        cur = nxt
    cur[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set key=value` items -> {dotted key: value}. A field's value stays the text as
    written, read by the field's declared type in `_coerce` (a str field keeps `2024`,
    `yes` and `a #1` verbatim; a number field reads `1e-3`); other keys parse as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, for example optim.lr=0.01")
        key, _, raw = item.partition("=")
        key = key.strip()
        out[key] = raw if key in KEY_TYPES else parse_value(raw.strip())
    return out


def merge(base: dict, overrides: dict[str, Any]) -> dict:
    """Apply dotted overrides to a nested dict (returns a new dict)."""
    try:  # no default=: a value JSON cannot hold (bytes from !!binary) is refused, not str()-ed
        out = json.loads(json.dumps(base))
    except (TypeError, ValueError, RecursionError) as e:  # e.g. a self-referencing YAML anchor
        raise ConfigError(f"config: expected plain nested mappings and values ({e})") from None
    for key, value in overrides.items():
        set_dotted(out, key, value)
    return out


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yamlio.load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: expected a UTF-8 YAML file (undecodable byte at offset {e.start})") from None
    except OSError as e:  # no permission, an I/O error
        raise ConfigError(f"{path}: cannot read the config file ({e.strerror})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(e, 'problem', e)}") from None
    except _YAML_SCALAR_ERRORS as e:
        raise ConfigError(f"{path}: malformed YAML: {type(e).__name__}: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config sections at the top level")
    return data


def from_dict(data: dict) -> RunConfig:
    """Build and validate a RunConfig; `plugins` (modules of user interventions) are imported first."""
    plugins = data.get("plugins") if isinstance(data, dict) else None
    if plugins is not None:
        if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
            raise ConfigError(f"plugins: expected a list of module names or .py paths, got {plugins!r}")
        for plugin in plugins:
            interventions.load_plugin(plugin)
        data = {k: v for k, v in data.items() if k != "plugins"}
    cfg = _build(RunConfig, data, "")
    if plugins:  # only when named, so a run without plugins keeps its id
        cfg.plugins = list(plugins)
    validate(cfg)
    return cfg


def load(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    """Built-in defaults <- YAML file <- overrides, then validated."""
    data = load_yaml(path) if path else {}
    if overrides:
        data = merge(data, overrides if isinstance(overrides, dict) else parse_overrides(overrides))
    return from_dict(data)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one level of dotted string keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)  # str: a YAML key such as `1:` is an int
        if isinstance(v, dict):
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


@functools.cache
def _flat_defaults() -> dict[str, Any]:
    return flatten(RunConfig().to_dict())


def diff_from_defaults(cfg: RunConfig) -> dict[str, Any]:
    """The dotted keys where cfg differs from the built-in defaults (a minimal --set list)."""
    base = _flat_defaults()
    return {k: v for k, v in flatten(cfg.to_dict()).items() if base.get(k) != v}


# ---- validation ------------------------------------------------------------------------

# float32's smallest normal number: an epsilon below it rounds to 0 (or to a denormal that
# some devices flush to 0) in the fp32 arithmetic it guards, and the division is 0/0 again.
FLOAT32_TINY = 2.0**-126


def _check(cond: bool, field_name: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"{field_name}: expected {expected}, got {value!r}")


def validate(cfg: RunConfig) -> None:
    """Cross-field and range checks. Everything here runs before any compute."""
    m, o, t, d = cfg.model, cfg.optim, cfg.train, cfg.data
    # numpy seeds take integers >= 0, torch and the Int64 manifests at most 2**63 - 1
    _check(0 <= cfg.seed < 2**63, "seed", "an integer in [0, 2**63)", cfg.seed)
    _check(0 <= d.data_seed < 2**63, "data.data_seed", "an integer in [0, 2**63)", d.data_seed)
    for name in ("d_model", "head_dim", "mlp_ratio"):
        _check(getattr(m, name) > 0, f"model.{name}", "a positive integer", getattr(m, name))
    # 0 layers is finding 9's zero-layer (bigram) baseline: embedding -> final norm -> head.
    _check(m.n_layers >= 0, "model.n_layers", "an integer >= 0 (0: the zero-layer bigram baseline)", m.n_layers)
    _check(m.vocab_size >= 0, "model.vocab_size", "0 (from the dataset) or a positive integer", m.vocab_size)
    _check(m.d_model % m.head_dim == 0, "model.head_dim", f"a divisor of model.d_model={m.d_model}", m.head_dim)
    _check(m.head_dim % 2 == 0, "model.head_dim", "an even number (RoPE rotates pairs)", m.head_dim)
    # Undefined arithmetic, refused (a NaN it makes would read as an instability, issue 12):
    # LayerNorm divides by sqrt(var + eps), and var is 0 for a constant row.
    _check(m.layernorm_eps >= FLOAT32_TINY, "model.layernorm_eps",
           "a positive number >= 1.2e-38 (smaller rounds to 0 in float32: 0/0 on a constant row)", m.layernorm_eps)
    _check(m.rope_base > 0, "model.rope_base", "a positive number", m.rope_base)
    for name in ("steps", "batch_size", "seq_len", "log_every", "eval_every", "eval_batches", "checkpoint_every",
                 "divergence_window"):
        _check(getattr(t, name) > 0, f"train.{name}", "a positive integer", getattr(t, name))
    for name in ("probe_every", "probe_step", "threads", "grad_stats_window"):
        _check(getattr(t, name) >= 0, f"train.{name}", "an integer >= 0", getattr(t, name))
    _check(o.lr > 0, "optim.lr", "a positive number", o.lr)
    _check(o.min_lr >= 0, "optim.min_lr", "a number >= 0", o.min_lr)
    _check(o.min_lr <= o.lr, "optim.min_lr", f"at most optim.lr={o.lr}", o.min_lr)
    _check(o.warmup_steps >= 0, "optim.warmup_steps", "an integer >= 0", o.warmup_steps)
    _check(o.warmup_steps <= t.steps, "optim.warmup_steps", f"at most train.steps={t.steps}", o.warmup_steps)
    # Adam divides m by sqrt(v) + eps; m = v = 0 for a parameter with no gradient yet (the
    # embedding row of a token not seen), so eps = 0 is 0/0 on step 1, not a divergence.
    _check(o.eps >= FLOAT32_TINY, "optim.eps",
           "a positive number >= 1.2e-38 (Adam divides by sqrt(v) + eps, 0/0 while v = 0; smaller rounds to 0 in float32)", o.eps)
    _check(0 <= o.beta1 < 1, "optim.beta1", "a number in [0, 1)", o.beta1)
    _check(0 <= o.beta2 < 1, "optim.beta2", "a number in [0, 1)", o.beta2)
    _check(o.grad_clip >= 0, "optim.grad_clip", "0 (off) or a positive number", o.grad_clip)
    _check(t.divergence_margin > 0, "train.divergence_margin", "a positive number", t.divergence_margin)
    _check(0 <= t.early_warning_threshold <= 1, "train.early_warning_threshold", "a probability in [0, 1]",
           t.early_warning_threshold)
    _check(t.early_warning != "off" or t.early_warning_threshold == default_of("train.early_warning_threshold"),
           "train.early_warning_threshold", "its default 0.5 while train.early_warning is off (it is read only by "
           "report and stop, and would change the run id for nothing)", t.early_warning_threshold)
    _check(t.early_warning != "off" or not t.early_warning_model, "train.early_warning_model",
           "empty while train.early_warning is off (it is read only by report and stop)", t.early_warning_model)
    if t.early_warning != "off" and t.early_warning_model:
        from .warning.model import load as load_warning_model
        load_warning_model(t.early_warning_model)  # a ConfigError naming the file, before any compute
    if d.source == "synthetic":
        _check(d.vocab_size >= 16, "data.vocab_size", "at least 16 for synthetic data", d.vocab_size)
        _check(0 <= d.copy_prob < 1, "data.copy_prob", "a probability in [0, 1)", d.copy_prob)
        _check(d.markov_alpha > 0, "data.markov_alpha", "a positive number", d.markov_alpha)
        need = (t.seq_len + 1) * 2
        _check(d.n_train_tokens >= need, "data.n_train_tokens", f"at least {need} (two sequences)", d.n_train_tokens)
        _check(d.n_val_tokens >= need, "data.n_val_tokens", f"at least {need} (two sequences)", d.n_val_tokens)
    if d.source == "text":
        _check(bool(d.path), "data.path", "a file or directory of .txt, .jsonl or .parquet", d.path)
    if d.source in ("text", "huggingface"):
        _check(0 < d.val_fraction < 1, "data.val_fraction", "a fraction in (0, 1)", d.val_fraction)
        _check(260 <= d.bpe_vocab_size <= 2**32, "data.bpe_vocab_size", "at least 260 and at most 2**32 (uint32 tokens)",
               d.bpe_vocab_size)
        _check(d.hf_max_tokens > 0, "data.hf_max_tokens", "a positive integer", d.hf_max_tokens)
    if d.source == "huggingface":  # "" would name the current directory as a local dataset
        _check(bool(d.hf_dataset), "data.hf_dataset", "a hub dataset name or a local file or folder", d.hf_dataset)
        _check(bool(d.hf_tokenizer), "data.hf_tokenizer", "a hub tokenizer name or a local tokenizer.json", d.hf_tokenizer)
    interventions.validate(cfg)  # the keys interventions own, by their declared checks
    capped = [k for iv, _ in interventions.on(cfg, "attention_logits") for k in iv.keys]
    _check(t.max_logit_source != "kernel" or not capped, "train.max_logit_source",
           f"'auto' or 'probe' while {', '.join(capped)} changes the attention logits (the kernel's max scores "
           "are of the logits before it)", t.max_logit_source)


def dump_yaml(cfg: RunConfig) -> str:
    return yamlio.dump(cfg.to_dict(), sort_keys=False)


KEY_TYPES: dict[str, Any] = {}


def _collect_types(cls: type, prefix: str = "") -> None:
    for f in dataclasses.fields(cls):
        tp = typing.get_type_hints(cls)[f.name]
        key = f"{prefix}.{f.name}" if prefix else f.name
        if dataclasses.is_dataclass(tp):
            _collect_types(tp, key)
        else:
            KEY_TYPES[key] = tp


_collect_types(RunConfig)

SECTIONS: dict[str, type] = {"model": ModelConfig, "optim": OptimConfig, "loss": LossConfig, "train": TrainConfig,
                             "data": DataConfig}
_SECTION_NAMES = {cls: name for name, cls in SECTIONS.items()}
RunConfig.plugins = ()  # modules of user interventions (from_dict); an instance holds them only when named

# Early warning (issue 16, stability.warning.live). Keys outside the dataclass, like an
# intervention's new keys: at their defaults they stay out of a run's config and run id, so
# every run of a config that does not name them keeps its id. Both are semantic (in the run
# id once set): `stop` changes what a run computes (it may end at K), and `report` changes
# what the run writes (columns and summary keys a finished `off` run lacks, so it cannot
# stand in for one); the threshold changes what `stop` does and the mode `report` writes.
EarlyWarning = Literal["off", "report", "stop"]
add_key(TrainConfig, "early_warning", EarlyWarning, "off")
add_key(TrainConfig, "early_warning_threshold", float, 0.5)
add_key(TrainConfig, "early_warning_model", str, "")  # "" = the shipped model (stability/warning/model.json)
# Where the logged max attention logits come from (stability.kernel_max): `auto` (the
# attention kernel's max scores where it can give them, on CUDA, else the fp32 probe),
# `probe` or `kernel`. At `auto` it stays out of the config and run id; set, it is part of
# the run id: it changes what the run writes (a max logit at every logged step, not only on
# probe steps).
MaxLogitSource = Literal["auto", "probe", "kernel"]
add_key(TrainConfig, "max_logit_source", MaxLogitSource, "auto")

from . import interventions  # noqa: E402  (registers the built-in interventions and their keys)
