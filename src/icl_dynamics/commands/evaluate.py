"""``evaluate RUN_DIR --set KEY=VALUE ... [--out FILE]``: the trained parameters on another distribution."""

from __future__ import annotations

import json


def configure(p):
    p.add_argument("run_dir", help="a finished run directory (its params.npz)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="change the evaluation distribution, e.g. data.probs=balanced (repeatable)")
    p.add_argument("--out", help="write the result as JSON to this file")


def run(args) -> int:
    from ..config import parse_override
    from ..evaluate import evaluate_run
    from ..fsio import atomic_write_bytes

    overrides = dict(parse_override(text) for text in args.overrides)
    res = evaluate_run(args.run_dir, overrides)
    print(f"loss {res['loss']:.6g}" + (" on " + ", ".join(f"{k}={v}" for k, v in overrides.items()) if overrides else
                                      " on the training distribution"))
    for k, x in enumerate(res.get("feature_loss", [])):
        print(f"  feature {k + 1}: feature_loss {x:.6g}, attention on its own feature {res['attention'][k][k]:.4f}")
    if args.out:
        atomic_write_bytes(args.out, (json.dumps(res, indent=2) + "\n").encode(), user_path=True)
        print(args.out)
    return 0
