"""Exact max attention logits from the attention kernel, where it can give them.

PyTorch's `flex_attention` can return, beside its output, each query row's max score
(`return_aux=AuxRequest(max_scores=True)`): max over the unmasked keys j of
scale * <q_i, k_j> after any score_mod, shape (B, H, T), fp32. The kernel tracks that max
anyway for its online softmax, so a logged step gets the exact max logit of every layer
without the fp32 probe's (B, H, T, T) matmul. It is used on CUDA only: torch raises
NotImplementedError for max scores on CPU and MPS, and a torch without `AuxRequest` has
no such output at all. Everywhere else, and in layers whose logits an intervention changes
(the kernel would not see them), the fp32 probe (`model.probe_stats`) gives the max logit,
and it stays the oracle the kernel is tested against (tests/test_kernel_max.py,
tests/test_gpu.py).

The kernel multiplies fp32 inputs at torch's fp32 matmul precision: where TF32 is enabled
(`torch.backends.cuda.matmul.allow_tf32`) its logits round to ~1e-3, the device check in
`unsupported` fails, and `auto` uses the probe.

`train.max_logit_source` (docs/config.md) chooses: `probe`, `kernel` (a ConfigError before
any compute where unsupported), or `auto` (the kernel where `unsupported` returns None).
"""
from __future__ import annotations

import functools
import math

import torch

SOURCES = ("auto", "probe", "kernel")
# Kernel max scores vs the fp32 probe from the same q and k. Both multiply the same bf16 or
# fp32 inputs and accumulate in fp32 (the kernel in another order, then a round trip through
# log2 units): a few fp32 roundoffs of a head_dim-term dot product, ~1e-6 relative. TF32 or
# bf16 rounding of the logits would show as ~1e-3 and fail it.
KERNEL_VS_PROBE_REL_TOL = 1e-4


def aux_request():
    """torch's `AuxRequest` class, or None where this torch's flex_attention has none."""
    try:
        from torch.nn.attention.flex_attention import AuxRequest
    except ImportError:
        return None
    return AuxRequest


@functools.cache
def _compiled_flex():
    """flex_attention compiled once per process (eager flex_attention materialises the
    scores); one specialisation per input shape and dtype (`dynamic=False`)."""
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


def _causal(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


@functools.cache
def _causal_block_mask(T: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask
    return create_block_mask(_causal, None, None, T, T, device=device)


def row_max_scores(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal flex_attention of q, k, v (B, H, T, head_dim, one dtype, on CUDA) -> its max
    scores (B, H, T) fp32: row i's max over j <= i of scale * <q_i, k_j>. The output is
    discarded. Raises what flex_attention raises (NotImplementedError on CPU/MPS)."""
    T = q.shape[-2]
    _, aux = _compiled_flex()(q, k, v, block_mask=_causal_block_mask(T, str(q.device)), scale=scale,
                              return_aux=aux_request()(max_scores=True))
    return aux.max_scores


@torch.compiler.disable  # its own compiled kernel; one graph break in a compiled model's logging forward
@torch.no_grad()
def head_max_logits(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Per-head max attention logit (H,) fp32 of one layer: max over batch and causal (i, j)
    of scale * <q_i, k_j>, from the q and k (B, H, T, head_dim) exactly as given (autocast
    off, as the fp32 probe reads them: fp32 q and k stay fp32). v (B, H, T, head_dim) only
    fills the kernel's output, which is discarded. Computed beside the layer's own attention
    (detached, no_grad), so the step trains exactly as without it."""
    dtype = torch.promote_types(q.dtype, k.dtype)
    with torch.autocast(device_type=q.device.type, enabled=False):
        rows = row_max_scores(q.detach().to(dtype), k.detach().to(dtype), v.detach().to(dtype), scale)
    return rows.amax(dim=(0, 2))


def reference_head_max(q: torch.Tensor, k: torch.Tensor, scale: float) -> torch.Tensor:
    """head_max_logits' value from the fp32 probe's logits (model.exact_logits): (H,) fp32."""
    from .model import exact_logits
    return exact_logits(q, k, scale).amax(dim=(0, 2, 3))


@functools.cache
def _device_check(device: str) -> str | None:
    """Run the kernel once on small random inputs on `device` and compare with the fp32
    reference; None if it works and agrees, else why not (one line)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 128, 16, generator=g).to(device) for _ in range(3))
    scale = 1 / math.sqrt(16)
    try:
        got = head_max_logits(q, k, v, scale)
    except Exception as e:  # noqa: BLE001 - any failure means: not on this device
        return f"flex_attention max scores failed on {device} ({type(e).__name__}: {str(e).splitlines()[0][:200]})"
    want = reference_head_max(q, k, scale)
    err = float(((got - want).abs() / want.abs().clamp_min(1e-12)).max())
    if not err <= KERNEL_VS_PROBE_REL_TOL:
        return f"flex_attention max scores on {device} differ from the fp32 reference by {err:.1e} relative"
    return None


def unsupported(device: torch.device) -> str | None:
    """None where the kernel gives exact max logits on `device`, else why not, as a clause
    ("this torch ... has no ..."). The first CUDA call per device compiles and runs the
    kernel once on a small input (seconds) and checks it against the fp32 reference."""
    if aux_request() is None:
        return f"this torch ({torch.__version__}) has no flex_attention AuxRequest"
    if device.type != "cuda":
        return f"flex_attention returns max scores on CUDA only (the run's device is {device.type})"
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _device_check(f"cuda:{index}")


def resolve(cfg, device: torch.device) -> str:
    """The max-logit source a run uses on `device`: "kernel" or "probe".

    `train.max_logit_source` auto: the kernel where `unsupported` is None, the model has
    attention layers and no intervention changes their logits, else the probe. `kernel` where unsupported:
    ConfigError naming the field (the config-side conflicts are refused by config.validate)."""
    from . import interventions
    from .config import ConfigError
    want = cfg.train.max_logit_source
    if want == "probe" or (want == "auto" and (interventions.on(cfg, "attention_logits") or cfg.model.n_layers == 0)):
        return "probe"
    reason = unsupported(device)
    if reason is None:
        return "kernel"
    if want == "kernel":
        raise ConfigError(f"train.max_logit_source: 'kernel' needs flex_attention max scores, but {reason}; "
                          "use 'auto' (the kernel where it can, the fp32 probe elsewhere) or 'probe'")
    return "probe"
