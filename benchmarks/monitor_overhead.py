"""Cost of the instability monitor (stability.attach.Monitor) on a GPT-2 from transformers on CPU.

The same training loop (AdamW, gradient clipping, a fresh batch each step) runs with and
without the monitor, in alternating blocks of steps within one process, so both see the
same machine load; the report is the ratio of the mean step times (monitored / plain) at
the default logging interval, and the cost of one logging step. No download: the model is
built from a config (the GPT-2 test model of tests/test_attach.py, d=32, 2 layers, unless
--width/--layers say otherwise).

    .venv/bin/python benchmarks/monitor_overhead.py [--rounds 6] [--block 100] [--every 10]
"""
from __future__ import annotations

import argparse
import json
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

    step = 0
    for _ in range(args.block):  # warm-up: allocator, optimizer state, the monitor's first (logged) step
        step += 1
        monitored_step(step)
    times = {"plain": [], "monitored": []}
    log_steps = []
    for _ in range(args.rounds):
        for kind, fn in (("plain", plain_step), ("monitored", monitored_step)):
            t0 = time.perf_counter()
            for _ in range(args.block):
                step += 1
                if kind == "monitored" and step % args.every == 0:
                    s0 = time.perf_counter()
                    fn(step)
                    log_steps.append(time.perf_counter() - s0)
                else:
                    fn(step)
            times[kind].append((time.perf_counter() - t0) / args.block)
    mon.close()
    plain, monitored = statistics.mean(times["plain"]), statistics.mean(times["monitored"])
    # pairwise: each monitored block against the plain block just before it
    pair = [m / p for p, m in zip(times["plain"], times["monitored"])]
    result = {
        "model": f"GPT-2 d={args.width} L={args.layers} heads={args.heads} vocab={args.vocab}",
        "batch": args.batch, "seq": args.seq, "every": args.every, "block": args.block, "rounds": args.rounds,
        "threads": args.threads, "plain_step_ms": plain * 1e3, "monitored_step_ms": monitored * 1e3,
        "ratio": monitored / plain, "ratio_pairs_median": statistics.median(pair),
        "ratio_pairs_min": min(pair), "ratio_pairs_max": max(pair),
        "logging_step_ms": statistics.median(log_steps) * 1e3,
        "machine": platform.machine(), "torch": torch.__version__, "python": platform.python_version(),
    }
    print(f"{result['model']}, batch {args.batch} x {args.seq} tokens, {args.threads} thread(s), CPU")
    print(f"plain step      {result['plain_step_ms']:.2f} ms (mean of {args.rounds} blocks of {args.block})")
    print(f"monitored step  {result['monitored_step_ms']:.2f} ms (logging every {args.every} steps)")
    print(f"one logging step {result['logging_step_ms']:.2f} ms (median)")
    print(f"overhead ratio  {result['ratio']:.3f} (pairs: median {result['ratio_pairs_median']:.3f}, "
          f"min {result['ratio_pairs_min']:.3f}, max {result['ratio_pairs_max']:.3f}); target <= 1.05")
    print(json.dumps(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
