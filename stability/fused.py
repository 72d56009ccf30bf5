"""Fused sweeps: runs that share a model shape and differ only in optimizer-side values
(peak LR, seed, epsilon, weight decay, warm-up, ...) trained as one program.

One model definition (stability.model.Transformer) is vectorised over the members with
`torch.func.functional_call` + `vmap`: the members' parameters are stacked along a leading
member dimension (as `torch.func.stack_module_state` stacks them, but in one flat (M, N)
buffer, so the optimizer is a handful of whole-buffer ops), each member sees its own
batches (`data.train_batch(..., cfg.seed)`), and

* the loss is each member's `train.objective` of its own `monitor.output_stats`, summed
  (members are independent, so each member's gradient is its own);
* gradient clipping is per member, as `torch.nn.utils.clip_grad_norm_(foreach=True)`;
* AdamW is vectorised over members with per-(member, param group) hyperparameters read
  from the member's own `optim.build_optimizer` (LR schedule, warm-up, eps, weight decay,
  betas, muParam multipliers), in the operation order of torch's fused CPU AdamW kernel,
  so in fp32 on CPU each member's update is bit-identical to `torch.optim.AdamW(fused=True)`;
* every signal comes from stability.monitor, called on a per-member `Transformer` whose
  parameters, gradients and optimizer state are views into the stacked buffers;
* a member that stops (diverged with `train.stop_on_divergence`, or at its last step) writes
  its outputs at once and leaves the stack: its update stops, its rows stop, the others go on;
* each member writes config.yaml, metrics.parquet, summary.json and ckpt/step-*.pt into its
  own run directory, in exactly the format `stability.train.train` writes: a member's
  checkpoint can be resumed alone by `train`, and a run checkpointed by `train` can be
  resumed in a sweep.

Exactness (tests/test_fused.py): on CPU in fp32 a member's metrics equal the same run trained
alone to about 1e-6 relative over 100 steps; the matmuls under vmap run as batched kernels,
whose rounding can differ from the single run's in the last bit.

Which runs may fuse (`check_fusable`, `MEMBER_KEYS`) and where fusing pays (`should_fuse`,
from the measured benchmark: docs/performance.md) live in stability.fusion, without torch.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import math
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, data as data_mod
from .config import ConfigError, RunConfig, dump_yaml
from .fusion import check_fusable
from .io import file_lock, read_json, write_text
from .model import AttnProbe, Transformer
from .monitor import (GRAD_NORM, LOSS, STEP, TOKENS_PER_S, VAL_LOSS, DivergenceDetector, grad_stats,
                      output_stats, signal_row, summarize, update_stats)
from .optim import build_optimizer, schedule, set_lr
from .warning.live import Warner
from .train import (_latest_checkpoint, _refuse_another_run, _step0_row, _summary, _write_metrics,
                    _write_outputs, autocast_for, evaluate, objective, resolve_device)

def device_kind(device: torch.device) -> str:
    """The name stability.fusion.should_fuse compares: "cpu" or the CUDA device's name."""
    return "cpu" if device.type == "cpu" else torch.cuda.get_device_name(device)


# ---- the vectorised optimizer ---------------------------------------------------------------

class StackedAdamW:
    """AdamW over M members' parameters stacked in one flat (M, N) buffer.

    Member m's hyperparameters come from its own torch AdamW (`optim.build_optimizer` on the
    member's Transformer): each element belongs to one of the member's param groups, whose
    current `lr` (after `optim.set_lr`) and `weight_decay`, and the member's betas and eps,
    give per-(member, group) scalars, computed in double and rounded to float32 as torch's
    fused kernel does. The update is that kernel's arithmetic, op for op (its fmadd for the
    first moment is `lerp_`, its contracted second moment `addcmul_`)."""

    def __init__(self, group_index: torch.Tensor):
        self.group_index = group_index  # (M, N) int64: each element's param group, per member

    @torch.no_grad()
    def step(self, P: torch.Tensor, G: torch.Tensor, EA: torch.Tensor, EAS: torch.Tensor,
             optimizers: list[torch.optim.AdamW], step: int) -> None:
        dev = P.device
        decay, neg_step, w1, b2, c2, bc2s, eps = [], [], [], [], [], [], []
        for opt in optimizers:
            g0 = opt.param_groups[0]
            beta1, beta2 = g0["betas"]
            bc1 = 1 - beta1 ** step
            bc2 = 1 - beta2 ** step
            decay.append([1 - g["lr"] * g["weight_decay"] for g in opt.param_groups])
            neg_step.append([-(g["lr"] / bc1) for g in opt.param_groups])
            w1.append(1 - beta1)
            b2.append(beta2)
            c2.append(1 - beta2)
            bc2s.append(math.sqrt(bc2))
            eps.append(g0["eps"])
        width = max(len(r) for r in decay)
        pad = lambda rows: [r + [1.0] * (width - len(r)) for r in rows]  # noqa: E731
        f32 = functools.partial(torch.tensor, dtype=torch.float32, device=dev)
        col = lambda v: f32(v).unsqueeze(1)  # noqa: E731
        decay_full = torch.gather(f32(pad(decay)), 1, self.group_index)
        step_full = torch.gather(f32(pad(neg_step)), 1, self.group_index)
        P.mul_(decay_full)
        EA.lerp_(G, col(w1))
        EAS.mul_(col(b2)).addcmul_(G * col(c2), G)
        # torch.sqrt on CPU is not always correctly rounded (the fused kernel's is): take it in
        # float64, where rounding the exact root to float32 is correct
        root = EAS.sqrt() if EAS.is_cuda else EAS.double().sqrt_().float()
        denom = root.div_(col(bc2s)).add_(col(eps))
        P.add_(EA.mul(step_full).div_(denom))


# ---- members ------------------------------------------------------------------------------

@dataclass(eq=False)
class Member:
    """One run of a sweep: its config, directory and state outside the stacked buffers."""
    index: int
    cfg: RunConfig
    out: Path
    run_id: str
    model: Transformer | None = None
    optimizer: torch.optim.AdamW | None = None
    rows: list = field(default_factory=list)
    detector: DivergenceDetector | None = None
    start: int = 0
    resumed: bool = False
    wall_before: float = 0.0
    exp_avg: list | None = None  # per parameter, loaded from a checkpoint (None: zeros)
    exp_avg_sq: list | None = None
    summary: dict | None = None
    created: bool = False
    warner: Warner | None = None  # train.early_warning, decided from this member's own rows


def _clone_tensors(obj):
    """A copy of a (nested) state dict whose tensors own their storage (a view saved by
    torch.save would carry the whole stacked buffer)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return type(obj)((k, _clone_tensors(v)) for k, v in obj.items())
    if isinstance(obj, list):
        return [_clone_tensors(v) for v in obj]
    return obj


class _Stack:
    """The active members' parameters, gradients and Adam moments as (M, N) buffers, with
    per-parameter leaves for functional_call and per-member views for the monitor."""

    def __init__(self, members: list[Member], device: torch.device):
        self.members = members
        self.names = [n for n, _ in members[0].model.named_parameters()]
        shapes = [p.shape for _, p in members[0].model.named_parameters()]
        self.shapes = dict(zip(self.names, shapes))
        self.offsets, n = {}, 0
        for name, shape in zip(self.names, shapes):
            self.offsets[name] = (n, n + math.prod(shape))
            n += math.prod(shape)
        with torch.no_grad():
            self.P = torch.stack([torch.cat([p.detach().reshape(-1) for p in m.model.parameters()]) for m in members])
            self.EA = torch.zeros_like(self.P)
            self.EAS = torch.zeros_like(self.P)
            for j, m in enumerate(members):
                if m.exp_avg is not None:
                    self.EA[j] = torch.cat([t.reshape(-1) for t in m.exp_avg])
                    self.EAS[j] = torch.cat([t.reshape(-1) for t in m.exp_avg_sq])
                    m.exp_avg = m.exp_avg_sq = None
        self.G = torch.zeros_like(self.P)
        self.buffers = {k: v for k, v in members[0].model.named_buffers()}
        self._bind()

    def _view(self, buf: torch.Tensor, name: str, j: int | None = None) -> torch.Tensor:
        a, b = self.offsets[name]
        if j is None:
            return buf[:, a:b].view(buf.shape[0], *self.shapes[name])
        return buf[j, a:b].view(self.shapes[name])

    def _bind(self) -> None:
        """(Re)create the leaves and point each member's model and optimizer state at its rows."""
        self.leaves = {}
        for name in self.names:
            leaf = self._view(self.P, name).requires_grad_(True)
            leaf.grad = self._view(self.G, name)  # backward accumulates in place into G
            self.leaves[name] = leaf
        group_index = torch.zeros(self.P.shape, dtype=torch.int64)
        for j, m in enumerate(self.members):
            params = dict(m.model.named_parameters())
            for name in self.names:
                p = params[name]
                p.data = self._view(self.P, name, j)
                p.grad = self._view(self.G, name, j)
            gi = {id(p): g for g, group in enumerate(m.optimizer.param_groups) for p in group["params"]}
            for name in self.names:
                a, b = self.offsets[name]
                group_index[j, a:b] = gi[id(params[name])]
        self.adam = StackedAdamW(group_index.to(self.P.device))

    def sync_optimizer_state(self, j: int, step: int) -> None:
        """Member j's torch optimizer state as views of the stacked moments (what
        monitor.update_stats and the checkpoint read)."""
        m = self.members[j]
        params = dict(m.model.named_parameters())
        for name in self.names:
            m.optimizer.state[params[name]] = {
                "step": torch.tensor(float(step), dtype=torch.float32),
                "exp_avg": self._view(self.EA, name, j), "exp_avg_sq": self._view(self.EAS, name, j)}

    def drop(self, leaving: list[Member]) -> None:
        """Remove members from the stack: each leaving model keeps a copy of its own state."""
        for m in leaving:
            for p in m.model.parameters():
                p.data = p.data.clone()
                p.grad = None
            m.optimizer.state.clear()
        keep = [j for j, m in enumerate(self.members) if m not in leaving]
        self.members = [self.members[j] for j in keep]
        if not self.members:
            return
        idx = torch.tensor(keep, device=self.P.device)
        with torch.no_grad():
            self.P, self.EA, self.EAS = (t.index_select(0, idx) for t in (self.P, self.EA, self.EAS))
            self.G = torch.zeros_like(self.P)
        self._bind()


# ---- exact LayerNorm gains under vmap ------------------------------------------------------

class _MemberLayerNorm(torch.autograd.Function):
    """F.layer_norm without bias, whose vmap rule runs the native kernel once per member.

    vmap's own rule for a batched LayerNorm gain computes the gain's gradient as a separate
    reduction, which rounds differently from the native backward kernel a single run uses
    (~4e-7 relative): harmless at a stable LR, but a diverging member amplifies it to percents
    within a few steps. Looping the native kernel over members makes every gradient equal the
    single run's bit for bit (tests/test_fused.py). Used on CPU; on CUDA (bf16) the batched rule."""

    @staticmethod
    def forward(x, weight, shape, eps):
        return torch.nn.functional.layer_norm(x, shape, weight, None, eps)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, ctx.shape, ctx.eps = inputs
        ctx.save_for_backward(x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        with torch.enable_grad():
            x, weight = x.detach().requires_grad_(), weight.detach().requires_grad_()
            y = torch.nn.functional.layer_norm(x, ctx.shape, weight, None, ctx.eps)
        gx, gw = torch.autograd.grad(y, (x, weight), grad)
        return gx, gw, None, None

    @staticmethod
    def vmap(info, in_dims, x, weight, shape, eps):
        n = info.batch_size
        x = x.movedim(in_dims[0], 0) if in_dims[0] is not None else x.expand(n, *x.shape)
        weight = weight.movedim(in_dims[1], 0) if in_dims[1] is not None else weight.expand(n, *weight.shape)
        return torch.stack([torch.nn.functional.layer_norm(x[i], shape, weight[i], None, eps) for i in range(n)]), 0


def _exact_layernorms(model: torch.nn.Module) -> None:
    """Route every bias-free LayerNorm of `model` (a private copy) through _MemberLayerNorm."""
    for mod in model.modules():
        if isinstance(mod, torch.nn.LayerNorm) and mod.bias is None and mod.weight is not None:
            mod.forward = (lambda x, mod=mod: _MemberLayerNorm.apply(x, mod.weight, mod.normalized_shape, mod.eps))


# ---- training -----------------------------------------------------------------------------

def _probe_tensors(probes):
    return [(p.max_logit, p.entropy, p.q_rms, p.k_rms) for p in probes] if probes is not None else None


def train_fused(cfgs: list[RunConfig], outs: list[str | Path], quiet: bool = False,
                exact: bool | None = None) -> list[dict]:
    """Train (or resume, or skip where finished) each run cfgs[i] into outs[i], as one
    program. Returns the members' summaries, in order; each equals (to rounding) what
    `stability.train.train(cfgs[i], outs[i])` returns.

    Raises ConfigError as `train` does (another run in a directory, bad data, a non-finite loss
    at initialisation: the whole sweep is refused, nothing trained) and for members that
    differ in more than MEMBER_KEYS. `exact` (default: on CPU) runs each LayerNorm's native
    kernel per member, so fp32 gradients equal the single runs' bit for bit (_MemberLayerNorm)."""
    if len(cfgs) != len(outs):
        raise ConfigError(f"fused sweep: {len(cfgs)} configs but {len(outs)} run directories")
    check_fusable(cfgs)
    members = [Member(i, cfg, Path(out), cfg.run_id()) for i, (cfg, out) in enumerate(zip(cfgs, outs))]
    outs_resolved = [m.out.resolve() for m in members]
    if len(set(outs_resolved)) != len(outs_resolved):
        raise ConfigError("fused sweep: two members share a run directory")
    pending = []
    for m in members:
        summary_path = m.out / "summary.json"
        if summary_path.is_file():
            try:
                s = read_json(summary_path)
            except (OSError, ValueError) as e:
                raise ConfigError(f"--out: {summary_path} is unreadable ({type(e).__name__}); delete it to train "
                                  "again") from None
            if s.get("run_id") != m.run_id:
                raise ConfigError(f"--out: {m.out} holds finished run {s.get('run_id')}, not {m.run_id}; choose "
                                  "another directory")
            m.summary = s
        elif m.out.exists() and not m.out.is_dir():
            raise ConfigError(f"--out: {m.out} exists and is not a directory")
        else:
            pending.append(m)
    if pending:
        cfg0 = pending[0].cfg
        device = resolve_device(cfg0)
        tokens = data_mod.load(cfg0)
        vocab = cfg0.model.vocab_size or tokens.vocab_size
        if vocab < tokens.vocab_size:
            raise ConfigError(f"model.vocab_size: {vocab} is smaller than the dataset's vocabulary ({tokens.vocab_size})")
        for m in pending:  # each member's init is the one `train` builds: torch.manual_seed(seed) alone
            torch.manual_seed(m.cfg.seed)
            m.model = Transformer(m.cfg.model, vocab, m.cfg.train.seq_len).to(device)
        with contextlib.ExitStack() as locks:
            try:
                for m in pending:
                    m.created = not m.out.exists()
                    try:
                        m.out.mkdir(parents=True, exist_ok=True)
                    except OSError as e:
                        raise ConfigError(f"--out: cannot create {m.out} ({e.strerror})") from None
                    if not locks.enter_context(file_lock(m.out / ".lock", blocking=False)):
                        raise ConfigError(f"--out: {m.out} is being written by another process")
                threads = max(m.cfg.train.threads for m in pending)
                if threads > 0:  # before the step-0 rows, as train sets it
                    torch.set_num_threads(threads)
                _prepare(pending, tokens, device)
            except ConfigError:
                locks.close()
                for m in pending:
                    if m.created:
                        (m.out / ".lock").unlink(missing_ok=True)
                        (m.out / "config.yaml").unlink(missing_ok=True)
                        with contextlib.suppress(OSError):
                            m.out.rmdir()
                raise
            val = data_mod.val_batches(tokens, cfg0.train.eval_batches, cfg0.train.batch_size, cfg0.train.seq_len)
            groups: dict[int, list[Member]] = {}
            for m in pending:
                if m.summary is None:
                    groups.setdefault(m.start, []).append(m)
            for start in sorted(groups):  # members resumed from the same step train together
                _loop(groups[start], start, tokens, val, device, quiet, exact)
    return [m.summary for m in members]


def _prepare(pending: list[Member], tokens, device) -> None:
    """Each member: refuse another run's directory, build its optimizer, resume from its
    checkpoint or log its step-0 row, write config.yaml. Raises ConfigError."""
    for m in pending:
        _refuse_another_run(m.out, m.run_id)
    val = data_mod.val_batches(tokens, pending[0].cfg.train.eval_batches, pending[0].cfg.train.batch_size,
                               pending[0].cfg.train.seq_len)
    for m in pending:
        t = m.cfg.train
        m.optimizer = build_optimizer(m.model, m.cfg.optim)
        state = _latest_checkpoint(m.out / "ckpt", m.out, m.run_id)
        if state is not None:
            m.model.load_state_dict(state["model"])
            m.optimizer.load_state_dict(state["optimizer"])
            params = [p for _, p in m.model.named_parameters()]
            m.exp_avg = [m.optimizer.state[p]["exp_avg"] for p in params]
            m.exp_avg_sq = [m.optimizer.state[p]["exp_avg_sq"] for p in params]
            m.optimizer.state.clear()
            m.start, m.rows, init_loss, m.wall_before = state["step"], state["rows"], state["init_loss"], state["wall_time_s"]
            m.resumed = True
        else:
            m.rows = [_step0_row(m.cfg, m.model, tokens, val, device)]
            init_loss = m.rows[0][VAL_LOSS]
        m.detector = DivergenceDetector(init_loss, t.divergence_margin, t.divergence_window)
        m.warner = Warner(m.cfg, m.rows)
        if state is not None:
            m.detector.load_state_dict(state["detector"])
            if m.detector.diverged and t.stop_on_divergence:  # cannot happen with train's checkpoints; be safe
                m.start = m.rows[-1][STEP]
    for m in pending:
        write_text(m.out / "config.yaml", dump_yaml(m.cfg))


def _loop(group: list[Member], start: int, tokens, val, device: torch.device, quiet: bool,
          exact: bool | None) -> None:
    """The fused training loop of members that all resume at `start`."""
    cfg0 = group[0].cfg
    stack = _Stack(group, device)
    base = copy.deepcopy(group[0].model)  # the one model definition; functional_call swaps in the stacked tensors
    for p in base.parameters():
        p.grad = None
    if exact if exact is not None else device.type == "cpu":
        _exact_layernorms(base)

    def forward(params, buffers, x, probe):
        logits, probes = torch.func.functional_call(base, (params, buffers), (x,), {"probe": probe})
        return logits, _probe_tensors(probes) or []  # vmap returns tensors only

    vforward = {p: torch.func.vmap(functools.partial(forward, probe=p), in_dims=(0, None, 0)) for p in (False, True)}
    veval = torch.func.vmap(functools.partial(forward, probe=False), in_dims=(0, None, None))
    vstats = torch.func.vmap(output_stats)
    vstats_shared_y = torch.func.vmap(output_stats, in_dims=(0, None))
    same_loss = all(m.cfg.loss == cfg0.loss for m in group)

    @torch.no_grad()
    def evaluate_all() -> list[float]:
        totals = [0.0] * len(stack.members)
        for x, y in val:
            with autocast_for(cfg0, device):
                logits, _ = veval(stack.leaves, stack.buffers, x.to(device))
            for j, v in enumerate(vstats_shared_y(logits, y.to(device))["ce"].tolist()):
                totals[j] += v
        return [v / len(val) for v in totals]

    t0 = time.perf_counter()
    max_steps = max(m.cfg.train.steps for m in group)
    with warnings.catch_warnings():
        # CPU SDPA has no vmap batching rule (a per-member loop, exact); the stacked gradient
        # views trip a layout hint of AccumulateGrad. Neither changes a number.
        warnings.filterwarnings("ignore", message=".*batching rule.*")
        warnings.filterwarnings("ignore", message=".*gradient layout contract.*")
        _steps(stack, group, start, max_steps, tokens, val, device, quiet, vforward, evaluate_all, vstats,
               same_loss, t0)


def _steps(stack, group, start, max_steps, tokens, val, device, quiet, vforward, evaluate_all, vstats,
           same_loss, t0) -> None:
    """The steps of _loop, under its warning filters."""
    cfg0 = group[0].cfg
    t = cfg0.train
    B, T = t.batch_size, t.seq_len
    tokens_per_step = B * T
    window_start, window_steps = t0, 0
    last_print = 0
    step = start
    for step in range(start + 1, max_steps + 1):
        if not stack.members:
            break
        act = stack.members
        batches = [data_mod.train_batch(tokens, step, B, T, m.cfg.seed) for m in act]
        x = torch.stack([b[0] for b in batches]).to(device, non_blocking=True)
        y = torch.stack([b[1] for b in batches]).to(device, non_blocking=True)
        log = [step % t.log_every == 0 or step == m.cfg.train.steps for m in act]
        log_any = any(log)
        probe_now = log_any and (t.probe_every == 0 or step % t.probe_every == 0)
        for m in act:
            set_lr(m.optimizer, schedule(step, m.cfg.optim, m.cfg.train.steps))
        with autocast_for(cfg0, device):
            logits, probes = vforward[probe_now](stack.leaves, stack.buffers, x)
        probes = probes if probe_now else None
        st = vstats(logits, y)
        if same_loss:
            loss = objective(cfg0, st).sum()
        else:
            loss = sum(objective(m.cfg, {k: v[j] for k, v in st.items()}) for j, m in enumerate(act))
        stack.G.zero_()
        loss.backward()
        grads = [grad_stats(m.model) if log[j] else None for j, m in enumerate(act)]  # before clipping
        with torch.no_grad():  # per-member clip_grad_norm_(foreach=True)
            norms = torch._foreach_norm([stack._view(stack.G, n, j) for j in range(len(act)) for n in stack.names], 2.0)
            per = len(stack.names)
            total = torch.stack([torch.linalg.vector_norm(torch.stack(norms[j * per:(j + 1) * per]), 2.0)
                                 for j in range(len(act))])
            max_norm = torch.tensor([m.cfg.optim.grad_clip if m.cfg.optim.grad_clip > 0 else float("inf") for m in act],
                                    dtype=total.dtype, device=total.device)
            coef = torch.clamp(torch.reciprocal(total + 1e-6) * max_norm, max=1.0)
            stack.G.mul_(coef.unsqueeze(1))
        stack.adam.step(stack.P, stack.G, stack.EA, stack.EAS, [m.optimizer for m in act], step)
        window_steps += 1
        if not log_any:
            continue
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        elapsed = max(now - window_start, 1e-9)
        eval_now = any(log[j] and (step % t.eval_every == 0 or step == m.cfg.train.steps) for j, m in enumerate(act))
        vals = evaluate_all() if eval_now else None
        total_list = total.tolist()
        leaving = []
        for j, m in enumerate(act):
            if not log[j]:
                continue
            stack.sync_optimizer_state(j, step)
            group0 = m.optimizer.param_groups[0]
            st_j = {k: v[j] for k, v in st.items()}
            probes_j = ([AttnProbe(*(v[j] for v in layer)) for layer in probes] if probes is not None else None)
            row = signal_row(step, step * tokens_per_step, group0["lr"] / group0["lr_mult"], st_j, probes_j,
                             total_list[j], grads[j], update_stats(m.model, m.optimizer))
            row[TOKENS_PER_S] = window_steps * tokens_per_step / elapsed
            if step % t.eval_every == 0 or step == m.cfg.train.steps:
                row[VAL_LOSS] = vals[j]
            m.rows.append(row)
            m.detector.update(step, row[LOSS], row[GRAD_NORM])
            m.warner.step(m.rows)
            stop = ((m.detector.diverged and m.cfg.train.stop_on_divergence) or m.warner.stopped
                    or step == m.cfg.train.steps)
            ct = m.cfg.train
            if stop:
                leaving.append(m)
            elif step % ct.checkpoint_every == 0:
                _save_checkpoint(stack, j, step, t0)
        # members that log on other steps checkpoint too (train checkpoints at any step)
        for j, m in enumerate(act):
            if not log[j] and step % m.cfg.train.checkpoint_every == 0 and step != m.cfg.train.steps:
                _save_checkpoint(stack, j, step, t0)
        for m in leaving:
            _finish(m, stack, step, start, t0, tokens, val, device)
        if leaving:
            stack.drop(leaving)
        window_start, window_steps = time.perf_counter(), 0
        if not quiet and (step - last_print >= max(max_steps // 10, 1) or not stack.members):
            last_print = step
            losses = [f"{m.run_id}={m.rows[-1][LOSS]:.3f}" for m in act]
            print(f"fused step {step}/{max_steps}: {len(stack.members)} of {len(group)} members still training; "
                  f"loss {' '.join(losses)}", file=sys.stderr, flush=True)
    for m in list(stack.members):  # a member whose last step was not a logged one cannot remain; be safe
        _finish(m, stack, step, start, t0, tokens, val, device)


def _save_checkpoint(stack: _Stack, j: int, step: int, t0: float) -> None:
    """Member j's checkpoint, in `train`'s format (its model and optimizer state dicts)."""
    m = stack.members[j]
    stack.sync_optimizer_state(j, step)
    state = {"step": step, "run_id": m.run_id, "model": _clone_tensors(m.model.state_dict()),
             "optimizer": _clone_tensors(m.optimizer.state_dict()), "rows": m.rows,
             "init_loss": m.detector.init_loss, "detector": m.detector.state_dict(),
             "wall_time_s": m.wall_before + time.perf_counter() - t0}
    checkpoint.save(m.out / "ckpt", step, state)
    _write_metrics(m.out, m.rows)


def _finish(m: Member, stack: _Stack, step: int, start: int, t0: float, tokens, val, device) -> None:
    """A member's last step: its final loss, summary and outputs, as `train` writes them."""
    wall = m.wall_before + time.perf_counter() - t0
    last = m.rows[-1]
    final_loss = (last[VAL_LOSS] if last[STEP] == step and last[VAL_LOSS] is not None
                  else evaluate(m.model, val, m.cfg, device))
    resumed_from = start if m.resumed else None
    tokens_per_step = m.cfg.train.batch_size * m.cfg.train.seq_len
    tokens_per_s = max(last[STEP] - (resumed_from or 0), 1) * tokens_per_step / max(time.perf_counter() - t0, 1e-9)
    m.summary = _summary(m.cfg, m.run_id, summarize(m.rows, m.cfg, m.detector, final_loss), m.model, device, tokens,
                         last[STEP], resumed_from, wall, tokens_per_s, m.warner.summary())
    _write_outputs(m.out, m.rows, m.summary)
