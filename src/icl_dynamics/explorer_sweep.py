"""Interactive explorer of a sweep: the phase diagram (div ``sweep-plot``) and, on a click, the clicked
run's per-feature loss curves (div ``sweep-run-plot``), in one self-contained HTML file.

A cell (or, without ``y``, a point per x) averages ``value`` over every other varying column (typically the
seeds). A cell whose runs include a missing value (an event never reached) is left empty rather than
averaged over the runs that did reach it, which would bias it low; its hover says "not reached".
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from .explorer import (RunData, config_table, json_script, loss_layout, loss_traces, page_html,
                       phase_marks, plot_block, write_text_atomic)

HASH = "config_hash"
NOT_KEPT = "trajectory not kept (run the sweep with keep_trajectories: true)"


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _fmt(v: Any) -> str:
    if _is_num(v) and not float(v).is_integer():
        return f"{float(v):.6g}"
    return str(int(v)) if _is_num(v) and math.isfinite(float(v)) else str(v)


def _short(v: float) -> str:
    """A cell label: whole numbers for steps (528, 21120), 3 significant digits otherwise."""
    return f"{v:.0f}" if 100 <= abs(v) < 1e6 else f"{v:.3g}"


def _key(v: Any) -> tuple:
    """Sort key: numbers ascending, then everything else by text (None/NaN last)."""
    missing = v is None or (_is_num(v) and math.isnan(float(v)))
    return (2, "") if missing else (0, float(v), "") if _is_num(v) else (1, str(v))


def config_columns(df: pd.DataFrame, exclude: list[str]) -> list[str]:
    """Config columns (dotted names, 'seed', 'eps') other than ``exclude``."""
    return [c for c in df.columns if ("." in str(c) or c in ("seed", "eps")) and c not in exclude]


def varying_within(df: pd.DataFrame, axes: list[str], value: str) -> list[str]:
    """Config columns that take several values inside one point of ``axes`` (sweeps.figures.averaged_over)."""
    from .sweeps.figures import averaged_over

    return averaged_over(df, axes, value)


def _summary(values: pd.Series) -> str:
    """One column over a cell's runs: the value, a list of a few, or a range."""
    u = sorted(set(values.tolist()), key=_key)
    if len(u) > 3 and all(_is_num(v) for v in u):
        return f"{_fmt(u[0])}–{_fmt(u[-1])} ({len(u)} values)"
    return ", ".join(_fmt(v) for v in u[:6]) + (", …" if len(u) > 6 else "")


def sweep_cells(df: pd.DataFrame, x: str, y: str | None, value: str) -> pd.DataFrame:
    """One row per (x[, y]) point in sorted order: the axis values, ``mean`` (NaN when any run's value is
    missing), ``n_runs``, ``n_missing``, ``rows`` (the df index labels of its runs)."""
    vals = pd.to_numeric(df[value], errors="coerce")
    axes = [x] if y is None else [x, y]
    labels = {a: df[a].map(lambda v: _fmt(v)) for a in axes}  # str keys: None/NaN become a group too
    order = {a: {_fmt(v): i for i, v in enumerate(sorted(set(df[a].tolist()), key=_key))} for a in axes}
    out = []
    by = [labels[a] for a in axes]
    for key, idx in df.groupby(by if len(by) > 1 else by[0], sort=False).groups.items():
        key = key if isinstance(key, tuple) else (key,)
        v = vals.loc[idx]
        first = df.loc[idx[0]]
        out.append({**{a: first[a] for a in axes}, "mean": float(v.mean()) if v.notna().all() else np.nan,
                    "n_runs": len(idx), "n_missing": int(v.isna().sum()), "rows": list(idx),
                    "_order": tuple(order[a][k] for a, k in zip(axes, key))})
    return pd.DataFrame(out).sort_values("_order").drop(columns="_order").reset_index(drop=True)


def _hover(df: pd.DataFrame, cell: pd.Series, axes: list[str], value: str, varying: list[str]) -> str:
    """A point's hover text (plotly's pseudo-HTML, so values are escaped): axes, mean, other columns."""
    runs = df.loc[cell["rows"]]
    lines = [html.escape(f"{a} = {_fmt(cell[a])}") for a in axes]
    if math.isnan(cell["mean"]):
        lines.append(f"<b>{value}: not reached</b> ({cell['n_missing']} of {cell['n_runs']} runs)")
    else:
        lines.append(f"<b>{value} = {cell['mean']:.6g}</b> (mean of {cell['n_runs']} runs)")
    lines += [html.escape(f"{c}: {_summary(runs[c])}") for c in varying]
    return "<br>".join(lines)


def _run_entries(df: pd.DataFrame, rows: list, varying: list[str], where: str) -> dict[str, Any]:
    """A point for the click handler: ``where`` (its axis values) and its runs (config hash, and a label
    from the varying columns)."""
    out = []
    for r in rows:
        h = str(df.at[r, HASH]) if HASH in df.columns else str(r)
        label = ", ".join(f"{c} {_fmt(df.at[r, c])}" for c in varying) or h[:10]
        out.append({"hash": h, "label": label})
    return {"where": where, "runs": out}


def sweep_figure(df: pd.DataFrame, x: str, y: str | None, value: str) -> tuple[go.Figure, list[dict]]:
    """(figure, entries): the heatmap of cell means over (x, y), or with ``y`` None a log-log plot of every
    run and the mean per x. customdata of a point is [mean or None, i, hover text]; ``entries[i]`` =
    {"where": axis values, "runs": [{"hash", "label"}]} names the runs behind it."""
    if df.empty:
        raise ValueError("the sweep table has no rows")
    for c in (x, value) + ((y,) if y else ()):
        if c not in df.columns:
            raise ValueError(f"no column '{c}' in the sweep table")
    if not df[value].map(lambda v: v is None or _is_num(v)).all():
        raise ValueError(f"column '{value}' is not numeric")
    axes = [x] if y is None else [x, y]
    varying = varying_within(df, axes, value)
    cells = sweep_cells(df, x, y, value)
    entries = [_run_entries(df, c["rows"], varying, ", ".join(f"{a} = {_fmt(c[a])}" for a in axes))
               for _, c in cells.iterrows()]
    hover = [_hover(df, c, axes, value, varying) for _, c in cells.iterrows()]
    if y is not None:
        return _heatmap(cells, hover, x, y, value), entries
    return _scatter(df, cells, hover, x, value, varying, entries), entries


def _heatmap(cells: pd.DataFrame, hover: list[str], x: str, y: str, value: str) -> go.Figure:
    xs = list(dict.fromkeys(_fmt(v) for v in cells[x]))
    ys = list(dict.fromkeys(_fmt(v) for v in sorted(cells[y].tolist(), key=_key)))
    means = cells["mean"].to_numpy(np.float64)
    finite = means[np.isfinite(means)]
    log = finite.size > 0 and finite.min() > 0 and finite.max() / finite.min() > 10  # decades: colour by log10
    z: list[list[Any]] = [[None] * len(xs) for _ in ys]
    custom: list[list[Any]] = [[[None, None, f"{x} = {a}<br>{y} = {b}<br>no runs"] for a in xs] for b in ys]
    text = [[""] * len(xs) for _ in ys]
    for i, c in cells.iterrows():
        r, col = ys.index(_fmt(c[y])), xs.index(_fmt(c[x]))
        m = float(c["mean"])
        ok = math.isfinite(m)
        z[r][col] = (math.log10(m) if log else m) if ok else None
        custom[r][col] = [m if ok else None, int(i), hover[i]]
        text[r][col] = _short(m) if ok else "not reached"
    cb = dict(title=dict(text=value, side="right"))
    if log:
        lo, hi = math.floor(math.log10(finite.min())), math.ceil(math.log10(finite.max()))
        ticks = [d + math.log10(m) for d in range(lo, hi + 1) for m in (1, 2, 5)]
        cb.update(tickvals=ticks, ticktext=[_short(10 ** t) for t in ticks])
    fig = go.Figure(go.Heatmap(z=z, x=xs, y=ys, customdata=custom, text=text, colorscale="Viridis", colorbar=cb,
                               hovertemplate="%{customdata[2]}<extra></extra>", xgap=2, ygap=2, hoverongaps=True,
                               texttemplate="%{text}" if len(xs) * len(ys) <= 400 else None,
                               textfont=dict(size=11)))
    fig.update_layout(template="plotly_white", height=max(380, 150 + 42 * len(ys)), plot_bgcolor="#e6e6e6",
                      title=dict(text=f"{value}" + (" (colour: log scale)" if log else ""), x=0.01),
                      margin=dict(l=90, r=20, t=50, b=60),
                      xaxis=dict(title=x, type="category", showgrid=False),
                      yaxis=dict(title=y, type="category", showgrid=False))
    return fig


def _scatter(df: pd.DataFrame, cells: pd.DataFrame, hover: list[str], x: str, value: str, varying: list[str],
             entries: list[dict]) -> go.Figure:
    xs, vals = df[x], pd.to_numeric(df[value], errors="coerce")
    numeric = bool(xs.map(_is_num).all())  # a log x axis; otherwise categories
    ok = vals.notna() & (vals > 0) & (xs.map(lambda v: float(v) > 0) if numeric else True)
    per_run, px_, py_, custom = [], [], [], []
    for r in df.index[ok]:
        entries.append(_run_entries(df, [r], varying, f"{x} = {_fmt(xs[r])}"))
        lines = [html.escape(f"{x} = {_fmt(xs[r])}"), f"<b>{value} = {vals[r]:.6g}</b>"] + \
            [html.escape(f"{c}: {_fmt(df.at[r, c])}") for c in varying] + \
            ([html.escape(f"{HASH}: {df.at[r, HASH]}")] if HASH in df else [])
        px_.append(xs[r])
        py_.append(float(vals[r]))
        custom.append([float(vals[r]), len(entries) - 1, "<br>".join(lines)])
    per_run.append(go.Scatter(x=px_, y=py_, customdata=custom, mode="markers", name="runs",
                              marker=dict(size=7, color="#1f77b4", opacity=0.45),
                              hovertemplate="%{customdata[2]}<extra></extra>"))
    good = cells[np.isfinite(cells["mean"]) & (cells["mean"] > 0)]
    per_run.append(go.Scatter(
        x=good[x].tolist(), y=good["mean"].tolist(), mode="lines+markers", name="mean per x",
        customdata=[[float(c["mean"]), int(i), hover[i]] for i, c in good.iterrows()],
        marker=dict(size=10, color="#d62728"), line=dict(color="#d62728", width=1.5),
        hovertemplate="%{customdata[2]}<extra></extra>"))
    left = int((~ok).sum())
    note = f" ({left} run{'s' if left != 1 else ''} not reached or ≤ 0 left out; no mean where one is)" \
        if left else ""
    ux = sorted({float(v) for v in px_}) if numeric else []
    ticks = dict(tickmode="array", tickvals=ux, ticktext=[_fmt(v) for v in ux]) if 0 < len(ux) <= 12 else {}
    fig = go.Figure(per_run)
    fig.update_layout(template="plotly_white", height=480, hovermode="closest",
                      title=dict(text=f"{value} vs {x}{note}", x=0.01), margin=dict(l=80, r=20, t=50, b=60),
                      xaxis=dict(title=x, type="log" if numeric else "category", **ticks),
                      yaxis=dict(title=value, type="log", exponentformat="power", dtick="D2"))
    return fig


def _run_payload(run: RunData) -> dict:
    """What the page needs to draw a run: K feature traces (exact float64), its phase marks, a title."""
    shapes, notes = phase_marks(run)
    # through plotly's validation: it expands shorthands such as line_width the browser would not know
    fig = go.Figure(loss_traces(run, total=False), go.Layout(shapes=shapes, annotations=notes)).to_plotly_json()
    return {"data": fig["data"], "shapes": fig["layout"]["shapes"], "annotations": fig["layout"]["annotations"],
            "title": run.title}


# On a click: list the point's runs in the select, draw the first kept one or say it was not kept.
_SCRIPT = """window.explorerHooks=(window.explorerHooks||[]).concat([function(cfg){
var E=JSON.parse(document.getElementById('sweep-entries').textContent),
R=JSON.parse(document.getElementById('sweep-runs').textContent),
base=JSON.parse(document.getElementById('sweep-run-layout').textContent),
blank=JSON.parse(document.getElementById('sweep-run-plot-spec').textContent).layout,
gd=document.getElementById('sweep-plot'),sel=document.getElementById('sweep-run-select'),
msg=document.getElementById('sweep-run-message'),pick=document.getElementById('sweep-run-pick');
var where='';function draw(h){var r=R[h];var lay=Object.assign({},base,{shapes:r.shapes,
annotations:r.annotations,title:{text:r.title,x:0.01}});msg.textContent=where+': run '+h;
return Plotly.react('sweep-run-plot',r.data,lay,cfg);}
function show(i){var e=E[i]||{where:'',runs:[]},es=e.runs;where=e.where;sel.innerHTML='';
var kept=es.filter(function(e){return R[e.hash];});
kept.forEach(function(e){var o=document.createElement('option');o.value=e.hash;o.textContent=e.label;
sel.appendChild(o);});pick.style.display=kept.length>1?'':'none';
if(!kept.length){msg.textContent=where+': '+(es.length?'%s':'no runs here');
return Plotly.react('sweep-run-plot',[],blank,cfg);}return draw(kept[0].hash);}
sel.addEventListener('change',function(){draw(sel.value);});
gd.on('plotly_click',function(ev){var p=ev.points[0];
if(p&&p.customdata&&p.customdata[1]!==null)show(p.customdata[1]);});
window.explorerShow=show;}]);""" % NOT_KEPT


def write_sweep_explorer(df: pd.DataFrame, path: str | Path, x: str, y: str | None, value: str,
                         runs: dict[str, RunData] | None = None) -> Path:
    """Write the sweep page to ``path``: ``sweep-plot`` (heatmap of ``value`` over (x, y), or with ``y``
    None a log-log plot against x) and ``sweep-run-plot``, filled on a click from ``runs`` (config_hash ->
    RunData; only runs of ``df`` are embedded). Returns the path."""
    fig, entries = sweep_figure(df, x, y, value)
    runs = runs or {}
    hashes = set(df[HASH].astype(str)) if HASH in df.columns else set()
    kept = {h: _run_payload(r) for h, r in runs.items() if str(h) in hashes}
    axes = [x] if y is None else [x, y]
    allcfg = config_columns(df, axes + [value])
    varying = varying_within(df, axes, value)
    const = {c: df[c].iloc[0] for c in allcfg if df[c].astype(str).nunique() == 1}
    title = f"Sweep: {value} over {' × '.join(axes)}"
    per = df.groupby([df[a].astype(str) for a in axes]).size()
    span = f"{per.min()}" if per.min() == per.max() else f"{per.min()}–{per.max()}"
    meta = (f"{len(df)} runs; {'mean over ' + ', '.join(varying) if varying else 'one run per point'} "
            f"({span} runs per point). Trajectories kept for {len(kept)} of {len(df)} runs.")
    how = ("Grey cells: not reached by at least one of their runs (or no runs). " if y else "") + \
        "Click a " + ("cell" if y else "point") + " to see its run's per-feature loss curves below."
    base = go.Layout(loss_layout("", ([], []), 440)).to_plotly_json()  # validated, as in _run_payload
    hint = dict(text=f"click a {'cell' if y else 'point'} above to see its run here", showarrow=False,
                xref="paper", yref="paper", x=0.5, y=0.5, font=dict(size=15, color="#777"))
    empty = go.Figure(layout={**base, "xaxis": {"visible": False}, "yaxis": {"visible": False},
                              "annotations": [hint]})
    body = (f"<h1>{html.escape(title)}</h1><p class=\"meta\">{html.escape(meta)}</p>"
            f"{config_table(const, 'fixed config')}"
            + plot_block("sweep-plot", fig, html.escape(how)) +
            '<p id="sweep-run-message" class="msg">No run selected.</p>'
            '<label id="sweep-run-pick" style="display:none">run of this point: '
            '<select id="sweep-run-select"></select></label>'
            + plot_block("sweep-run-plot", empty) + json_script("sweep-entries", entries)
            + json_script("sweep-run-layout", base)
            + json_script("sweep-runs", kept))
    return write_text_atomic(path, page_html(title, body, _SCRIPT))
