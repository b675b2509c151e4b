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

from .config import RunConfig, with_overrides
from .engines import build_engine, engine_spec
from .errors import RunDirError
from .fsio import clip
from .storage import check_run_dir, load_config_file, load_params


def eval_config(cfg: RunConfig) -> RunConfig:
    """The run's config with its ``eval:`` block's changes."""
    return with_overrides(cfg, dict(cfg.eval))


def eval_watch(cfg: RunConfig):
    """The trainer's :class:`~icl_dynamics.trainer.Watch` for the ``eval:`` block (None without one): the
    run's engine built on the eval distribution, in its general form (any parameters), observed on the run's
    parameters at every logged row."""
    from .trainer import Watch

    if not cfg.eval:
        return None
    return Watch.of(engine_spec(cfg.train.engine).general(build_engine(eval_config(cfg))))


def run_report(cfg: RunConfig, engine, result) -> dict[str, Any]:
    """summary.json's ``engine`` entry of a finished run: the engine's own report (EngineSpec.report) and,
    with an ``eval:`` block, its changes and final values."""
    out = dict(engine_spec(engine.name).report(engine, result.params)) if result.params is not None else {}
    if result.watched is not None:
        ev = result.watched
        out["eval"] = {"changes": dict(cfg.eval), "final_loss": float(ev.loss[-1]),
                       "final_feature_loss": [float(x) for x in ev.feature_loss[-1]]}
    return out


def _shapes(tree) -> str:
    """'Q (4, 4)' or 'W_KQ (1, 5, 5), W_PV (1, 5, 5)': an engine's parameters (an array or a dict of them)."""
    if isinstance(tree, dict):
        return ", ".join(f"{k} {tuple(np.shape(v))}" for k, v in sorted(tree.items()))
    return f"Q {tuple(np.shape(tree))}"


def fit_params(params, template):
    """``params`` in the structure of ``template`` (an engine's init), or None where they do not fit: as they
    are, or the paper's Q between its two forms, (d, d) in the population and tokens engines and
    {"Q": (1, d, d)} in the transformer engine with one head and params=q_only."""
    same = jax.tree.structure(params) == jax.tree.structure(template) and all(
        np.shape(a) == np.shape(b) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(template)))
    if same:
        return params
    if isinstance(template, dict) and set(template) == {"Q"} and np.shape(template["Q"]) == (1, *np.shape(params)):
        return {"Q": np.asarray(params)[None]}
    if isinstance(params, dict) and set(params) == {"Q"} and np.shape(params["Q"]) == (1, *np.shape(template)):
        return np.asarray(params["Q"])[0]
    return None


def evaluate_run(run_dir: str | Path, overrides: dict[str, Any]) -> dict[str, Any]:
    """{"config_changes", "loss", "feature_loss", "attention"} for the run's final parameters under the run's
    config with ``overrides`` (dotted keys). One line (RunDirError) when the parameters are missing or do not
    fit the new config (another K, d, number of heads or parameterization)."""
    run_dir = check_run_dir(Path(run_dir))
    cfg = load_config_file(run_dir)
    new = with_overrides(cfg, overrides)
    engine = engine_spec(new.train.engine).general(build_engine(new))  # any parameters, no symmetry shortcut
    own = engine.init if new == cfg else build_engine(cfg).init
    params = fit_params(load_params(run_dir, own), engine.init)
    if params is None:
        m = new.model
        raise RunDirError(f"the parameters in '{clip(run_dir)}' ({_shapes(own)}) do not match the evaluation "
                          f"config, whose model takes {_shapes(engine.init)} (train.engine={new.train.engine}, "
                          f"model.params={m.params}, model.heads={m.heads}, data.dim={new.data.dim})")
    with jax.enable_x64(True):
        m = jax.device_get(jax.jit(engine.observe, static_argnums=0)(engine.static, engine.consts, params))
    out: dict[str, Any] = {"config_changes": {k: v for k, v in overrides.items()}, "loss": float(m.loss)}
    fl = np.asarray(m.feature_loss)
    if np.all(np.isfinite(fl)):  # engines without per-feature quantities report NaN there
        out["feature_loss"] = [float(x) for x in fl]
        out["attention"] = [[float(x) for x in row] for row in np.asarray(m.attention)]
    return out
