"""The `stability` command. Bad input exits 2 with one line naming the field; no traceback."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys

from .config import ConfigError


def _train(args) -> int:
    from . import config as config_mod
    cfg = config_mod.load(args.config, args.set)
    import contextlib

    from .devices import claim_gpu
    # On a multi-GPU workstation Snakemake does not set CUDA_VISIBLE_DEVICES: take a free
    # device by lock file before torch initialises CUDA (a no-op without GPUs).
    with claim_gpu() if args.pin_gpu else contextlib.nullcontext() as gpu:
        if gpu is not None and not args.quiet:
            print(f"pinned to GPU {gpu}", file=sys.stderr)
        from .train import train  # torch is imported only once the config is known to be valid
        summary = train(cfg, args.out, expect_run_id=args.expect_run_id, quiet=args.quiet)
    print(_closing_line(summary), file=sys.stderr)
    return 0


def _closing_line(s: dict, out: str | None = None) -> str:
    """What `train` and `train-fused` print when a run ends: how it ended, its early warning."""
    status = f"diverged at step {s['diverged_step']} ({s['diverged_reason']})" if s["diverged"] else "finished"
    if s.get("stopped_by_warning"):
        status = (f"stopped by the early warning at step {s['warning_step']} (p_fail "
                  f"{s['warning_p_fail']:.3f} >= {s['warning_threshold']:g}, predicted {s['warning_mode']})")
    elif s.get("warning_p_fail") is not None:
        status += (f"; early warning at step {s['warning_step']}: p_fail {s['warning_p_fail']:.3f} "
                   f"(threshold {s['warning_threshold']:g}), predicted {s['warning_mode']}")
    where = f" ({out})" if out else ""
    return f"run {s['run_id']}{where} {status}: final_loss={s['final_loss']} max_attn_logit={s['max_attn_logit']}"


class _MemberAction(argparse.Action):
    """`--member OUT` starts a member; a later --set / --expect-run-id belongs to it."""

    def __call__(self, parser, namespace, values, option_string=None):
        namespace.members.append({"out": values, "set": [], "expect_run_id": None})


class _MemberSetAction(argparse.Action):
    """--set before any --member applies to every member; after one, to that member only."""

    def __call__(self, parser, namespace, values, option_string=None):
        (namespace.members[-1]["set"] if namespace.members else namespace.set).append(values)


class _MemberExpectAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        if not namespace.members:
            parser.error("--expect-run-id: give it after the --member it checks")
        namespace.members[-1]["expect_run_id"] = values


def _train_fused(args) -> int:
    from . import config as config_mod
    from .fusion import check_fusable, write_manifest
    if not args.members:
        raise ConfigError("--member: expected at least one run directory")
    cfgs = []
    for i, m in enumerate(args.members):
        try:
            cfg = config_mod.load(args.config, args.set + m["set"])
        except ConfigError as e:
            raise ConfigError(f"--member {m['out']}: {e}") from None
        if m["expect_run_id"] and cfg.run_id() != m["expect_run_id"]:
            raise ConfigError(f"--expect-run-id: member {i} ({m['out']}) resolves to run {cfg.run_id()}, not "
                              f"{m['expect_run_id']} (if the workflow passed it: the config or data files changed "
                              "since it planned; plan again)")
        cfgs.append(cfg)
    check_fusable(cfgs)  # before torch is imported
    outs = [m["out"] for m in args.members]
    from .devices import claim_gpu
    with claim_gpu() if args.pin_gpu else contextlib.nullcontext() as gpu:
        if gpu is not None and not args.quiet:
            print(f"pinned to GPU {gpu}", file=sys.stderr)
        from .fused import train_fused
        summaries = train_fused(cfgs, outs, quiet=args.quiet)
    if args.manifest:
        write_manifest(args.manifest, {s["run_id"]: out for s, out in zip(summaries, outs)})
    for s, out in zip(summaries, outs):
        print(_closing_line(s, out), file=sys.stderr)
    return 0


def _prepare_data(args) -> int:
    from . import config as config_mod
    cfg = config_mod.load(args.config, args.set)
    if args.expect_data_id and cfg.data_id() != args.expect_data_id:
        raise ConfigError(f"--expect-data-id: the data resolves to {cfg.data_id()}, not {args.expect_data_id} "
                          "(its files changed since the workflow was planned; plan again)")
    from .data import prepare
    print(prepare(cfg))
    return 0


def _grid(args) -> int:
    from .config import load_yaml
    from .grid import expand
    studies = expand(load_yaml(args.workflow))
    for name, st in studies.items():
        print(f"{name}: {len(st.points)} grid points, {len(st.run_ids)} runs, findings {st.findings}")
        if args.verbose:
            for p in st.points:
                print(f"  {p.run_id}  scale={p.scale} variant={p.variant} lr={p.lr:g} seed={p.seed}")
    return 0


def _interventions(args) -> int:
    from . import interventions
    for plugin in args.plugin:
        interventions.load_plugin(plugin)
    for iv in interventions.REGISTRY.values():
        keys = ", ".join(f"{k} (off: {iv.off[k]!r})" if k in iv.off else k for k in iv.keys)
        print(f"{iv.name}\n  keys: {keys}\n  changes: {', '.join(iv.changes)}\n"
              f"  mitigates: {', '.join(iv.mitigates) or '-'}\n  test: {iv.test}")
    return 0


def _warn_fit(args) -> int:
    from .warning import examples, model
    ex = examples.build(args.results, ks=[args.k])
    if ex.is_empty():
        raise ConfigError(f"{' '.join(args.results)}: no finished run with a logged update in the first "
                          f"{100 * args.k:g}% of its steps; expected results folders with trained runs")
    try:
        fitted = model.fit(ex, args.k)
    except ValueError as e:
        raise ConfigError(f"{' '.join(args.results)}: {e}") from None
    fitted["stop_threshold"] = model.stop_threshold(ex, args.k)
    model.save(fitted, args.out)
    t = fitted["trained_on"]
    print(f"wrote {args.out}: logistic regression on {len(fitted['features'])} features at K = {100 * args.k:g}%, "
          f"{t['runs']} runs ({t['failed']} failed); recommended train.early_warning_threshold for stop: "
          f"{fitted['stop_threshold']:.4g}", file=sys.stderr)
    return 0


def _diagnose(args) -> int:
    import json

    from .warning.diagnose import diagnose, render
    d = diagnose(args.run_dir, args.model)
    print(json.dumps(d, allow_nan=False, default=str) if args.json else render(d))
    return 0


def _analyse_runs(args) -> int:
    from .analysis.monitored import analyse_runs, parse_target
    result = analyse_runs(args.runs, args.out, parse_target(args.target), args.lr, args.probe_step,
                          [f for f in args.formats.split(",") if f])
    print("\n".join(result["sentences"]))
    print(f"{result['n_runs']} runs, {len(result['sizes'])} sizes, probe step {result['probe_step']}: "
          f"tables, figures and forecast.txt in {args.out}", file=sys.stderr)
    return 0


def _too_large(e: BaseException) -> bool:
    """Whether an exception says the sizes asked for exceed memory or integer range."""
    msg = str(e)
    return (isinstance(e, (MemoryError, OverflowError)) or type(e).__name__ == "OutOfMemoryError"
            or any(s in msg for s in ("can't allocate memory", "not enough memory", "calculation overflowed",
                                      "array is too big")))


def _fraction(text: str) -> float:
    try:
        k = float(text)
    except ValueError:
        k = math.nan
    if not 0 < k <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 1], got {text!r}")
    return k


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stability", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one run into --out (resumes; skips a finished run)")
    p.add_argument("--config", help="a run config YAML (default: built-in defaults)")
    p.add_argument("--out", required=True, help="the run directory")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key, e.g. optim.lr=0.01")
    p.add_argument("--expect-run-id", help="fail unless the resolved config hashes to this id (used by the workflow)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--pin-gpu", action="store_true", help="claim one free GPU by lock file (workstations with several)")
    p.set_defaults(func=_train)

    p = sub.add_parser("train-fused", help="train runs that differ only in optimizer-side values as one program "
                       "(each into its own run directory, as `train` writes it; resumes; skips finished runs)",
                       description="Each --member OUT starts a run; --set given before the first --member applies "
                       "to every run, after it to that run only. Members must share the model, data and batch "
                       "shape (stability.fusion.MEMBER_KEYS lists what may differ).")
    p.add_argument("--config", help="a run config YAML every member starts from (default: built-in defaults)")
    p.set_defaults(members=[], set=[])
    p.add_argument("--member", action=_MemberAction, metavar="OUT", required=True,
                   help="a member's run directory; repeat for each run")
    p.add_argument("--set", action=_MemberSetAction, metavar="KEY=VALUE",
                   help="override a config key for every member (before the first --member) or the last one")
    p.add_argument("--expect-run-id", action=_MemberExpectAction, metavar="ID",
                   help="fail unless the last --member's config hashes to this id (used by the workflow)")
    p.add_argument("--manifest", metavar="PATH", help="once every member finished, write a JSON of the members "
                   "and their summaries' hashes here (used by the workflow)")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.add_argument("--pin-gpu", action="store_true", help="claim one free GPU by lock file (workstations with several)")
    p.set_defaults(func=_train_fused)

    p = sub.add_parser("prepare-data", help="tokenize a run config's dataset into the cache")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--expect-data-id", help="fail unless the config and data files hash to this id (used by the workflow)")
    p.set_defaults(func=_prepare_data)

    p = sub.add_parser("grid", help="expand a workflow config's studies and list their runs")
    p.add_argument("workflow", nargs="?", default="config/config.yaml")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(func=_grid)

    p = sub.add_parser("interventions", help="list the registered interventions: keys, seams, failure modes, tests")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="a user's module (or .py file) to load first")
    p.set_defaults(func=_interventions)

    p = sub.add_parser("warn-fit", help="fit the early-warning predictor on results folders' runs")
    p.add_argument("results", nargs="+", help="results folders (each with studies/*/runs.parquet and runs/)")
    p.add_argument("--out", required=True, help="the model file to write (JSON)")
    p.add_argument("--k", type=_fraction, default=0.1, help="window: the first K of planned steps, a fraction (default 0.1)")
    p.set_defaults(func=_warn_fit)

    p = sub.add_parser("diagnose", help="a run's failure mode with its evidence, and its p_fail")
    p.add_argument("run_dir", help="a run folder (metrics.parquet; summary.json once finished)")
    p.add_argument("--json", action="store_true", help="one JSON object (failure_mode, p_fail, evidence, ...)")
    p.add_argument("--model", help="an early-warning model file (default: the run's train.early_warning_model, else the "
                   "one shipped with the package)")
    p.set_defaults(func=_diagnose)

    p = sub.add_parser("analyse-runs", help="a study's tables, figures and forecast from runs recorded by "
                       "stability.attach.Monitor (docs/monitor.md)")
    p.add_argument("runs", nargs="+", metavar="DIR", help="monitored run folders (metrics.parquet, run_card.json)")
    p.add_argument("--out", default="analysis", help="where the tables and figures go (default: ./analysis)")
    p.add_argument("--target", metavar="[NAME=]PARAMS", help="forecast at this many non-embedding parameters, "
                   "e.g. 1B=1e9 (default: one more step of the size ladder)")
    p.add_argument("--lr", type=float, help="forecast this peak LR only")
    p.add_argument("--probe-step", type=int, help="the step the fits read (default: the last step every run "
                   "that did not diverge logged)")
    p.add_argument("--formats", default="png,html", help="figure formats, comma-separated (png, svg, html)")
    p.set_defaults(func=_analyse_runs)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as e:
        msg = " ".join(str(e).splitlines())  # one line, even if a key or path holds a newline
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except (MemoryError, OverflowError, RuntimeError, ValueError) as e:
        if not _too_large(e):
            raise
        # numpy's MemoryError, torch's allocator errors, sizes past int64: a config too large for the machine
        what = "out of memory" if not isinstance(e, OverflowError) and "overflow" not in str(e) else "sizes overflow"
        print(f"error: {what} ({' '.join(str(e).split())[:200]}); reduce the model, batch or data sizes",
              file=sys.stderr)
        return 2
    except TimeoutError as e:  # no free GPU in time
        print(f"error: {e}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume from the last checkpoint", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `stability grid | head`: the reader left; stop quietly
        with contextlib.suppress(OSError, ValueError):  # stdout may be no file (tests redirect it)
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit-time flush must not fail again
        return 141  # what a process killed by SIGPIPE reports (128 + 13)


if __name__ == "__main__":
    sys.exit(main())
