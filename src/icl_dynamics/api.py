"""The notebook API: ``icl.train(...)``, ``icl.load(path)``, ``icl.sweep(...)``, ``icl.load_sweep(path)``.

A :class:`Run` is a run directory, the same files the CLI writes, with views for a notebook: ``.plot(ax)``
(several runs overlay on one axes), ``.phases``, ``.to_pandas()``, ``.to_xarray()`` (dims step x query x
key, the config as attributes; :func:`from_xarray` writes it back as a run directory) and ``.explore()``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from .config import RunConfig, flatten, load_config, set_dotted, validate, with_overrides
from .storage import load_run, read_json


def _config(config: RunConfig | dict | str | Path | None, overrides: dict[str, Any]) -> RunConfig:
    """A config from a RunConfig, a nested or dotted dict, a YAML path or None (the defaults), with keyword
    overrides written with ``__`` for dots (``data__num_features=8``) or as dotted keys in a dict."""
    if config is None or isinstance(config, (str, Path)):
        cfg = load_config(config)
    elif isinstance(config, RunConfig):
        cfg = config
    else:  # nested sections and dotted keys may mix: {"data": {"num_features": 8}, "train.lr": 0.5}
        tree: dict[str, Any] = {}
        for key, value in config.items():
            if "." in key:
                set_dotted(tree, key, value)
            elif isinstance(value, dict):  # a section (or the eval block): merged with its dotted keys so far
                tree.setdefault(key, {}).update(value)
            else:
                tree[key] = value
        cfg = validate(tree)
    dotted = {k.replace("__", "."): v for k, v in overrides.items()}
    return with_overrides(cfg, dotted) if dotted else cfg


class Run:
    """A finished run directory. Attributes: ``path``, ``config`` (RunConfig), ``trajectory`` (steps, loss,
    feature_loss (T, K), scores (T, K, K), attention (T, K, K)), ``probs`` (K,), ``summary`` (dict)."""

    def __init__(self, path: str | Path):
        rec = load_run(path)
        self.path, self.config, self.trajectory, self.probs, self.summary = rec
        self._record = rec

    def __repr__(self) -> str:
        c = self.config
        return (f"Run('{self.path}', K={c.data.num_features}, N={c.data.prompt_length}, probs={c.data.probs!r}, "
                f"engine={c.train.engine}, steps={int(self.trajectory.steps[-1])}, status={self.summary.get('status')})")

    @property
    def phases(self) -> dict:
        """phases.json: per feature, its phases with start and end steps (spec section 6)."""
        return read_json(self.path / "phases.json")

    def to_pandas(self):
        """The tidy metrics table (metrics.parquet): one row per (logged step, feature)."""
        import pandas as pd

        return pd.read_parquet(self.path / "metrics.parquet")

    def to_xarray(self):
        """An xarray Dataset: loss (step), feature_loss (step, query), scores and attention (step, query,
        key), probs (key); attributes: the config (as JSON and as dotted keys) and the summary's status."""
        import xarray as xr

        t = self.trajectory
        K = len(self.probs)
        feats = np.arange(K)
        attrs = {"config": json.dumps(self.config.to_dict()), "status": str(self.summary.get("status")),
                 **{k: v for k, v in flatten(self.config.to_dict()).items() if isinstance(v, (int, float, str))
                    and not isinstance(v, bool)}}
        return xr.Dataset(
            {"loss": ("step", t.loss), "feature_loss": (("step", "query"), t.feature_loss),
             "scores": (("step", "query", "key"), t.scores), "attention": (("step", "query", "key"), t.attention),
             "probs": ("key", self.probs)},
            coords={"step": t.steps, "query": feats, "key": feats}, attrs=attrs)

    def plot(self, ax=None, features: list[int] | None = None, label: str | None = None, **kw):
        """Per-feature loss curves (log axes on step + 1) on ``ax`` (a new one if None); call it for several
        runs with one ``ax`` to overlay them. ``features`` are 0-based. Returns the axes."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        t = self.trajectory
        label = label or f"{self.config.data.probs}, K={self.config.data.num_features}"
        for k in (range(len(self.probs)) if features is None else features):
            ax.plot(t.steps + 1, t.feature_loss[:, k], label=f"{label}: feature {k + 1}", **kw)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("GD step + 1")
        ax.set_ylabel("feature loss")
        ax.axhline(self.config.eps, color="gray", ls=":", lw=1)
        return ax

    def explore(self, out: str | Path | None = None) -> Path:
        """The interactive page of this run (one self-contained HTML file); default RUN_DIR/explore.html."""
        from .explorer import write_run_explorer

        return write_run_explorer(run_data(self._record), out or self.path / "explore.html")

    def evaluate(self, overrides: dict[str, Any] | None = None, **kw) -> dict[str, Any]:
        """The trained parameters on another data distribution (``evaluate`` command): loss, feature_loss
        and attention."""
        from .evaluate import evaluate_run

        return evaluate_run(self.path, {**(overrides or {}), **{k.replace("__", "."): v for k, v in kw.items()}})


def run_data(rec):
    """An explorer.RunData from a loaded run directory."""
    from .explorer import RunData

    t = rec.trajectory
    phases = read_json(rec.path / "phases.json") if (rec.path / "phases.json").exists() else None
    c = rec.config
    title = f"{c.data.probs} features, K = {c.data.num_features}, {c.train.engine} engine ({rec.path.name})"
    return RunData(title, t.steps, t.loss, t.feature_loss, t.scores, t.attention, rec.probs, phases, c.to_dict())


def train(config: RunConfig | dict | str | Path | None = None, *, out: str | Path | None = None,
          overwrite: bool = False, progress: bool = False, **overrides: Any) -> Run:
    """Train and return the :class:`Run`. ``out`` defaults to ``runs/<config hash>``; if that folder already
    holds the finished run of this very config, it is loaded instead of trained again (re-running a notebook
    cell is instant). Example: ``icl.train(data__num_features=8, train__steps=500)``."""
    from .runner import execute
    from .storage import is_finished, load_config_file

    cfg = _config(config, overrides)
    path = Path(out) if out is not None else Path.cwd() / "runs" / cfg.hash()
    if not overwrite and path.is_dir() and is_finished(path) and load_config_file(path).hash() == cfg.hash():
        return Run(path)
    execute(cfg, path, overwrite=overwrite or (out is None and path.exists()), progress=progress)
    return Run(path)


def load(path: str | Path) -> Run:
    return Run(path)


def from_xarray(ds, out: str | Path) -> Run:
    """Write a Dataset made by :meth:`Run.to_xarray` back as a run directory (the round trip)."""
    from .fsio import DirLock
    from .storage import prepare_run_dir, write_config, write_run_dir
    from .trainer import TrainResult
    from .trajectory import Trajectory

    cfg = validate(json.loads(ds.attrs["config"]))
    traj = Trajectory(np.asarray(ds["step"].values, np.int64), ds["loss"].values, ds["feature_loss"].values,
                      ds["scores"].values, ds["attention"].values)
    with DirLock(out):
        path = prepare_run_dir(out, overwrite=False)
        write_config(path, cfg)
        write_run_dir(path, cfg, TrainResult(traj, None, ds.attrs.get("status", "completed"), None), 0.0)
    return Run(path)


class Sweep:
    """A sweep directory: ``.table`` (pandas, one row per run), ``.to_xarray()``, ``.plot(...)``,
    ``.run(config_hash)`` for a kept run, ``.explore(...)``."""

    def __init__(self, path: str | Path):
        from .sweeps import load_sweep as _load

        self.path = Path(path)
        self.table = _load(self.path)

    def __repr__(self) -> str:
        return f"Sweep('{self.path}', {len(self.table)} runs)"

    def to_xarray(self):
        """The table as an xarray Dataset indexed by run."""
        return self.table.set_index("run").to_xarray()

    def run(self, config_hash: str) -> Run:
        return Run(self.path / "runs" / config_hash)

    def plot(self, x: str, value: str, y: str | None = None, out: str | Path | None = None, **kw) -> Path:
        from .sweeps.figures import plot_sweep

        return plot_sweep(self.path, x, value, y, out, **kw)[0]

    def explore(self, x: str, value: str, y: str | None = None, out: str | Path | None = None) -> Path:
        from .commands.explore import sweep_page

        return sweep_page(self.path, x, y, value, out)


def sweep(spec, out: str | Path, **kw: Any) -> Sweep:
    """Run (or resume) a sweep spec (dict, SweepSpec or YAML path) into ``out``; returns the :class:`Sweep`."""
    from .sweeps import run_sweep

    run_sweep(spec, out, progress=kw.pop("progress", False), **kw)
    return Sweep(out)


def load_sweep(path: str | Path) -> Sweep:
    return Sweep(path)
