"""Commands on one run: ``train`` and ``plot``."""

from __future__ import annotations

import argparse
import sys

from ..errors import DivergenceError, UserError


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="YAML config file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dotted config key; the value is parsed as YAML (repeatable)")


def configure_train(p):
    from .config import described_keys

    width = max(len(k) for k, _ in described_keys())
    p.epilog = "config keys (set with --set KEY=VALUE; 'icl-dynamics config show' prints the values):\n" + \
        "\n".join(f"  {k:<{width}}  {d}" for k, d in described_keys())
    add_config_args(p)
    p.add_argument("--out", help="run directory to create")
    p.add_argument("--overwrite", action="store_true", help="replace the run in an existing --out")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue an unfinished run from its last checkpoint "
                   "(with the config stored in RUN_DIR)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def train(args) -> int:
    from ..config import load_config
    from ..errors import Interrupted
    from ..measures import loss_warnings
    from ..runner import execute, resume

    if args.resume is not None:
        if args.out is not None or args.config is not None or args.overrides or args.overwrite:
            raise UserError("--resume takes its config from RUN_DIR; do not combine it with --out, --config, "
                            "--set or --overwrite")
        args.out = args.resume
    elif args.out is None:
        raise UserError("train needs --out RUN_DIR (or --resume RUN_DIR)")
    try:
        if args.resume is not None:
            result = resume(args.resume, progress=not args.quiet)
        else:
            cfg = load_config(args.config, args.overrides)
            result = execute(cfg, args.out, overwrite=args.overwrite, progress=not args.quiet)
    except Interrupted as e:
        saved = f"checkpoint saved at step {e.step}; continue with 'icl-dynamics train --resume {args.out}'" \
            if e.saved else "no checkpoint saved"
        print(f"icl-dynamics: interrupted ({e}); {saved}", file=sys.stderr)
        return e.exit_code
    if result.status == "diverged":
        raise DivergenceError(f"training diverged at step {result.diverged_at} (non-finite update); "
                              f"the trajectory up to step {result.diverged_at - 1} is kept in {args.out}; "
                              f"try a smaller train.lr")
    s = result.trajectory
    print(f"done: {len(s.steps)} logged steps, final loss {s.loss[-1]:.4g}; run directory {args.out}")
    for w in loss_warnings(s):
        print(f"icl-dynamics: warning: {w}", file=sys.stderr)
    return 0


def configure_plot(p):
    p.add_argument("run_dir", help="a run directory written by 'train'")
    p.add_argument("--out", help="folder for the figures (default RUN_DIR/figures)")
    p.add_argument("--steps", type=int, nargs="+", help="steps for the attention heatmaps")
    p.add_argument("--feature", type=int, help="1-based minor feature for the scores figure (default 2)")
    p.add_argument("--format", dest="formats", nargs="+", default=["png"], metavar="FMT",
                   help="figure formats: png, pdf, svg (several allowed)")


def plot(args) -> int:
    from ..plots import plot_run
    from ..storage import load_run

    run = load_run(args.run_dir)
    K = len(run.probs)
    if args.feature is not None and not 1 <= args.feature <= K:
        raise UserError(f"--feature must be between 1 and K={K}, got {args.feature}")
    last = int(run.trajectory.steps[-1])
    if args.steps and any(s > last for s in args.steps):
        raise UserError(f"--steps must be between 0 and the run's last step {last}")
    if args.steps and any(s < 0 for s in args.steps):
        raise UserError("--steps must be >= 0")
    paths = plot_run(run, args.out, args.steps, None if args.feature is None else args.feature - 1,
                     formats=args.formats)
    for p in paths:
        print(p)
    return 0
