"""Cost of the instability monitor (stability.attach.Monitor) on a GPT-2 from transformers on CPU.

The same training loop (AdamW, gradient clipping, a batch each step) runs with and without
the monitor, in alternating blocks of steps within one process, so both see the same
machine load. Every step is timed on the process CPU clock (one torch thread), which a
busy machine's preemptions do not inflate (`--clock wall` for wall time). The report: the
ratio of the mean step times (monitored / plain) at the default logging interval, the same
from per-step medians (robust to outliers: (every - 1) x median non-logging step + median
logging step, over every x median plain step), and the cost of one logging step. No download: the model is
built from a config (the GPT-2 test model of tests/test_attach.py, d=32, 2 layers, unless
--width/--layers say otherwise).

    .venv/bin/python benchmarks/monitor_overhead.py [--rounds 6] [--block 100] [--every 10]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from stability.attach import DEFAULT_EVERY, Monitor  # noqa: E402


def build(width: int, layers: int, heads: int, vocab: int, seq: int):
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(n_layer=layers, n_embd=width, n_head=heads, vocab_size=vocab, n_positions=seq,
                     bos_token_id=0, eos_token_id=0, attn_implementation="sdpa", loss_type="ForCausalLM",
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--every", type=int, default=DEFAULT_EVERY)
    ap.add_argument("--block", type=int, default=100, help="steps per block (a multiple of --every)")
    ap.add_argument("--rounds", type=int, default=6, help="pairs of blocks (plain, monitored)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", choices=("cpu", "wall"), default="cpu")
    ap.add_argument("--json", help="also write the result here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = build(args.width, args.layers, args.heads, args.vocab, args.seq)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, args.vocab, (args.batch, args.seq), generator=g) for _ in range(64)]
    out = Path(tempfile.mkdtemp(prefix="monitor-overhead-"))
    mon = Monitor(model, opt, out / "run", every=args.every, data="random", flush_secs=1e9)

    def plain_step(step: int) -> None:
        x = batches[step % len(batches)]
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    def monitored_step(step: int) -> None:
        with mon.step(step):
            plain_step(step)

    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    step = 0
    for _ in range(args.block):  # warm-up: allocator, optimizer state, the monitor's first (logged) step
        step += 1
        monitored_step(step)
    per_step = {"plain": [], "nonlog": [], "log": []}
    blocks = {"plain": [], "monitored": []}
    for _ in range(args.rounds):
        for kind, fn in (("plain", plain_step), ("monitored", monitored_step)):
            total = 0.0
            for _ in range(args.block):
                step += 1
                t0 = clock()
                fn(step)
                dt = clock() - t0
                total += dt
                per_step["plain" if kind == "plain" else "log" if step % args.every == 0 else "nonlog"].append(dt)
            blocks[kind].append(total / args.block)
    mon.close()
    plain, monitored = statistics.mean(blocks["plain"]), statistics.mean(blocks["monitored"])
    med = {k: statistics.median(v) for k, v in per_step.items()}
    ratio_median = ((args.every - 1) * med["nonlog"] + med["log"]) / (args.every * med["plain"])
    pair = [m / p for p, m in zip(blocks["plain"], blocks["monitored"])]
    result = {
        "model": f"GPT-2 d={args.width} L={args.layers} heads={args.heads} vocab={args.vocab}",
        "batch": args.batch, "seq": args.seq, "every": args.every, "block": args.block, "rounds": args.rounds,
        "threads": args.threads, "clock": args.clock, "plain_step_ms": plain * 1e3,
        "monitored_step_ms": monitored * 1e3, "ratio": monitored / plain, "ratio_from_medians": ratio_median,
        "ratio_pairs_min": min(pair), "ratio_pairs_max": max(pair),
        "median_plain_step_ms": med["plain"] * 1e3, "median_nonlogging_step_ms": med["nonlog"] * 1e3,
        "median_logging_step_ms": med["log"] * 1e3,
        "machine": platform.machine(), "torch": torch.__version__, "python": platform.python_version(),
        "load_average": list(os.getloadavg()),
    }
    print(f"{result['model']}, batch {args.batch} x {args.seq} tokens, {args.threads} thread(s), CPU, "
          f"{args.clock} clock, load average {result['load_average'][0]:.1f}")
    print(f"plain step       {result['plain_step_ms']:.2f} ms mean, {result['median_plain_step_ms']:.2f} ms median "
          f"({args.rounds} blocks of {args.block})")
    print(f"monitored step   {result['monitored_step_ms']:.2f} ms mean (logging every {args.every} steps); "
          f"median {result['median_nonlogging_step_ms']:.2f} ms off logging steps, "
          f"{result['median_logging_step_ms']:.2f} ms on them")
    print(f"overhead ratio   {result['ratio']:.3f} from means (blocks: {result['ratio_pairs_min']:.3f} to "
          f"{result['ratio_pairs_max']:.3f}), {result['ratio_from_medians']:.3f} from medians; target <= 1.05")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
