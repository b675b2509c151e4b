"""Figures of one run (``plot``): every format written, the --out rules, and what a test can check of a figure
by itself: no empty panel, axis labels and ticks on every panel, a legend entry for every line, the style's
sizes. :func:`check_figure` is shared with the report's figures (test_reproduce.py)."""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.container import ErrorbarContainer  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

from icl_dynamics import plots, style  # noqa: E402
from icl_dynamics.cli import main  # noqa: E402
from icl_dynamics.errors import UserError  # noqa: E402
from icl_dynamics.storage import load_run  # noqa: E402

MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}


def _legend_rows(ax) -> list[str]:
    """The axes' legend entries and the figure-level legends' line entries (a legend placed outside the axes;
    patch entries are the shaded phases, not lines)."""
    leg = ax.get_legend()
    rows = [] if leg is None else [t.get_text() for t in leg.get_texts()]
    return rows + [t.get_text() for lg in ax.figure.legends for h, t in zip(lg.legend_handles, lg.get_texts())
                   if isinstance(h, Line2D)]


def check_figure(fig, name: str) -> None:
    """Every panel has data, ticks, both axis labels (a colour bar: its label), and a legend entry per line."""
    assert fig.get_size_inches()[0] <= style.FULL + 1e-9, name  # fits the page width of a two-column paper
    for ax in fig.axes:
        if ax.get_label() == "<colorbar>":
            assert ax.get_ylabel() or ax.get_xlabel(), name
            continue
        where = f"{name}: panel '{ax.get_title()}'"
        assert ax.lines or ax.images or ax.collections, f"{where} is empty"
        assert ax.get_xlabel().strip() and ax.get_ylabel().strip(), f"{where} lacks an axis label"
        assert len(ax.get_xticks()) >= 2 and len(ax.get_yticks()) >= 2, f"{where} lacks ticks"
        if ax.images:
            continue
        in_bars = {id(line) for c in ax.containers if isinstance(c, ErrorbarContainer) for line in c.lines
                   if line is not None and not isinstance(line, tuple)}
        lines = [line for line in ax.lines if id(line) not in in_bars]
        bars = [c for c in ax.containers if isinstance(c, ErrorbarContainer)]
        others = [a for a in [*ax.patches, *ax.collections] if a.get_label() and not a.get_label().startswith("_")]
        rows = _legend_rows(ax)
        assert len(rows) == len(lines) + len(bars) + len(others), f"{where}: legend {rows}"
        for line in lines:
            assert line.get_label() in rows, f"{where}: line without a legend entry"
        for text in rows:
            assert text.strip(), f"{where}: empty legend entry"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("plots") / "run"
    assert main(["train", "--out", str(out), "--quiet", "--set", "train.expectation=mean_field",
                 "--set", "data.num_features=6", "--set", "train.steps=1500"]) == 0
    return out


@pytest.mark.user_defaults
def test_plot_run_writes_every_format(run_dir, tmp_path):
    paths = plots.plot_run(load_run(run_dir), tmp_path / "figs", formats=("png", "pdf", "svg"))
    names = {"feature_loss", "attention_own", "scores", "attention_heatmaps"}
    assert sorted(p.name for p in paths) == sorted(f"{n}.{f}" for n in names for f in ("png", "pdf", "svg"))
    for p in paths:
        data = p.read_bytes()
        assert data.startswith(MAGIC[p.suffix[1:]]) and len(data) > 5_000, p.name


def test_plot_figures_are_labelled(run_dir, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plots, "save_formats", lambda fig, stem, formats: drawn.append((stem.name, fig)) or [])
    plots.plot_run(load_run(run_dir), tmp_path / "figs", heatmap_steps=[0, 37, 1500])
    assert len(drawn) == 4
    for name, fig in drawn:
        check_figure(fig, name)
        plt.close(fig)
    heat = dict(drawn)["attention_heatmaps"]
    assert [ax.get_title() for ax in heat.axes[:3]] == ["step 0", "step 37", "step 1500"]


def test_heatmap_is_at_the_exact_step(run_dir):
    t = load_run(run_dir).trajectory
    i = int(np.flatnonzero(np.diff(t.steps) > 1)[-1])  # two logged rows with unlogged steps between them
    s0, s1 = t.steps[i], t.steps[i + 1]
    mid = plots.attention_at(t, (s0 + s1) / 2)
    np.testing.assert_allclose(mid, (t.attention[i] + t.attention[i + 1]) / 2, rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(plots.attention_at(t, s1), t.attention[i + 1])


def test_step_axis_shows_step_zero():
    fig, ax = plt.subplots()
    ax.plot(plots.x_of([0, 1, 10, 2000]), [1, 2, 3, 4], label="x")
    plots.step_axis(ax, 2000)
    assert ax.get_xscale() == "log" and ax.get_xlim()[0] == 1.0  # step 0 sits at x = 1, inside the axis
    assert [t.get_text() for t in ax.get_xticklabels()][:3] == ["0", "1", "10"]
    plt.close(fig)


def test_out_must_be_a_folder(run_dir, tmp_path, capsys):
    assert main(["plot", str(run_dir), "--out", str(tmp_path / "fig.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "names a file" in err[0]
    assert not (tmp_path / "fig.png").exists()  # no folder named like a file
    (tmp_path / "taken").write_text("x")
    with pytest.raises(UserError, match="not a directory"):
        plots.check_out_dir(tmp_path / "taken")
    assert plots.check_out_dir(tmp_path / "figs.v2").name == "figs.v2"  # a dotted folder name is fine


def test_formats_are_checked():
    assert plots.check_formats(["PNG", "pdf", ".svg", "pdf"]) == ("png", "pdf", "svg")
    with pytest.raises(UserError, match="jpg"):
        plots.check_formats(["jpg"])


def test_style_sizes():
    assert style.COLUMN == 3.4 and style.FULL == 7.0
    sizes = [v for k, v in style.RC.items() if k.endswith("size") and "marker" not in k]
    assert sizes and all(8 <= s <= 9 for s in sizes)  # 8-9 pt text throughout


TINY_RUN = ["--set", "data.num_features=3", "--set", "data.prompt_length=8", "--set", "train.expectation=mean_field",
            "--set", "train.steps=20", "--quiet"]


def test_plot_out_that_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(["plot", str(out), "--out", str(out / "config.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a directory" in err[0]


def test_eval_curve_legend_is_outside_and_whole(tmp_path, monkeypatch):
    """feature_loss of a run with an eval: block: the legend sits below the axes (it covers no curve) and inside
    the figure (no label cut); the legend names 'the eval: data', the title gives the change in full with the
    trained value."""
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", "--set", "data.num_features=4", "--set",
                 "data.prompt_length=16", "--set", "train.steps=60", "--set", "eval={data.prompt_length: 64}"]) == 0
    drawn = []
    monkeypatch.setattr(plots, "save_formats", lambda fig, stem, formats: drawn.append((stem.name, fig)) or [])
    plots.plot_run(load_run(out), tmp_path / "figs")
    fig = dict(drawn)["feature_loss"]
    check_figure(fig, "feature_loss")
    ax = fig.axes[0]
    assert ax.get_legend() is None and ax.get_title() == "eval: prompt_length = 64 (trained: 16)"
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    box, whole = ax.get_window_extent(r), fig.bbox
    curves = [lg for lg in fig.legends if any(isinstance(h, Line2D) for h in lg.legend_handles)]
    assert len(curves) == 1 and "loss $L$ on the eval: data" in [t.get_text() for t in curves[0].get_texts()]
    leg = curves[0].get_window_extent(r)
    assert leg.y1 <= box.y0 and leg.y0 >= whole.y0 and leg.x0 >= whole.x0 and leg.x1 <= whole.x1
    for _, f in drawn:
        plt.close(f)


def test_a_phase_of_zero_length_is_neither_shaded_nor_in_the_legend():
    """Phase I ending at step 0 (a run whose minor feature starts in Phase II) has no span and no legend
    entry; the phases after it keep their own names and colours; an unreached phase ends the shading."""
    import matplotlib.pyplot as plt

    from icl_dynamics.plots import shade_phases

    fig, ax = plt.subplots()
    patches = shade_phases(ax, [0, 24, 45, None])
    assert [p.get_label() for p in patches] == ["Phase II", "Phase III"]
    assert len(ax.patches) == 2
    plt.close(fig)
