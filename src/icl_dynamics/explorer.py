"""Interactive explorer of one run: a single self-contained HTML file (plotly.js inline, no network).

The page has a header (title, setting, config), the per-feature loss curves with phase bands and the eps
line (div ``loss-plot``) and K x K heatmaps of attention and scores with a time slider (``heatmap-plot``).
Features are 0-based in the data and 1-based on the page. Arrays go into the page as base64 float64
(plotly's typed-array encoding), so the page holds the data exactly; only hover text is rounded (6
significant digits). :mod:`explorer_sweep` builds the sweep page on the same helpers.

The caller fills a :class:`RunData` (api.py and the ``explore`` command do it from a run directory).
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.io.json import to_json_plotly
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from .config import flatten

PHASE_COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52")
DOMINANT_COLOR = "#d62728"
HEATMAP_BUDGET = 6_000_000  # bytes of float64 heatmap frames before the slider is thinned
CONFIG = {"responsive": True, "displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}


@dataclass
class RunData:
    """One run. steps (T,) int; loss (T,); feature_loss (T, K); scores (T, K, K) with scores[t, k, n] =
    v_n^T Q v_k; attention (T, K, K), attention[t, k, n] the mass of a feature-k query on feature-n tokens;
    probs (K,); phases: the phase-detection dict (0-based features) or None; config: any (nested) dict."""

    title: str
    steps: np.ndarray
    loss: np.ndarray
    feature_loss: np.ndarray
    scores: np.ndarray
    attention: np.ndarray
    probs: np.ndarray
    phases: dict | None = None
    config: dict = field(default_factory=dict)

    def __post_init__(self):
        self.steps = np.asarray(self.steps).astype(np.int64)
        for name in ("loss", "feature_loss", "scores", "attention", "probs"):
            setattr(self, name, np.asarray(getattr(self, name), np.float64))
        T, K = self.feature_loss.shape if self.feature_loss.ndim == 2 else (-1, -1)
        want = {"steps": (T,), "loss": (T,), "scores": (T, K, K), "attention": (T, K, K), "probs": (K,)}
        for name, shape in want.items():
            if T < 1 or getattr(self, name).shape != shape:
                raise ValueError(f"RunData.{name} has shape {getattr(self, name).shape}; feature_loss "
                                 f"{self.feature_loss.shape} needs {name} of shape {shape}")

    @property
    def groups(self) -> list[str]:
        """Group of each feature ('dominant' | 'minor' | 'balanced'); 'feature' without phases."""
        by = {f["feature"]: f["group"] for f in (self.phases or {}).get("features", [])}
        return [by.get(k, "feature") for k in range(len(self.probs))]

    @property
    def eps(self) -> float | None:
        eps = (self.phases or {}).get("eps", self.config.get("eps"))
        return None if eps is None else float(eps)


# ------------------------------------------------------------------------------ loss curves

def feature_colors(groups: list[str]) -> list[str]:
    """One colour per feature: the dominant one red, the rest a qualitative palette (K <= 10) or viridis."""
    n = sum(g != "dominant" for g in groups)
    pal = [c for c in qualitative.D3 if c.lower() != DOMINANT_COLOR]  # that red is the dominant's
    cols = iter(pal if n <= len(pal) else sample_colorscale("Viridis", np.linspace(0, 0.9, n)))
    return [DOMINANT_COLOR if g == "dominant" else next(cols) for g in groups]


def loss_traces(run: RunData, total: bool = True) -> list[go.Scatter]:
    """K traces 'feature k' (1-based) of feature_loss against step + 1, then the total loss if ``total``."""
    groups = run.groups
    specs = [(f"feature {k + 1}", run.feature_loss[:, k], g, c, 3 if g == "dominant" else 1.6, None)
             for k, (g, c) in enumerate(zip(groups, feature_colors(groups)))]
    specs += [("total loss", run.loss, "total", "#444", 2, "dash")] if total else []
    return [go.Scatter(x=run.steps + 1, y=y, customdata=run.steps, name=name, mode="lines", legendgroup=g,
                       legendgrouptitle_text=g, line=dict(color=c, width=w, dash=dash),
                       hovertemplate=f"{name}<br>step %{{customdata}}<br>loss %{{y:.6~g}}<extra>{g}</extra>")
            for name, y, g, c, w, dash in specs]


def phase_boundaries(phases: dict | None) -> tuple[list[tuple[str, float | None]], float | None]:
    """([(phase name, median end step or None)], dominant end step or None). The median runs over the minor
    features (imbalanced) or over all balanced features."""
    feats = (phases or {}).get("features", [])
    group = "minor" if any(f["group"] == "minor" for f in feats) else "balanced"
    chosen = [f["phases"] for f in feats if f["group"] == group]
    names = [p["name"] for p in chosen[0]] if chosen else []
    # the median counts 'not reached' as +inf, so it is None when most features did not reach the event
    meds = [float(np.median([np.inf if ph[i]["end"] is None else ph[i]["end"] for ph in chosen]))
            for i in range(len(names))]
    ends = [(n, m if np.isfinite(m) else None) for n, m in zip(names, meds)]
    dom = [f["phases"][-1]["end"] for f in feats if f["group"] == "dominant"]
    return ends, (float(dom[0]) if dom and dom[0] is not None else None)


def phase_marks(run: RunData) -> tuple[list[dict], list[dict]]:
    """(shapes, annotations): shaded phase bands (x = step + 1), a dotted line where the dominant feature
    reaches eps, a dashed horizontal line at eps, and their labels in a strip above the plot area."""
    shapes, notes, start, last = [], [], 1.0, float(run.steps[-1] + 1)
    ends, dom = phase_boundaries(run.phases)

    def note(x: float, text: str, color: str) -> None:  # annotations on a log axis take log10(x)
        notes.append(dict(x=float(np.log10(x)), y=1, xref="x", yref="paper", yanchor="bottom", showarrow=False,
                          text=text, font=dict(size=12, color=color)))

    for i, (name, end) in enumerate(ends):
        stop = last if end is None else end + 1
        if stop > start:
            shapes.append(dict(type="rect", xref="x", yref="paper", x0=start, x1=stop, y0=0, y1=1, layer="below",
                               line_width=0, fillcolor=PHASE_COLORS[i % 4], opacity=0.13))
            note(float(np.sqrt(start * stop)), name + ("" if end is not None else " (not ended)"), "#333")
        if end is None:
            break
        start = stop
    if dom is not None:
        shapes.append(dict(type="line", xref="x", yref="paper", x0=dom + 1, x1=dom + 1, y0=0, y1=1,
                           line=dict(color=DOMINANT_COLOR, width=1.5, dash="dot")))
        note(dom + 1, "dominant ≤ eps", DOMINANT_COLOR)
    if run.eps is not None:
        shapes.append(dict(type="line", xref="paper", yref="y", x0=0, x1=1, y0=run.eps, y1=run.eps,
                           line=dict(color="#555", width=1.2, dash="dash"),
                           label=dict(text=f"eps = {run.eps:g}", textposition="start", yanchor="bottom",
                                      font=dict(size=11, color="#555"))))
    return shapes, notes


def loss_layout(title: str, marks: tuple[list[dict], list[dict]], height: int = 480) -> dict:
    """Layout of a per-feature loss plot: log-log axes, legend on the right, toggling single items;
    ``marks`` = (shapes, annotations) from :func:`phase_marks`."""
    return dict(title=dict(text=title, x=0.01), template="plotly_white", height=height, shapes=marks[0],
                annotations=marks[1], margin=dict(l=70, r=20, t=70, b=55), hovermode="closest",
                xaxis=dict(type="log", title="step + 1", showline=True, mirror=True, linecolor="#999"),
                yaxis=dict(type="log", title="feature loss", exponentformat="power", showline=True, mirror=True,
                           linecolor="#999"),
                legend=dict(groupclick="toggleitem", tracegroupgap=8, font=dict(size=12)))


def loss_figure(run: RunData) -> go.Figure:
    """The per-feature loss plot of a run (K feature traces, then the total loss)."""
    return go.Figure(loss_traces(run), loss_layout("Per-feature loss", phase_marks(run)))


# ------------------------------------------------------------------------------ heatmaps

def frame_rows(T: int, K: int, max_frames: int | None = None) -> np.ndarray:
    """Logged rows that get a slider step: all T, or evenly spaced (first and last kept) when the two K x K
    float64 matrices per frame would exceed ``HEATMAP_BUDGET`` bytes or ``max_frames`` is smaller."""
    cap = max_frames or max(20, HEATMAP_BUDGET // (2 * 8 * K * K))
    return np.arange(T) if T <= cap else np.unique(np.linspace(0, T - 1, cap).round().astype(int))


def heatmap_figure(run: RunData, max_frames: int | None = None) -> go.Figure:
    """Attention (left) and scores (right) heatmaps, z[k][n] = matrix[t, k, n] (query k on the y axis), one
    frame and slider step per row of :func:`frame_rows`; it opens at the last logged step."""
    T, K = run.feature_loss.shape
    rows = frame_rows(T, K, max_frames)
    names = [str(s) for s in run.steps] if len(set(run.steps.tolist())) == T else [f"row {i}" for i in range(T)]
    ticks = np.arange(1, K + 1)
    smax = float(np.max(np.abs(run.scores[rows]))) or 1.0
    fig = make_subplots(1, 2, horizontal_spacing=0.16,
                        subplot_titles=("attention[k, n]", "scores[k, n] = v<sub>n</sub><sup>T</sup> Q v<sub>k</sub>"))
    last = rows[-1]
    for col, (name, arr, ca) in enumerate((("attention", run.attention, "coloraxis"),
                                           ("score", run.scores, "coloraxis2")), start=1):
        gap = int(K <= 32)  # a 1 px gap between cells, while cells are big enough to spare it
        fig.add_trace(go.Heatmap(z=arr[last], x=ticks, y=ticks, coloraxis=ca, name=name, xgap=gap, ygap=gap,
                                 hovertemplate=f"query feature k = %{{y}}<br>key feature n = %{{x}}<br>"
                                               f"{name} %{{z:.6~g}}<extra></extra>"), 1, col)
        fig.update_xaxes(title_text="key feature n", tickmode="linear", tick0=1, dtick=max(1, K // 16),
                         showgrid=False, constrain="domain", row=1, col=col)
        fig.update_yaxes(title_text="query feature k", tickmode="linear", tick0=1, dtick=max(1, K // 16),
                         autorange="reversed", showgrid=False, scaleanchor=f"x{col if col > 1 else ''}",
                         constrain="domain", row=1, col=col)
    title = "Attention and scores at step {}"
    fig.frames = [go.Frame(name=names[t], traces=[0, 1], layout=dict(title_text=title.format(run.steps[t])),
                           data=[go.Heatmap(z=run.attention[t]), go.Heatmap(z=run.scores[t])]) for t in rows]
    anim = dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))
    # plotly.js itself shows only every n-th label when they would overlap
    steps = [dict(method="animate", args=[[names[t]], anim], label=str(run.steps[t])) for t in rows]
    play = dict(mode="immediate", fromcurrent=False, frame=dict(duration=60, redraw=True), transition=dict(duration=0))
    fig.update_layout(
        title=dict(text=title.format(run.steps[last]), x=0.01), template="plotly_white", height=600,
        margin=dict(l=70, r=30, t=80, b=40),
        coloraxis=dict(colorscale="Viridis", cmin=0, cmax=1,
                       colorbar=dict(x=0.43, len=0.75, y=0.6, title=dict(text="attention", side="right"))),
        coloraxis2=dict(colorscale="RdBu_r", cmin=-smax, cmax=smax,
                        colorbar=dict(x=1.0, len=0.75, y=0.6, title=dict(text="score", side="right"))),
        sliders=[dict(active=len(rows) - 1, steps=steps, x=0.09, len=0.91, y=0, yanchor="top", pad=dict(t=45),
                      currentvalue=dict(prefix="step ", font=dict(size=12)), ticklen=4, minorticklen=2,
                      font=dict(size=11))],
        updatemenus=[dict(type="buttons", direction="left", x=0, y=0, xanchor="left", yanchor="top",
                          pad=dict(t=50), showactive=False,
                          buttons=[dict(label="▶", method="animate", args=[None, play]),
                                   dict(label="❚❚", method="animate", args=[[None], anim])])])
    return fig


def run_figures(run: RunData, max_frames: int | None = None) -> list[go.Figure]:
    """[per-feature loss figure, attention/scores heatmap figure with its time slider]."""
    return [loss_figure(run), heatmap_figure(run, max_frames)]


# ------------------------------------------------------------------------------ page

def json_script(elem_id: str, obj: Any, plot: str | None = None) -> str:
    """``obj`` (numpy arrays as base64 typed arrays) in a JSON script tag; '<' escaped so no text ends it."""
    text = to_json_plotly(obj).replace("<", "\\u003c")
    attr = f' data-plot="{html.escape(plot)}"' if plot else ""
    return f'<script type="application/json" id="{html.escape(elem_id)}"{attr}>{text}</script>'


def plot_block(div_id: str, fig: go.Figure, caption: str = "") -> str:
    """A plot div and its figure JSON; the page's loader draws it."""
    cap = f'<p class="caption">{caption}</p>' if caption else ""
    spec = json_script(f"{div_id}-spec", fig.to_plotly_json(), div_id)
    return f'<div id="{div_id}" class="plot"></div>{cap}\n{spec}'


_CSS = """body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;max-width:1250px;
padding:12px 24px;color:#222}h1{font-size:1.45em;margin:.4em 0 .2em}h2{font-size:1.1em;margin:1.2em 0 .3em}
.meta{color:#444;margin:.2em 0}.caption{color:#555;font-size:.9em;margin:.1em 0 1em}
table{border-collapse:collapse;font-size:.85em}td,th{border:1px solid #ddd;padding:2px 8px;text-align:left}
details{margin:.4em 0}.plot{width:100%}.msg{color:#444;font-style:italic;margin:.4em 0}"""

# Draws every [data-plot] spec, then runs the page hooks, then marks the body ready (tests wait for it).
_LOADER = """(function(){var cfg=%s;window.explorerHooks=window.explorerHooks||[];
var ps=Array.prototype.map.call(document.querySelectorAll('script[data-plot]'),function(s){
var spec=JSON.parse(s.textContent);return Plotly.newPlot(s.dataset.plot,spec.data,spec.layout,cfg).then(
function(gd){return spec.frames?Plotly.addFrames(gd,spec.frames):gd;});});
Promise.all(ps).then(function(){window.explorerHooks.forEach(function(f){f(cfg);});
document.body.dataset.ready='1';});})();"""


def page_html(title: str, body: str, script: str = "") -> str:
    """A whole page: plotly.js inline once in the head, ``body``, the page ``script``, then the loader."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f'<style>{_CSS}</style>\n<script type="text/javascript">{get_plotlyjs()}</script>\n</head><body>\n'
            f'{body}\n<script>{script}</script>\n<script>{_LOADER % json.dumps(CONFIG)}</script>\n</body></html>\n')


def write_text_atomic(path: str | Path, text: str) -> Path:
    """The page, written atomically to a regular file (fsio)."""
    from .fsio import atomic_write_bytes

    atomic_write_bytes(path, text.encode("utf-8"), user_path=True)
    return Path(path)


def config_table(config: dict[str, Any], summary: str = "config") -> str:
    """A collapsible two-column table of a (flat or nested) config."""
    flat = flatten(config)
    rows = "".join(f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in flat.items())
    n = f"{len(flat)} value{'s' if len(flat) != 1 else ''}"
    return f"<details><summary>{summary} ({n})</summary><table>{rows}</table></details>" if rows else ""


def _header(run: RunData) -> str:
    T, K = run.feature_loss.shape
    flat = flatten(run.config)
    picks = [("setting", (run.phases or {}).get("setting")), ("K", K),
             *((k.split(".")[-1], flat[k]) for k in ("data.prompt_length", "data.dominant_prob", "train.lr",
                                                      "train.steps", "train.engine", "train.expectation", "seed")
               if k in flat), ("eps", run.eps), ("logged rows", T)]
    meta = " · ".join(f"<b>{html.escape(str(k))}</b> {html.escape(f'{v:g}' if isinstance(v, float) else str(v))}"
                      for k, v in picks if v is not None)
    ends, dom = phase_boundaries(run.phases)
    grp = "minor" if run.phases and "minor" in run.groups else "balanced"
    ph = ", ".join(f"{n} ends {'not reached' if e is None else f'{e:g}'}" for n, e in ends)
    phase = (f'<p class="meta">Phases (median over {grp} features): {ph}' +
             (f"; dominant reaches eps at step {dom:g}" if dom is not None else "") + "</p>") if ends else ""
    probs = ", ".join(f"{p:.4g}" for p in run.probs[:8]) + (", …" if K > 8 else "")
    return (f"<h1>{html.escape(run.title)}</h1><p class=\"meta\">{meta}</p>"
            f'<p class="meta">p = ({html.escape(probs)})</p>{phase}{config_table(run.config)}')


def write_run_explorer(run: RunData, path: str | Path, max_frames: int | None = None) -> Path:
    """Write the run page (header, ``loss-plot``, ``heatmap-plot``) to ``path``; returns the path."""
    loss, heat = run_figures(run, max_frames)
    body = (_header(run) + plot_block(
        "loss-plot", loss, "Shaded: phases (median boundaries); dotted red: the dominant feature reaches eps; "
        "dashed: eps. Click a legend entry to hide a feature, double-click to isolate it; drag to zoom.") +
        plot_block(
        "heatmap-plot", heat, "Row k: a query of feature k; column n: tokens of feature n. Drag the slider "
        "or press ▶ to step through the logged steps."))
    return write_text_atomic(path, page_html(run.title, body))
