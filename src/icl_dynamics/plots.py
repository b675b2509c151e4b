"""Figures for one run: per-feature loss, own-feature attention, scores A/B, attention heatmaps."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .errors import UserError  # noqa: E402
from .data import setting_of  # noqa: E402
from .storage import Run  # noqa: E402
from .trajectory import Trajectory  # noqa: E402

DOMINANT, MINOR, BALANCED = "tab:red", "tab:blue", "tab:green"


def _groups(run: Run) -> tuple[list[int], list[int]]:
    """(dominant features, the others), as phase detection decides them (phases.dominant_feature)."""
    from .phases import dominant_feature

    K = len(run.probs)
    dom = dominant_feature(run.probs, setting_of(run.probs))
    return ([], list(range(K))) if dom is None else ([dom], [k for k in range(K) if k != dom])


def _xaxis(ax, steps):
    ax.set_xlabel("GD step")
    ax.set_xscale("symlog", linthresh=max(1.0, float(steps[-1]) / 1000))
    ax.set_xlim(0, float(steps[-1]) * 1.05)
    ax.grid(alpha=0.3)


def plot_feature_loss(ax, run: Run, eps: float) -> None:
    t = run.trajectory
    dom, rest = _groups(run)
    color = MINOR if dom else BALANCED
    for i, k in enumerate(rest):
        ax.plot(t.steps, t.feature_loss[:, k], color=color, lw=1, alpha=0.6,
                label=("minor features" if dom else "features") if i == 0 else None)
    for k in dom:
        ax.plot(t.steps, t.feature_loss[:, k], color=DOMINANT, lw=2.2, label="dominant feature 1")
    ax.plot(t.steps, t.loss, color="k", lw=1.2, ls="--", label="loss")
    ax.axhline(eps, color="gray", ls=":", label=f"eps = {eps:g}")
    ax.set_yscale("log")
    ax.set_ylabel("feature_loss[k]")
    ax.set_title("Per-feature loss")
    _xaxis(ax, t.steps)
    ax.legend(fontsize=8)


def plot_own_attention(ax, run: Run) -> None:
    t = run.trajectory
    dom, rest = _groups(run)
    K = t.attention.shape[1]
    own = t.attention[:, np.arange(K), np.arange(K)]
    for i, k in enumerate(rest):
        ax.plot(t.steps, own[:, k], color=MINOR if dom else BALANCED, lw=1, alpha=0.6,
                label=("minor" if dom else "features") if i == 0 else None)
    for k in dom:
        ax.plot(t.steps, own[:, k], color=DOMINANT, lw=2.2, label="dominant")
    ax.axhline(0.5, color="gray", ls=":")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("attention[k, k]")
    ax.set_title("Attention on the query's own feature")
    _xaxis(ax, t.steps)
    ax.legend(fontsize=8)


def plot_scores(ax, run: Run, k: int | None = None) -> int:
    """A_k, B_{k,1} and the mean of B_{k,n} (n not in {1, k}) for one query feature k (0-based)."""
    t = run.trajectory
    K = t.scores.shape[1]
    if k is None:
        k = 1 if K > 1 else 0
    ax.plot(t.steps, t.scores[:, k, k], color="tab:purple", lw=2, label=f"A_{k + 1} (own)")
    if K > 1 and k != 0:
        ax.plot(t.steps, t.scores[:, k, 0], color=DOMINANT, lw=1.5, label=f"B_{{{k + 1},1}} (to feature 1)")
    others = [n for n in range(K) if n not in (0, k)]
    if others:
        ax.plot(t.steps, t.scores[:, k, others].mean(-1), color="tab:orange", lw=1.5,
                label=f"mean B_{{{k + 1},n}}, n not in {{1,{k + 1}}}")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set_ylabel("score")
    ax.set_title(f"Scores of query feature {k + 1}")
    _xaxis(ax, t.steps)
    ax.legend(fontsize=8)
    return k


def default_heatmap_steps(traj: Trajectory, n: int = 4) -> list[int]:
    """Step 0, the end, and steps spaced in between on a square-root scale (transitions come early)."""
    steps = traj.steps
    targets = steps[-1] * np.linspace(0, 1, n) ** 2
    return sorted({int(steps[np.argmin(np.abs(steps - s))]) for s in targets})


def plot_heatmaps(fig, run: Run, steps: list[int]) -> None:
    t = run.trajectory
    axes = fig.subplots(1, len(steps), squeeze=False, sharey=True)[0]
    for j, (ax, s) in enumerate(zip(axes, steps)):
        i = int(np.argmin(np.abs(t.steps - s)))
        im = ax.imshow(t.attention[i], vmin=0, vmax=1, cmap="viridis")
        ax.set_title(f"step {int(t.steps[i])}", fontsize=9)
        ax.set_xlabel("key feature")
        if j == 0:
            ax.set_ylabel("query feature")
        K = t.attention.shape[1]
        ticks = np.arange(0, K, max(1, K // 4))
        ax.set_xticks(ticks, [str(x + 1) for x in ticks])
        ax.set_yticks(ticks, [str(x + 1) for x in ticks])
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="attention[k, n]")


def save(fig, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG atomically (creating the folder) and close it."""
    import io

    from .storage import atomic_write_bytes

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path


def plot_run(run: Run, out_dir: str | Path | None = None, heatmap_steps: list[int] | None = None,
             minor_feature: int | None = None) -> list[Path]:
    """Write the standard figures of a run (PNG) and return their paths."""
    out = Path(out_dir) if out_dir is not None else run.path / "figures"
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plot_feature_loss(ax, run, run.config.eps)
    paths.append(save(fig, out / "feature_loss.png"))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plot_own_attention(ax, run)
    paths.append(save(fig, out / "attention_own.png"))
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    plot_scores(ax, run, minor_feature)
    paths.append(save(fig, out / "scores.png"))
    steps = heatmap_steps or default_heatmap_steps(run.trajectory)
    fig = plt.figure(figsize=(3.2 * len(steps) + 1, 3.4))
    plot_heatmaps(fig, run, steps)
    paths.append(save(fig, out / "attention_heatmaps.png"))
    return paths
