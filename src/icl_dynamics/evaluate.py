"""Out-of-distribution evaluation: a run's trained parameters (params.npz) on another data distribution.

``icl-dynamics evaluate RUN_DIR --set data.probs=... --set data.prompt_length=... [--out FILE]`` builds the
engine of the run's config with those overrides, loads the final parameters into it, and observes once:
the overall ``loss`` and, where features exist, ``feature_loss`` (K,) and ``attention`` (K, K). Evaluating
on the training distribution gives the run's final metrics again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from .config import with_overrides
from .engines import build_engine, engine_spec
from .errors import RunDirError
from .fsio import clip
from .storage import check_run_dir, load_config_file, load_params


def evaluate_run(run_dir: str | Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """{"config_changes", "loss", "feature_loss", "attention"} for the run's final parameters under the run's
    config with ``overrides`` (dotted keys). One line (RunDirError) when the parameters are missing or do not
    fit the new config (another K or d)."""
    run_dir = check_run_dir(Path(run_dir))
    cfg = load_config_file(run_dir)
    new = with_overrides(cfg, overrides)
    engine = engine_spec(new.train.engine).general(build_engine(new))  # any parameters, no symmetry shortcut
    try:
        params = load_params(run_dir, engine.init)
    except RunDirError as e:
        if "params.npz" in str(e) and "has no" in str(e):
            raise
        raise RunDirError(f"the parameters in '{clip(run_dir)}' do not fit the evaluation config (K = "
                          f"{new.data.num_features}, d = {new.data.dim}): {e}") from None
    with jax.enable_x64(True):
        m = jax.device_get(jax.jit(engine.observe, static_argnums=0)(engine.static, engine.consts, params))
    out: dict[str, Any] = {"config_changes": {k: v for k, v in overrides.items()}, "loss": float(m.loss)}
    fl = np.asarray(m.feature_loss)
    if np.all(np.isfinite(fl)):  # engines without per-feature quantities report NaN there
        out["feature_loss"] = [float(x) for x in fl]
        out["attention"] = [[float(x) for x in row] for row in np.asarray(m.attention)]
    return out


def eval_trajectory(cfg, engine, traj):
    """The run's logged rows evaluated again on ``cfg.eval``'s distribution (the ``eval:`` block): the same
    steps, the eval distribution's loss, feature_loss and attention; scores as logged. None when the engine
    cannot recover its parameters from the log."""
    from .engines import engine_spec
    from .trajectory import Metrics, stack_rows

    if not cfg.eval:
        return None
    spec = engine_spec(cfg.train.engine)
    other = spec.general(build_engine(with_overrides(cfg, dict(cfg.eval))))
    with jax.enable_x64(True):
        def one(scores):
            return other.observe(other.static, other.consts, spec.from_scores(engine, scores))

        rows = jax.device_get(jax.jit(jax.vmap(one))(jax.numpy.asarray(traj.scores)))
    return stack_rows([traj.steps], [Metrics(*(np.asarray(x) for x in rows))])
