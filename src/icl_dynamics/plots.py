"""Figures for one run: per-feature loss, own-feature attention, scores A/B, attention heatmaps.

Every figure is drawn in the package style (:mod:`style`). Steps go on a log axis of step + 1, labelled in
steps, so step 0 and the first steps are visible without the kink of a symlog axis. A group of curves of
one colour (the minor features) is one line with breaks, so that each line has one legend entry.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import FixedLocator, NullFormatter  # noqa: E402

from . import style  # noqa: E402
from .config import flatten  # noqa: E402
from .data import setting_of  # noqa: E402
from .errors import UserError  # noqa: E402
from .storage import Run  # noqa: E402
from .trajectory import Trajectory  # noqa: E402

FORMATS, check_formats, save, save_formats = style.FORMATS, style.check_formats, style.save, style.save_formats
# names that are files, not folders: 'plot --out fig.png' is refused rather than made a folder
FILE_SUFFIXES = {".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps", ".tif", ".tiff", ".gif", ".webp",
                 ".html", ".json", ".txt", ".csv", ".npz", ".yaml", ".yml"}
DOMINANT, MINOR, BALANCED = style.DOMINANT, style.MINOR, style.BALANCED


def check_out_dir(out: str | Path) -> Path:
    """A folder for several figures: refuse an existing file and a new name that looks like a file."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out '{out}' exists and is not a directory")
    if not out.exists() and out.suffix.lower() in FILE_SUFFIXES:
        raise UserError(f"--out '{out}' names a file, not a directory: the figures go into a folder "
                        f"(choose the file types with --format)")
    return out


def feature_groups(probs: np.ndarray) -> tuple[list[int], list[int]]:
    """(dominant features, the others), as phase detection decides them (phases.dominant_feature)."""
    from .phases import dominant_feature

    K = len(probs)
    dom = dominant_feature(probs, setting_of(probs))
    return ([], list(range(K))) if dom is None else ([dom], [k for k in range(K) if k != dom])


def step_axis(ax, last_step: float) -> None:
    """Log axis of step + 1 (plot x = step + 1), ticks labelled with the step itself."""
    ax.set_xscale("log")
    top = float(last_step) + 1
    decades = [0] + [10**i for i in range(int(np.log10(max(top, 10))) + 1)]
    major = [d + 1 for d in decades if d + 1 <= top * 1.001]
    ax.xaxis.set_major_locator(FixedLocator(major))
    ax.set_xticklabels([f"{d:d}" for d in decades[:len(major)]])
    minor = [m * 10**i + 1 for i in range(int(np.log10(max(top, 10))) + 1) for m in range(2, 10)]
    ax.xaxis.set_minor_locator(FixedLocator([m for m in minor if m <= top]))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlim(1, top * 1.02)
    ax.set_xlabel("GD step $t$ (log scale of $t+1$)")


def x_of(steps) -> np.ndarray:
    """Plot coordinate of steps on :func:`step_axis`."""
    return np.asarray(steps, np.float64) + 1


def group_line(ax, x: np.ndarray, Y: np.ndarray, **kw):
    """Curves Y (T, G) against x (T,) as one line (NaN breaks between curves): one legend entry."""
    Y = np.atleast_2d(np.asarray(Y, np.float64).T).T
    xs = np.concatenate([np.append(x, np.nan) for _ in range(Y.shape[1])])
    ys = np.concatenate([np.append(Y[:, g], np.nan) for g in range(Y.shape[1])])
    return ax.plot(xs, ys, **kw)[0]


def shade_phases(ax, bounds: list[float | None]) -> list[Patch]:
    """Shade consecutive phases (ends in steps, None: not reached); returns one legend patch per phase drawn
    (a phase of zero length has neither)."""
    start, patches = 0.0, []
    for j, end in enumerate(bounds):
        if end is None:
            break
        if end > start:
            ax.axvspan(start + 1, end + 1, color=style.PHASE_COLORS[j], alpha=0.12, lw=0)
            patches.append(Patch(color=style.PHASE_COLORS[j], alpha=0.25, label=f"Phase {style.PHASE_NAMES[j]}"))
        start = end
    return patches


def run_bounds(run: Run, k: int | None = None) -> list[float | None]:
    """Phase ends to shade: feature k's (default: the first minor feature), or for balanced data the
    median over features."""
    from .data import setting_name
    from .phases import detect_phases

    ph = detect_phases(run.trajectory, run.probs, run.config.eps, setting_name(run.config.data))
    feats = ph["features"]
    if all(f["group"] == "balanced" for f in feats):
        ends = [[f["phases"][j]["end"] for f in feats] for j in range(2)]
        return [None if any(e is None for e in es) else float(np.median(es)) for es in ends]
    minor = [f for f in feats if f["group"] == "minor"]
    f = feats[k] if k is not None else (minor[0] if minor else feats[0])
    return [p["end"] for p in f["phases"]]


def eval_caption(run: Run, width: int = 52) -> str:
    """The eval: block's changes with the trained values ('eval: prompt_length = 64 (trained: 16)'), wrapped:
    the title of the figure whose legend names only 'the eval: data'."""
    trained = flatten(run.config.to_dict())
    return textwrap.fill("eval: " + ", ".join(f"{k.split('.')[-1]} = {v} (trained: {trained.get(k)})"
                                              for k, v in run.config.eval.items()), width)


def plot_feature_loss(ax, run: Run, eps: float, legend: bool = True) -> None:
    """Per-feature losses, the loss, eps, and the eval: block's loss where the run has one (its changes in the
    axes title). ``legend`` False: the caller places the legend (plot_run: below the axes)."""
    t = run.trajectory
    dom, rest = feature_groups(run.probs)
    x = x_of(t.steps)
    if rest:
        group_line(ax, x, t.feature_loss[:, rest], color=MINOR if dom else BALANCED, lw=0.8, alpha=0.7,
                   label=(f"minor features ({len(rest)})" if dom else f"features ({len(rest)})"))
    for k in dom:
        ax.plot(x, t.feature_loss[:, k], color=DOMINANT, lw=1.6, label=f"dominant feature {k + 1}")
    ax.plot(x, t.loss, color="k", lw=1.0, ls="--", label="loss $L$")
    from .storage import load_eval_trajectory

    ev = load_eval_trajectory(run.path, len(run.probs))
    if ev is not None:  # the eval: block's distribution, beside the training one; its changes in the title
        ax.plot(x_of(ev.steps), ev.loss, color="tab:purple", lw=1.2, ls="-.", label="loss $L$ on the eval: data")
        ax.set_title(eval_caption(run), fontsize=8)
    ax.axhline(eps, color=style.THEORY, ls=":", lw=1.0, label=rf"$\epsilon$ = {eps:g}")
    ax.set_yscale("log")
    ax.set_ylabel(r"feature loss $L_k$")
    step_axis(ax, t.steps[-1])
    if legend:
        ax.legend(loc="lower left")


def plot_own_attention(ax, run: Run) -> None:
    t = run.trajectory
    dom, rest = feature_groups(run.probs)
    K = t.attention.shape[1]
    own = t.attention[:, np.arange(K), np.arange(K)]
    x = x_of(t.steps)
    if rest:
        group_line(ax, x, own[:, rest], color=MINOR if dom else BALANCED, lw=0.8, alpha=0.7,
                   label=(f"minor features ({len(rest)})" if dom else f"features ({len(rest)})"))
    for k in dom:
        ax.plot(x, own[:, k], color=DOMINANT, lw=1.6, label=f"dominant feature {k + 1}")
    ax.axhline(0.5, color=style.THEORY, ls=":", lw=1.0, label="1/2")
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(r"own attention $\mathrm{attn}_{k,k}$")
    step_axis(ax, t.steps[-1])
    ax.legend(loc="upper left")


def plot_scores(ax, run: Run, k: int | None = None) -> int:
    """A_k, B_{k,1} and the mean of B_{k,n} (n not in {1, k}) for one query feature k (0-based)."""
    t = run.trajectory
    K = t.scores.shape[1]
    if k is None:
        k = 1 if K > 1 else 0
    x = x_of(t.steps)
    ax.plot(x, t.scores[:, k, k], color="tab:purple", lw=1.4, label=rf"$A_{{{k + 1}}}$ (own feature)")
    if K > 1 and k != 0:
        ax.plot(x, t.scores[:, k, 0], color=DOMINANT, lw=1.2, label=rf"$B_{{{k + 1},1}}$ (to feature 1)")
    others = [n for n in range(K) if n not in (0, k)]
    if others:
        ax.plot(x, t.scores[:, k, others].mean(-1), color="tab:orange", lw=1.2,
                label=rf"mean $B_{{{k + 1},n}}$, $n \notin \{{1, {k + 1}\}}$")
    ax.axhline(0, color=style.THEORY, lw=0.6, label="0")
    ax.set_ylabel(f"score (query feature {k + 1})")
    step_axis(ax, t.steps[-1])
    ax.legend(loc="upper left")
    return k


def attention_at(traj: Trajectory, step: float) -> np.ndarray:
    """attention (K, K) at ``step``, linear between the two logged rows around it (exact on a logged row)."""
    s = traj.steps.astype(np.float64)
    step = float(np.clip(step, s[0], s[-1]))
    i = int(np.clip(np.searchsorted(s, step, side="right") - 1, 0, len(s) - 1))
    if i == len(s) - 1 or s[i] == step:
        return traj.attention[i]
    w = (step - s[i]) / (s[i + 1] - s[i])
    return (1 - w) * traj.attention[i] + w * traj.attention[i + 1]


def feature_ticks(ax, K: int) -> None:
    """1-based feature labels on both axes of a K x K heatmap (every feature up to K = 8)."""
    ticks = np.arange(K) if K <= 8 else np.unique(np.r_[0, np.arange(3, K, 4), K - 1])
    ax.set_xticks(ticks, [str(i + 1) for i in ticks])
    ax.set_yticks(ticks, [str(i + 1) for i in ticks])


def plot_heatmaps(fig, traj: Trajectory, panels: list[tuple[str, float]], ncols: int | None = None):
    """One attention heatmap per (title, step), at exactly that step (interpolated between logged rows);
    a shared colour bar. Returns the axes."""
    n = len(panels)
    ncols = ncols or n
    nrows = -(-n // ncols)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    K = traj.attention.shape[1]
    im, used = None, []
    for i, ax in enumerate(axes.ravel()):
        if i >= n:
            ax.remove()
            continue
        title, step = panels[i]
        im = ax.imshow(attention_at(traj, step), vmin=0, vmax=1, cmap="viridis", interpolation="nearest")
        ax.set_title(title, fontsize=8)
        feature_ticks(ax, K)
        ax.set_xlabel("key feature $n$")
        ax.set_ylabel("query feature $k$")
        used.append(ax)
    fig.colorbar(im, ax=used, shrink=0.9, label=r"$\mathrm{attn}_{k,n}$")
    return used


def default_heatmap_steps(traj: Trajectory, n: int = 4) -> list[int]:
    """Step 0, the end, and steps spaced in between on a square-root scale (transitions come early)."""
    steps = traj.steps
    targets = steps[-1] * np.linspace(0, 1, n) ** 2
    return sorted({int(round(s)) for s in targets})


def phase_legend(fig, patches: list[Patch], title: str) -> None:
    """One legend row (two in a one-column figure) for the shaded phases, above the panels."""
    if patches:
        narrow = fig.get_size_inches()[0] <= style.COLUMN + 1e-9
        fig.legend(handles=patches, loc="outside upper center", ncols=min(len(patches), 2 if narrow else 4),
                   title=title, title_fontsize=8)


RUN_FIGURES = ("feature_loss", "attention_own", "scores", "attention_heatmaps")


def plot_run(run: Run, out_dir: str | Path | None = None, heatmap_steps: list[int] | None = None,
             minor_feature: int | None = None, formats=("png",)) -> list[Path]:
    """Write the standard figures of a run in every format of ``formats``; returns their paths."""
    from .fsio import safe_dir
    from .fsio_owned import prepare_owned_dir

    formats = check_formats(formats)
    if out_dir is None:  # inside the run directory (ours): no symlink on the way is followed
        out = safe_dir(run.path, "figures")
    else:  # a folder of the user's choice: only one icl-dynamics made (the marker), and only our figures go
        out = prepare_owned_dir(check_out_dir(out_dir), "figures", True,
                                [f"{n}.{fmt}" for n in RUN_FIGURES for fmt in formats])
    bounds = run_bounds(run, minor_feature)
    dom, rest = feature_groups(run.probs)
    k = minor_feature if minor_feature is not None else (rest[0] if dom else None)
    title = f"phases of feature {k + 1}" if k is not None else "phases (median over features)"
    paths: list[Path] = []
    with style.context():
        for name, draw in (("feature_loss", lambda ax: plot_feature_loss(ax, run, run.config.eps, legend=False)),
                           ("attention_own", lambda ax: plot_own_attention(ax, run)),
                           ("scores", lambda ax: plot_scores(ax, run, minor_feature))):
            below = name == "feature_loss"  # its legend below the axes: no curve hidden, no label cut
            fig, ax = plt.subplots(figsize=style.figsize(style.COLUMN, height=3.4 if below else 2.6),
                                   layout="constrained")
            draw(ax)
            if below:
                fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncols=2)
            phase_legend(fig, shade_phases(ax, bounds), title)
            paths += save_formats(fig, out / name, formats)
        steps = heatmap_steps or default_heatmap_steps(run.trajectory)
        ncols = min(len(steps), 4)
        fig = plt.figure(figsize=style.figsize(style.FULL, rows=-(-len(steps) // ncols) * 0.85 + 0.15),
                         layout="constrained")
        plot_heatmaps(fig, run.trajectory, [(f"step {s:g}", s) for s in steps], ncols)
        paths += save_formats(fig, out / "attention_heatmaps", formats)
    return paths
