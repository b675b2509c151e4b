"""Analysis commands: ``phases RUN_DIR`` and ``reproduce --out DIR``."""

from __future__ import annotations

import json
import time
from pathlib import Path



def configure_phases(p):
    p.add_argument("run_dir", help="a run directory written by 'train'")
    p.add_argument("--eps", type=float, help="target per-feature loss (default: the run's eps)")


def phases(args) -> int:
    from ..data import setting_name
    from ..errors import UserError
    from ..phases import describe, detect_phases
    from ..storage import atomic_write_json, load_run

    run = load_run(args.run_dir)
    eps = run.config.eps if args.eps is None else args.eps
    if not 0 < eps < 1:
        raise UserError(f"--eps must be in (0, 1), got {eps}")
    from ..measures import has_features

    if not has_features(run.trajectory):
        raise UserError(f"run '{run.path}' has no per-feature quantities (data.tokens={run.config.data.tokens}): "
                        f"phases do not apply")
    if run.config.train.method == "flow":  # boundaries from the solver's events, at this eps
        from ..engines import build_engine
        from ..flow import run_flow

        result = run_flow(build_engine(run.config), run.config, eps)[1]
    else:
        result = detect_phases(run.trajectory, run.probs, eps, setting_name(run.config.data))
    atomic_write_json(run.path / "phases.json", result)
    print(describe(result))
    print(f"wrote {run.path / 'phases.json'}")
    return 0


def configure_reproduce(p):
    p.add_argument("--out", required=True, help="folder for the report (report.md, report.html, claims.json)")
    p.add_argument("--quick", action="store_true", help="smaller settings: the whole pipeline in seconds")
    p.add_argument("--overwrite", action="store_true", help="replace the report files in an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--format", dest="formats", nargs="+", default=["png"], metavar="FMT",
                   help="figure formats: png, pdf, svg (report.html always embeds PNG)")


def reproduce(args) -> int:
    from ..reproduce import FULL, QUICK
    from ..reproduce import reproduce as run_reproduce

    started = time.time()
    run_reproduce(args.out, QUICK if args.quick else FULL, overwrite=args.overwrite, progress=not args.quiet,
                  formats=args.formats)
    out = Path(args.out)
    claims = json.loads((out / "claims.json").read_text())
    for c in claims:
        print(f"{'PASS' if c['passed'] else 'FAIL'}  {c['claim']}")
        for k in c.get("controls", []):
            print(f"        control {'PASS' if k['passed'] else 'FAIL'}: {k['setting']}")
    print(f"{sum(c['passed'] for c in claims)}/{len(claims)} claims pass; report: {out / 'report.html'} "
          f"({time.time() - started:.0f} s)")
    return 0
