"""The HTML explorers without a browser: the pages are offline, embed plotly.js once, and hold the input data
exactly (parsed back from the page's figure JSON); the sweep phase diagram holds the pandas groupby means."""

from __future__ import annotations

import base64
import json
import math
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from plotly.offline import get_plotlyjs

from icl_dynamics.explorer import RunData, frame_rows, phase_boundaries, run_figures, write_run_explorer
from icl_dynamics.explorer_sweep import NOT_KEPT, sweep_cells, sweep_figure, write_sweep_explorer

X, Y, V = "data.num_features", "train.lr", "time_to_eps_minor"


# ------------------------------------------------------------------------------ synthetic data

def synthetic_run(K: int = 4, T: int = 40, title: str = "synthetic imbalanced run") -> RunData:
    """Mean-field-like dynamics: each query's own score grows like log(1 + t / tau), the dominant feature
    (p = 0.5, tau = 8) first, the minor ones later and one after another; attention and the per-feature loss
    follow from the scores by spec section 4 with counts n = N p. Steps are log-spaced and unique."""
    steps = np.unique(np.geomspace(1, 3000, 4 * T).round().astype(np.int64) - 1)
    steps = steps[np.linspace(0, len(steps) - 1, T).round().astype(int)]
    p = np.r_[0.5, np.full(K - 1, 0.5 / (K - 1))]
    tau = np.r_[8.0, 150.0 + 40.0 * np.arange(K - 1)]
    t = steps[:, None].astype(np.float64)
    scores = np.zeros((T, K, K))
    idx = np.arange(K)
    scores[:, idx, idx] = 2.5 * np.log1p(t / tau)
    scores[:, 1:, 0] = -1.5 * np.log1p(t / 100)  # minor queries suppress the dominant feature
    bump = 0.6 * (t[:, 0] / 250) * np.exp(-t[:, 0] / 250)  # B_{k,n}: rises, then falls (Phase I)
    for k in range(1, K):
        scores[:, k, [n for n in range(1, K) if n != k]] = bump[:, None]
    w = p * np.exp(scores)
    att = w / w.sum(-1, keepdims=True)
    own = att[:, idx, idx]
    fl = 0.5 * ((1 - own) ** 2 + (att ** 2).sum(-1) - own ** 2)
    minor = [{"feature": k, "group": "minor", "phases": [
        {"name": "I", "start": 0, "end": 260 + k, "event": "B_{k,n} peaks"},
        {"name": "II", "start": 260 + k, "end": 537, "event": "attention[k,k] > attention[k,0]"},
        {"name": "III", "start": 537, "end": 818, "event": "attention[k,k] >= 1/2"},
        {"name": "IV", "start": 818, "end": None if k == K - 1 else 1903, "event": "feature_loss[k] <= eps"}]}
        for k in range(1, K)]
    phases = {"setting": "imbalanced", "eps": 0.01, "features": [
        {"feature": 0, "group": "dominant", "phases": [
            {"name": "I", "start": 0, "end": 73, "event": "feature_loss[k] <= eps"}]}, *minor]}
    config = {"data": {"num_features": K, "prompt_length": 256, "dominant_prob": 0.5},
              "train": {"lr": 1.0, "steps": 3000}, "eps": 0.01, "seed": 0}
    return RunData(title=title, steps=steps, loss=fl @ p, feature_loss=fl, scores=scores, attention=att, probs=p,
                   phases=phases, config=config)


def synthetic_sweep(missing: bool = True) -> pd.DataFrame:
    """3 x 3 (K, lr) grid x 3 seeds, time ~ 30 K^2 / lr (1 + seed / 10); with ``missing`` one run of the cell
    (K 16, lr 0.1) never reaches eps (None), as a sweep stores it."""
    rows = []
    for K in (4, 8, 16):
        for lr in (0.1, 0.3, 1.0):
            for seed in range(3):
                t = 30.0 * K ** 2 / lr * (1 + 0.1 * seed)
                rows.append({"run": len(rows), "config_hash": f"h{K}-{lr}-{seed}", X: K, Y: lr, "seed": seed,
                             "data.prompt_length": 256, "final_loss": 1e-3 / lr * (1 + seed),
                             V: None if missing and (K, lr, seed) == (16, 0.1, 2) else t})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------ page parsing

def decode(v):
    """plotly's typed-array JSON ({"dtype", "bdata", "shape"}) -> numpy; anything else unchanged."""
    if isinstance(v, dict) and "bdata" in v:
        a = np.frombuffer(base64.b64decode(v["bdata"]), np.dtype(v["dtype"]))
        return a.reshape([int(s) for s in v["shape"].split(",")]) if "shape" in v else a
    return v


def page_json(text: str, elem_id: str):
    """The JSON in <script type="application/json" id=elem_id>."""
    m = re.search(rf'<script type="application/json" id="{re.escape(elem_id)}"[^>]*>(.*?)</script>', text, re.S)
    assert m, f"no JSON script {elem_id}"
    return json.loads(m.group(1))


class _Links(HTMLParser):
    """Collects every src/href attribute and the script tags (script bodies are not parsed as tags)."""

    def __init__(self):
        super().__init__()
        self.urls, self.scripts = [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.urls += [attrs[a] for a in ("src", "href") if attrs.get(a)]
        if tag == "script":
            self.scripts.append(attrs)


@pytest.fixture(scope="module")
def run():
    return synthetic_run()


@pytest.fixture(scope="module")
def run_page(run, tmp_path_factory):
    path = write_run_explorer(run, tmp_path_factory.mktemp("run") / "explorer.html")
    return path.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def sweep_page(tmp_path_factory):
    df = synthetic_sweep()
    runs = {h: synthetic_run(title=h) for h in ("h4-0.1-0", "h4-0.1-1", "not-in-table")}
    path = write_sweep_explorer(df, tmp_path_factory.mktemp("sweep") / "sweep.html", X, Y, V, runs)
    return path.read_text(encoding="utf-8")


# ------------------------------------------------------------------------------ tests

@pytest.mark.parametrize("page", ["run_page", "sweep_page"])
def test_page_is_offline_with_plotly_inline_once(page, request):
    # file:// pages must not need the network: no external src/href, every script inline
    text = request.getfixturevalue(page)
    links = _Links()
    links.feed(text)
    assert not [u for u in links.urls if re.match(r"\s*(https?:)?//", u)], links.urls
    assert all("src" not in s for s in links.scripts)
    assert text.count(get_plotlyjs()[:400]) == 1  # the bundle once, even with several figures
    assert 4_000_000 < len(text) < 6_000_000  # plotly.js (~4.8 MB) plus small data


def test_loss_traces_hold_the_input_exactly(run, run_page):
    K = run.feature_loss.shape[1]
    for spec in (page_json(run_page, "loss-plot-spec"), run_figures(run)[0].to_plotly_json()):
        traces = spec["data"]
        assert [t["name"] for t in traces] == [f"feature {k + 1}" for k in range(K)] + ["total loss"]
        for k in range(K):  # exact float64 in the page (base64), not rounded text
            np.testing.assert_array_equal(decode(traces[k]["y"]), run.feature_loss[:, k])
            np.testing.assert_array_equal(decode(traces[k]["x"]), run.steps + 1)  # step 0 fits a log axis
            np.testing.assert_array_equal(decode(traces[k]["customdata"]), run.steps)  # hover shows the step
        np.testing.assert_array_equal(decode(traces[K]["y"]), run.loss)
        assert spec["layout"]["xaxis"]["type"] == spec["layout"]["yaxis"]["type"] == "log"
    assert "loss %{y:.6~g}" in traces[0]["hovertemplate"] and "step %{customdata}" in traces[0]["hovertemplate"]


def test_phase_bands_use_median_boundaries(run):
    shapes = run_figures(run)[0].to_plotly_json()["layout"]["shapes"]
    bands = [(s["x0"], s["x1"]) for s in shapes if s["type"] == "rect"]
    # minor Phase I ends at 261, 262, 263: median 262; Phase IV ends 1903, 1903, never: median 1903
    assert bands == [(1.0, 263), (263, 538), (538, 819), (819, 1904)]
    eps = [s for s in shapes if s["type"] == "line" and s["yref"] == "y"]
    assert [s["y0"] for s in eps] == [0.01]
    dom = [s for s in shapes if s["type"] == "line" and s["xref"] == "x"]
    assert [s["x0"] for s in dom] == [74]  # the dominant feature reaches eps at step 73 (x = step + 1)


def test_unreached_median_phase_runs_to_the_end():
    # two of three minor features never end Phase IV: the median is 'not reached', the band runs to the end
    r = synthetic_run()
    for f in r.phases["features"][1:3]:
        f["phases"][3]["end"] = None
    ends, dom = phase_boundaries(r.phases)
    assert ends == [("I", 262.0), ("II", 537.0), ("III", 818.0), ("IV", None)] and dom == 73.0
    layout = run_figures(r)[0].to_plotly_json()["layout"]
    assert [s["x1"] for s in layout["shapes"] if s["type"] == "rect"][-1] == r.steps[-1] + 1
    assert "IV (not ended)" in [a["text"] for a in layout["annotations"]]


def test_balanced_and_missing_phases():
    # balanced: the median Phase I end over all features (an even count: the mean of the middle two)
    r = synthetic_run()
    ends = [(100, 500), (120, 600), (140, None), (None, None)]
    r.phases = {"setting": "balanced", "eps": 0.01, "features": [
        {"feature": k, "group": "balanced", "phases": [{"name": "I", "start": 0, "end": a},
                                                       {"name": "II", "start": a, "end": b}]}
        for k, (a, b) in enumerate(ends)]}
    assert phase_boundaries(r.phases) == ([("I", 130.0), ("II", None)], None)
    fig = run_figures(r)[0]
    assert [(s.x0, s.x1) for s in fig.layout.shapes if s.type == "rect"] == [(1.0, 131.0), (131.0, r.steps[-1] + 1)]
    assert {t.legendgroup for t in fig.data} == {"balanced", "total"}
    # no phase detection at all: curves and the eps line from the config only, no bands
    r.phases = None
    fig = run_figures(r)[0]
    assert [s.type for s in fig.layout.shapes] == ["line"] and fig.layout.shapes[0].y0 == 0.01
    assert [t.name for t in fig.data][:4] == ["feature 1", "feature 2", "feature 3", "feature 4"]


def test_heatmap_slider_has_a_step_per_logged_row(run, run_page):
    T, K = run.feature_loss.shape
    spec = page_json(run_page, "heatmap-plot-spec")
    steps = spec["layout"]["sliders"][0]["steps"]
    assert len(steps) == len(spec["frames"]) == T
    assert [s["args"][0] for s in steps] == [[str(s)] for s in run.steps] == [[f["name"]] for f in spec["frames"]]
    for t in (0, 17, T - 1):  # frame t shows the matrices of logged row t, exactly
        frame = spec["frames"][t]
        np.testing.assert_array_equal(decode(frame["data"][0]["z"]), run.attention[t])
        np.testing.assert_array_equal(decode(frame["data"][1]["z"]), run.scores[t])
        assert frame["layout"]["title"]["text"].endswith(f"step {run.steps[t]}")
    # the page opens at the last step, on the slider too
    np.testing.assert_array_equal(decode(spec["data"][0]["z"]), run.attention[-1])
    assert spec["layout"]["sliders"][0]["active"] == T - 1
    lay = spec["layout"]
    assert lay["xaxis"]["title"]["text"] == "key feature n" and lay["yaxis"]["title"]["text"] == "query feature k"
    assert lay["xaxis"]["tick0"] == 1 and lay["yaxis"]["autorange"] == "reversed"  # 1-based, row 1 on top
    np.testing.assert_array_equal(decode(spec["data"][0]["x"]), np.arange(1, K + 1))


def test_heatmap_frames_are_thinned_for_long_runs(run):
    fig = run_figures(run, max_frames=10)[1]
    rows = frame_rows(40, 4, 10)
    assert len(fig.layout.sliders[0].steps) == len(fig.frames) == 10 and rows[0] == 0 and rows[-1] == 39
    for f, t in zip(fig.frames, rows):
        np.testing.assert_array_equal(f.data[0].z, run.attention[t])
    # default: a budget of 6 MB of float64 matrices, 91 frames at K = 64, every row of a small run
    assert len(frame_rows(514, 64)) == 6_000_000 // (2 * 8 * 64 * 64) == 91 and len(frame_rows(514, 16)) == 514


def test_sweep_heatmap_cells_are_groupby_means():
    df = synthetic_sweep(missing=False)
    df[V] = df[V] / df[X] ** 2  # values within a factor 10: linear colour, z holds the means themselves
    fig, entries = sweep_figure(df, X, Y, V)
    h = fig.to_plotly_json()["data"][0]
    want = df.groupby([Y, X])[V].mean().unstack(X).sort_index().sort_index(axis=1)
    assert h["x"] == ["4", "8", "16"] and h["y"] == ["0.1", "0.3", "1"]
    np.testing.assert_allclose(np.array(h["z"], float), want.to_numpy(), rtol=1e-15, atol=0)
    np.testing.assert_allclose([[c[0] for c in row] for row in h["customdata"]], want.to_numpy(), rtol=1e-15)
    hover = h["customdata"][0][1][2]  # K = 8, lr = 0.1: the config, the mean and the averaged-over seeds
    assert f"<b>{V} = {want.loc[0.1, 8]:.6g}</b> (mean of 3 runs)" in hover and "seed: 0, 1, 2" in hover
    assert [e["hash"] for e in entries[h["customdata"][0][1][1]]["runs"]] == ["h8-0.1-0", "h8-0.1-1", "h8-0.1-2"]


def test_sweep_log_colour_keeps_exact_means():
    # times spread over decades: colour by log10, customdata and hover keep the mean itself
    df = synthetic_sweep(missing=False)
    h = sweep_figure(df, X, Y, V)[0].to_plotly_json()["data"][0]
    want = df.groupby([Y, X])[V].mean().unstack(X).to_numpy()
    np.testing.assert_allclose(np.array(h["z"], float), np.log10(want), rtol=1e-15)
    np.testing.assert_allclose([[c[0] for c in row] for row in h["customdata"]], want, rtol=1e-15)


def test_nan_cell_is_empty_and_says_not_reached(sweep_page):
    spec = page_json(sweep_page, "sweep-plot-spec")
    h = spec["data"][0]
    r, c = h["y"].index("0.1"), h["x"].index("16")
    assert h["z"][r][c] is None  # JSON null: plotly draws no colour there
    assert sum(v is None for row in h["z"] for v in row) == 1  # the other 8 cells all reached eps
    assert h["customdata"][r][c][0] is None and h["text"][r][c] == "not reached"
    assert f"{V}: not reached</b> (1 of 3 runs)" in h["customdata"][r][c][2]
    assert sweep_cells(synthetic_sweep(), X, Y, V)["mean"].isna().sum() == 1


def test_sweep_page_embeds_only_kept_runs_of_the_table(sweep_page):
    runs = page_json(sweep_page, "sweep-runs")
    assert sorted(runs) == ["h4-0.1-0", "h4-0.1-1"]  # 'not-in-table' is not a run of this sweep
    want = synthetic_run()
    traces = runs["h4-0.1-0"]["data"]
    assert [t["name"] for t in traces] == [f"feature {k + 1}" for k in range(4)]  # K curves, no total
    for k, t in enumerate(traces):
        np.testing.assert_array_equal(decode(t["y"]), want.feature_loss[:, k])
    # layout parts go to the browser as plotly.js attributes (no Python shorthands such as line_width)
    rect = [sh for sh in runs["h4-0.1-0"]["shapes"] if sh["type"] == "rect"]
    assert len(rect) == 4 and rect[0]["line"] == {"width": 0} and "line_width" not in rect[0]
    assert page_json(sweep_page, "sweep-run-layout")["xaxis"]["title"] == {"text": "step + 1"}
    assert NOT_KEPT in sweep_page  # the message for a cell without a kept run


def test_sweep_without_y_is_a_loglog_plot_of_runs_and_means():
    df = synthetic_sweep()
    fig, entries = sweep_figure(df, X, None, V)
    runs, means = fig.to_plotly_json()["data"]
    assert len(runs["x"]) == 26 and "1 run not reached" in fig.layout.title.text  # the None run is left out
    # a mean only where every run reached: K = 16 has the missing run, so no point there
    want = df[df[X] < 16].groupby(X)[V].mean()
    assert means["x"] == [4, 8] and np.allclose(means["y"], want.to_numpy(), rtol=1e-15)
    assert fig.layout.xaxis.type == fig.layout.yaxis.type == "log"
    i = runs["customdata"][0][1]
    assert len(entries[i]["runs"]) == 1 and "seed: 0" in runs["customdata"][0][2]


def test_text_is_escaped_and_shapes_are_checked(tmp_path):
    # a title cannot end the page's script tags or inject markup
    text = write_run_explorer(synthetic_run(title="</script><b>x"), tmp_path / "p.html").read_text()
    assert "<h1>&lt;/script&gt;&lt;b&gt;x</h1>" in text and "</script><b>x" not in text
    r = synthetic_run()
    with pytest.raises(ValueError, match="attention"):
        RunData("bad", r.steps, r.loss, r.feature_loss, r.scores, r.attention[:, :3], r.probs)
    assert math.isclose(float(r.loss[0]), float(r.feature_loss[0] @ r.probs))
