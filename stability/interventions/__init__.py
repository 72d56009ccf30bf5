"""Interventions: named switches that change how a model trains, each declared once.

An intervention is a subclass of `Intervention`, registered with `@register`. It declares

    keys       the run-config keys it owns (dotted, e.g. "model.qk_kappa"), with validation;
               all in one config section (model, optim or loss)
    mitigates  the failure modes it is meant to prevent (FAILURE_MODES); the analysis reads it
    test       its defining test, a pytest node id
    off        the config values that turn it off (the analysis builds removal arms from it)

and overrides the seams (SEAMS) it changes. model.py, optim.py and train.py call the seams
of the interventions on in a run's config, in registration order; nothing else in the
package names an intervention. `changes` is read from the overridden seams, so what an
intervention says it changes and what it does cannot drift apart.

A key is either a field of the typed config (the paper's knobs: `Key` without a type takes
type and default from the dataclass) or new, declared here with its type and default. A new
key enters a run's resolved config only when set off its default, so registering an
intervention leaves every existing run id, and so every finished run, as it was.

A built-in intervention is one module of this package (each is imported, so registered, when
the package is). A user's own intervention lives in their module: it imports this package, subclasses
`Intervention` and registers; a run config names the module in `plugins:` (a dotted module
name or a path to a .py file), and it is imported before the config is read
(docs/extending.md).

This module and the intervention modules import torch only inside seams: planning a
workflow (Snakemake) reads the declarations without loading torch.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, ClassVar

# The failure modes of Wortsman et al. 2023 (Sec. 3.1 attention-logit growth, Sec. 3.2
# output-logit divergence) and Sec. 3.4's epsilon collapse (update RMS falls as the gradient
# RMS nears eps).
FAILURE_MODES = ("attention_logit_growth", "output_logit_divergence", "epsilon_collapse")

# Where an intervention can act: seam name -> what it changes (shapes in each method's docstring).
SEAMS = {
    "attention_modules": "adds modules (parameters) to each attention layer",
    "qkv": "q, k and v of each attention layer, after the projection and before RoPE",
    "attention_scale": "the scale of the attention logits",
    "attention_qk": "q and k after RoPE, what the attention logits are computed from (to read or change)",
    "attention_logits": "the attention logits before the causal mask; overriding it runs that layer's softmax explicitly",
    "block": "the layout of a block (norms and residual adds around attention and MLP); one intervention at most",
    "output_logits": "the output logits, before the cross-entropy, the z-loss and every output signal",
    "block_params": "the parameter count of a block (model sizes, job requests)",
    "init": "the initialisation of the parameters",
    "lr_multipliers": "per-parameter learning-rate multipliers",
    "weight_decay": "the weight decay of each parameter group",
    "optimizer": "the optimizer (torch AdamW unless overridden); one intervention at most",
    "after_step": "the parameters after each optimizer step (in place)",
    "objective": "the training loss (terms added to the cross-entropy)",
}
# Seams only one intervention on in a run may override (each replaces the whole computation).
EXCLUSIVE_SEAMS = ("block", "optimizer")

_MISSING = object()

# float32's smallest normal number (stability.config.FLOAT32_TINY): a positive threshold below it
# is 0 in the fp32 arithmetic it enters (c * tanh(z / c) would be 0/0).
FLOAT32_TINY = 2.0**-126


def off_or_positive(v: float) -> bool:
    """A Key check: 0 (off) or a positive number that float32 can hold."""
    return v == 0 or v >= FLOAT32_TINY


OFF_OR_POSITIVE = "0 (off) or a positive number >= 1.2e-38"


@dataclass(frozen=True)
class Key:
    """One config key an intervention owns.

    `check(value) -> bool` validates it (before any compute); `expected` completes the error
    "<key>: expected <expected>, got <value>". A key without `type` is a field of the typed
    config (stability.config), which gives its type and default; a new key gives both."""
    expected: str = ""
    check: Callable[[Any], bool] | None = None
    type: Any = None
    default: Any = _MISSING
    doc: str = ""


class Intervention:
    """Base class: every seam is the identity (`block` and `optimizer`, which replace a whole
    computation, are called only where overridden). Subclasses set the class attributes below
    and override the seams they change; the methods get `c`, the config section holding the
    keys (a stability.config.ModelConfig, OptimConfig or LossConfig)."""
    name: ClassVar[str] = ""
    keys: ClassVar[dict[str, Key]] = {}
    mitigates: ClassVar[tuple[str, ...]] = ()
    test: ClassVar[str] = ""
    off: ClassVar[dict[str, Any]] = {}

    # ---- what the analysis and the registry read ----------------------------------------
    @property
    def section(self) -> str:
        return next(iter(self.keys)).split(".")[0]

    @property
    def changes(self) -> tuple[str, ...]:
        """The seams this intervention overrides."""
        return tuple(s for s in SEAMS if overrides(self, s))

    def is_on(self, c: Any) -> bool:
        """Whether this run uses it; `c` is the section config. Default: any key off its default."""
        return any(getattr(c, k.split(".", 1)[1]) != default(k) for k in self.keys)

    def on_in(self, cfg: Mapping[str, Any] | Any) -> bool:
        """is_on for a whole run config: a RunConfig or a flat {dotted key: value} mapping
        (a row of the analysis's runs table); a key it lacks has its default."""
        if isinstance(cfg, Mapping):
            values = {k.split(".", 1)[1]: (default(k) if cfg.get(k) is None else cfg[k]) for k in self.keys}
            return self.is_on(_Section(values))
        return self.is_on(getattr(cfg, self.section))

    # ---- seams (the identity) ------------------------------------------------------------
    def attention_modules(self, c, attn) -> None:
        """Add submodules to `attn` (a model.Attention, its projections built)."""

    def qkv(self, c, attn, q, k, v):
        """(q, k, v), each (B, n_heads, T, head_dim), after the projection, before RoPE."""
        return q, k, v

    def attention_scale(self, c, head_dim: int) -> float | None:
        """The attention logit scale, or None to keep 1/sqrt(head_dim)."""
        return None

    def attention_qk(self, c, attn, q, k):
        """(q, k), each (B, n_heads, T, head_dim), after RoPE: the logits are scale * q k^T."""
        return q, k

    def attention_logits(self, c, attn, z):
        """The attention logits z (B, n_heads, T, T), scale already applied, before the causal
        mask (entries above the diagonal are masked after this seam). Overriding it makes the
        layer compute its softmax explicitly (model.explicit_attention) instead of the fused kernel."""
        return z

    def block(self, c, blk, x, cos, sin, probe: bool | str):
        """Overriding it replaces the forward of each block `blk` (a model.Block) on input x
        (B, T, d_model): return (output, blk.attn's AttnProbe or None), in place of pre-LayerNorm
        h = x + attn(ln1(x)), h + mlp(ln2(h)). Pass `probe` (False, True or model.MAX_ONLY) on
        to blk.attn unchanged."""
        raise NotImplementedError

    def output_logits(self, c, logits):
        """The output logits (B, T, vocab) the loss and the output signals see."""
        return logits

    def block_params(self, c) -> int:
        """Parameters this intervention adds to each block."""
        return 0

    def init(self, c, model) -> None:
        """Re-initialise parameters of `model` (after the paper's init), in place."""

    def lr_multipliers(self, c, model) -> dict[str, float]:
        """{parameter name: LR multiplier} for the parameters it rescales."""
        return {}

    def weight_decay(self, c, peak_lr: float, decays: bool) -> float | None:
        """The torch weight_decay of a parameter group with peak LR `peak_lr`, or None to leave it."""
        return None

    def optimizer(self, c, param_groups: list[dict]):
        """Overriding it replaces AdamW: return a torch.optim.Optimizer over `param_groups` (each
        with lr, peak_lr, lr_mult and weight_decay, stability.optim.build_optimizer). For the
        'update RMS' signal it gives `unscaled_update(p, group)`: the step's update divided by
        the LR, weight decay excluded (stability.optim.adam_update)."""
        raise NotImplementedError

    def after_step(self, c, model) -> None:
        """Change `model`'s parameters in place after each optimizer step (under no_grad)."""

    def objective(self, c, loss, stats: dict):
        """The training loss given the loss so far (0-d tensor) and monitor.output_stats."""
        return loss


class _Section:
    """A config section built from a flat mapping (for `Intervention.on_in`)."""

    def __init__(self, values: dict[str, Any]):
        self.__dict__.update(values)


REGISTRY: dict[str, Intervention] = {}
# Every key an intervention owns -> its intervention's name.
OWNER: dict[str, str] = {}


def register(cls: type[Intervention]) -> type[Intervention]:
    """Class decorator: add an intervention to the registry. Raises ValueError for a name or
    key already taken, keys in more than one section, an unknown failure mode or no test."""
    from .. import config as C
    iv = cls()
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"intervention {cls.__name__}: name {cls.name!r} is empty or already registered")
    if not cls.keys or len({k.split(".")[0] for k in cls.keys}) != 1:
        raise ValueError(f"intervention {cls.name}: keys must be one or more keys of one config section")
    if not cls.test:
        raise ValueError(f"intervention {cls.name}: name its defining test (a pytest node id) in `test`")
    bad = set(cls.mitigates) - set(FAILURE_MODES)
    if bad:
        raise ValueError(f"intervention {cls.name}: unknown failure modes {sorted(bad)} (expected {FAILURE_MODES})")
    section_cls = C.SECTIONS.get(iv.section)
    if section_cls is None:
        raise ValueError(f"intervention {cls.name}: keys must be in one of {sorted(C.SECTIONS)}")
    fields = {f.name for f in dataclasses.fields(section_cls)}
    for key, spec in cls.keys.items():  # every check before any change: a refused class leaves no trace
        if key in OWNER:
            raise ValueError(f"intervention {cls.name}: {key} is already owned by {OWNER[key]}")
        name = key.split(".", 1)[1]
        if spec.type is None and name not in fields:
            raise ValueError(f"intervention {cls.name}: {key} is not a config field; give it a type and default")
        if spec.type is not None and (name in fields or spec.default is _MISSING):
            raise ValueError(f"intervention {cls.name}: new key {key} needs a type and default and must not be a field")
    for key, spec in cls.keys.items():
        if spec.type is not None:
            C.add_key(section_cls, key.split(".", 1)[1], spec.type, spec.default)
        OWNER[key] = cls.name
    REGISTRY[cls.name] = iv
    return cls


def default(key: str) -> Any:
    """The default of a dotted config key (a field's, or an intervention's new key's)."""
    from .. import config as C
    return C.default_of(key)


def active(c: Any, section: str) -> list[tuple[Intervention, Any]]:
    """[(intervention, c)] for the registered interventions of `section` on in `c`, the
    section config, in registration order (the order their seams run)."""
    return [(iv, c) for iv in REGISTRY.values() if iv.section == section and iv.is_on(c)]


def overrides(iv: Intervention, seam: str) -> bool:
    """Whether `iv` overrides `seam` (one of SEAMS)."""
    return getattr(type(iv), seam) is not getattr(Intervention, seam)


def on(cfg: Any, seam: str | None = None) -> list[tuple[Intervention, Any]]:
    """[(intervention, its section config)] for every registered intervention on in `cfg`, a
    RunConfig (only those overriding `seam` if given), in registration order."""
    return [(iv, getattr(cfg, iv.section)) for iv in REGISTRY.values()
            if (seam is None or overrides(iv, seam)) and iv.on_in(cfg)]


def overriding(pairs: list[tuple[Intervention, Any]], seam: str) -> list[tuple[Intervention, Any]]:
    """The pairs of `pairs` (from `active` or `on`) whose intervention overrides `seam`."""
    return [(iv, c) for iv, c in pairs if overrides(iv, seam)]


def validate(cfg: Any) -> None:
    """Check every registered key of `cfg` (a RunConfig) by its `Key.check`, and that no two
    interventions on override one of EXCLUSIVE_SEAMS; raises stability.config.ConfigError
    naming the key."""
    from ..config import ConfigError
    for key, owner in OWNER.items():
        spec = REGISTRY[owner].keys[key]
        section, name = key.split(".", 1)
        value = getattr(getattr(cfg, section), name)
        if spec.check is not None and not spec.check(value):
            raise ConfigError(f"{key}: expected {spec.expected}, got {value!r}")
    for seam in EXCLUSIVE_SEAMS:
        rivals = on(cfg, seam)
        if len(rivals) > 1:
            keys = [k for iv, _ in rivals for k in iv.keys]
            raise ConfigError(f"{keys[-1]}: expected at most one intervention on that replaces the {seam} "
                              f"({', '.join(iv.name for iv, _ in rivals)} are on: {', '.join(keys)})")


def mitigating(mode: str) -> list[Intervention]:
    """The registered interventions that mitigate failure mode `mode`."""
    return [iv for iv in REGISTRY.values() if mode in iv.mitigates]


def load_plugin(spec: str) -> None:
    """Import a user's module of interventions: a dotted module name, or a path to a .py file
    (relative to the working directory). Importing registers them (a module imported before
    is not imported again). Raises stability.config.ConfigError naming `plugins`."""
    from ..config import ConfigError
    try:
        if spec.endswith(".py"):
            path = Path(spec).resolve()
            name = f"stability_plugin_{path.stem}_{abs(hash(str(path))):x}"
            if name in sys.modules:
                return
            if not path.is_file():
                raise FileNotFoundError(f"no file {spec}")
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            try:
                module_spec.loader.exec_module(module)
            except BaseException:
                del sys.modules[name]
                raise
        else:
            importlib.import_module(spec)
    except ConfigError:
        raise
    except Exception as e:  # its import failed: ImportError, a SyntaxError, a ValueError from register
        raise ConfigError(f"plugins: cannot import {spec!r} ({type(e).__name__}: {e})") from None


def load_plugins_of(runs: Any) -> None:
    """Import the plugins named by a runs table's `plugins` column (a polars frame, as the
    aggregation writes it), so an analysis process sees the interventions its runs used."""
    if "plugins" not in getattr(runs, "columns", ()):
        return
    for specs in runs["plugins"].drop_nulls().to_list():
        for spec in specs or ():
            load_plugin(spec)


def _import_builtin() -> None:
    """Import every module of this package: each registers its interventions. The paper's come
    first, the rest in name order, so seams shared by two run in a fixed order."""
    import pkgutil
    names = sorted(m.name for m in pkgutil.iter_modules(__path__))
    for name in ["paper"] + [n for n in names if n != "paper"]:
        importlib.import_module(f"{__name__}.{name}")


_import_builtin()
