"""``reproduce --quick`` end to end: every file, every claim with a negative control that FAILs, verdicts that
follow from the local exponents, the two findings, the figures (labels, legends, formats), the output folder
rules; and the pieces reproduce relies on (padded sweep runs, the ``phases`` command)."""

import json
import shutil

import numpy as np
import pytest

from icl_dynamics.cli import main
from icl_dynamics.config import RunConfig, with_overrides
from icl_dynamics.data import feature_probs
from icl_dynamics.engines import build_engine
from icl_dynamics.reproduce import CLAIMS, FIGURES, FILES, QUICK, prepare_output, reproduce, write_report
from icl_dynamics.reproduce import documents, figures, figures_sweeps, robustness
from icl_dynamics.reproduce.machinery import fit_power, padded, unpad
from icl_dynamics.reproduce.orders import SATURATION, WINDOW
from icl_dynamics.trainer import log_schedule, run_training, train

from test_plots import check_figure

KEYS = {"name", "kind", "claim", "source", "criterion", "passed", "measured", "summary", "controls"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``reproduce --quick`` (the Python entry point, float64 by itself); returns (folder, results)."""
    out = tmp_path_factory.mktemp("reproduce") / "results"
    results = reproduce(out, QUICK, progress=False)
    return out, results


@pytest.mark.user_defaults
def test_quick_writes_every_file(quick):
    out, _ = quick
    for name in FILES:
        assert (out / name).is_file(), name
    for name in FIGURES:
        png = (out / "figures" / f"{name}.png").read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    for run in ("balanced", "imbalanced"):
        for name in ("config.yaml", "trajectory.npz", "summary.json", "phases.json", "manifest.json"):
            assert (out / "runs" / run / name).is_file(), (run, name)
    html = (out / "report.html").read_text()
    assert html.count("<img src='data:image/png;base64,") == len(FIGURES)  # self-contained: figures embedded
    assert '<script src=' not in html and html.count('class="plot"') == 4  # the explorer's figures, inline
    md = (out / "report.md").read_text()
    claims = json.loads((out / "claims.json").read_text())
    cell = lambda s: s.replace("|", "\\|")  # noqa: E731  (as in a markdown table)
    for c in claims:  # every claim, its source and its controls are in the report, passing or failing
        assert cell(c["claim"]) in md and cell(c["source"]) in md
        for ctl in c["controls"]:
            assert cell(ctl["setting"]) in md
    for name in FIGURES:
        assert f"figures/{name}.png" in md


def test_every_claim_has_a_control_that_fails(quick):
    out, _ = quick
    claims = json.loads((out / "claims.json").read_text())
    assert {c["name"] for c in claims} == set(CLAIMS)
    assert {c["kind"] for c in claims} == {"paper", "finding"}
    for c in claims:
        assert set(c) == KEYS and isinstance(c["passed"], bool)
        assert c["criterion"] and c["source"] and c["summary"] and c["measured"]
        assert c["controls"], c["name"]
        for ctl in c["controls"]:  # the same criterion, in a setting where the claim is false
            assert ctl["passed"] is False, (c["name"], ctl["name"], ctl["summary"])
            assert ctl["why_false"] and ctl["setting"]


def test_quick_verdicts(quick):
    """The quick plan's settings are inside each claim's regime: every claim and finding holds there."""
    out, _ = quick
    claims = json.loads((out / "claims.json").read_text())
    assert [c["name"] for c in claims if not c["passed"]] == []


def test_order_verdicts_follow_from_local_exponents(quick):
    out, _ = quick
    claims = {c["name"]: c for c in json.loads((out / "claims.json").read_text())}
    for name in ("phase1_order_K2", "phase2_order_inv_eps", "dominant_K_independent"):
        m = claims[name]["measured"]
        win = m["local"][-WINDOW:]
        dev = [abs(e["b"] - m["theory"]) for e in win]
        assert dev == pytest.approx(m["deviations"], abs=1e-12)
        change = 2 ** dev[-1] - 1
        assert change == pytest.approx(m["change_per_doubling"], rel=1e-12)
        approach = dev[-1] < dev[0] and all(d1 <= d0 + e0["u"] + e1["u"]
                                            for d0, d1, e0, e1 in zip(dev, dev[1:], win, win[1:]))
        assert claims[name]["passed"] == (approach and change <= SATURATION)
    lr = claims["time_inverse_lr"]["measured"]["nearest"]
    # exact in the small-step limit: -1 inside the local exponent's interval, no tolerance added
    assert abs(lr["b"] + 1) <= lr["u"] and lr["x_hi"] == min(QUICK.lr_values)


def test_findings(quick):
    out, _ = quick
    claims = {c["name"]: c for c in json.loads((out / "claims.json").read_text())}
    for row in claims["four_phase_threshold"]["measured"]["boundaries"]:
        lo, hi = row["bracket"]
        assert lo < 1 / np.sqrt(row["K"]) < hi and hi / lo - 1 <= 0.15  # the grid brackets it within 15 %
    floor = claims["finite_N_floor"]["measured"]["rows"]
    assert [r["N"] for r in floor] == list(QUICK.floor_N)
    for r in floor:
        assert abs(r["settled"] - r["formula"]) <= r["u"] <= 0.05 * r["formula"]  # extrapolation within 5 %
        assert r["lower"] <= r["settled"] <= r["upper"]
    # the earlier spec's 1/2 (1 - p_k)^N underestimates: the floor is at least 10 % above it for every N
    assert all(r["settled"] >= 1.1 * r["lower"] for r in floor)


def test_spec_table_regression(quick):
    _, res = quick
    # docs/spec.md section 6 table (measured by an earlier version): "within a few percent" (3 %)
    assert res["spec_check"] and all(r["rel_error"] <= 0.03 for r in res["spec_check"])
    for run in ("balanced", "imbalanced"):  # the main runs' phases.json equal what the report used
        on_disk = json.loads((quick[0] / "runs" / run / "phases.json").read_text())
        assert on_disk == res["main"][run]["phases"]


def test_report_figures_are_labelled(quick, monkeypatch):
    out, res = quick
    drawn = []
    for mod in (figures, figures_sweeps):
        monkeypatch.setattr(mod, "save_formats", lambda fig, stem, formats: drawn.append((stem.name, fig)) or [])
    monkeypatch.setattr(documents, "atomic_write_text", lambda *a: None)
    monkeypatch.setattr(documents, "atomic_write_json", lambda *a: None)
    write_report(out, res)
    assert sorted(name for name, _ in drawn) == sorted(FIGURES)
    for name, fig in drawn:
        check_figure(fig, name)


def test_report_formats(quick, tmp_path, monkeypatch):
    out, res = quick
    paths = figures_sweeps.fig_floor(res, tmp_path / "floor", ("pdf", "svg"))
    assert [p.name for p in paths] == ["floor.pdf", "floor.svg"]
    assert paths[0].read_bytes()[:5] == b"%PDF-" and b"<svg" in paths[1].read_bytes()[:2000]
    asked = []
    for mod in (figures, figures_sweeps):  # write_report asks every figure in every format, PNG first
        monkeypatch.setattr(mod, "save_formats", lambda fig, stem, formats: asked.append(formats) or [])
    monkeypatch.setattr(documents, "atomic_write_text", lambda *a: None)
    monkeypatch.setattr(documents, "atomic_write_json", lambda *a: None)
    write_report(out, res, formats=("svg", "pdf", "svg"))
    assert asked == [("png", "svg", "pdf")] * len(FIGURES)


def test_overwrite_replaces_only_its_own_files(quick, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(quick[0], out)
    (out / "notes.txt").write_text("mine")
    assert main(["reproduce", "--out", str(out), "--quick", "--quiet"]) == 2  # refuses before running
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    prepare_output(out, overwrite=True)  # what --overwrite does before running
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "report.md").exists() and not (out / "figures" / "floor.png").exists()
    (tmp_path / "file").write_text("x")
    assert main(["reproduce", "--out", str(tmp_path / "file"), "--quick", "--quiet"]) == 2


def test_phases_command(quick, tmp_path, capsys):
    run = quick[0] / "runs" / "imbalanced"
    want = json.loads((run / "phases.json").read_text())
    (run / "phases.json").unlink()
    assert main(["phases", str(run)]) == 0
    assert json.loads((run / "phases.json").read_text()) == want
    assert "feature 2 (minor)" in capsys.readouterr().out  # 1-based for people
    for bad in (tmp_path / "missing", tmp_path):
        assert main(["phases", str(bad)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("icl-dynamics: error:") and len(err.splitlines()) == 1


def test_train_writes_phases(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--quiet", "--set", "train.expectation=mean_field",
                 "--set", "train.steps=100"]) == 0
    ph = json.loads((out / "phases.json").read_text())
    assert ph["setting"] == "imbalanced" and len(ph["features"]) == 16
    assert ph["features"][0]["phases"][0]["end"] == 73  # docs/spec.md section 6: dominant reaches eps at 73


def test_padded_sweep_run_is_exact():
    # zero-probability features have no tokens and no loss weight, so the first K rows and columns
    # follow the K-feature dynamics exactly (same floating-point operations on them)
    cfg = with_overrides(RunConfig(), {"data.num_features": 4, "train.expectation": "mean_field"})
    a = train(build_engine(cfg), log_schedule(200), progress=False).trajectory
    b = unpad(train(build_engine(padded(cfg, 16)), log_schedule(200), progress=False).trajectory, 4)
    for x, y in zip(a, b):
        np.testing.assert_allclose(x, y, rtol=1e-12, atol=1e-14)


def test_fit_power_interval():
    rng = np.random.default_rng(0)
    x = np.geomspace(4, 64, 8)
    exact = fit_power(x, 3 * x**1.5)
    assert abs(exact["exponent"] - 1.5) < 1e-12 and abs(exact["prefactor"] - 3) < 1e-9
    # with 5% log-normal noise the 95% t-interval covers the true exponent in ~95% of draws
    covered = 0
    for _ in range(200):
        f = fit_power(x, 3 * x**1.5 * np.exp(rng.normal(0, 0.05, x.size)))
        covered += f["ci"][0] <= 1.5 <= f["ci"][1]
    assert 0.904 <= covered / 200 <= 0.996  # binomial(200, 0.95): +-3 sd is +-0.046
    assert fit_power([1, 2], [1, 2]) is None


def test_report_html_in_a_browser(quick, driver, artifacts):
    """report.html from file:// in headless Chromium: no console errors, the figures and the four
    interactive plots drawn; a screenshot goes to the test output (report.png)."""
    from browser import load, screenshot, severe

    out = quick[0]
    assert severe(load(driver, out / "report.html")) == []
    drawn = driver.execute_script("return Array.from(document.querySelectorAll('.plot')).filter("
                                  "d => d._fullData && d._fullData.length > 0).length")
    assert drawn == 4
    assert driver.execute_script("return Array.from(document.images).every(i => i.naturalWidth > 100)")
    screenshot(driver, artifacts / "report.png")
    assert (artifacts / "report.png").stat().st_size > 50_000


def test_robustness_section(quick):
    """The robustness section (robustness.py) measures each case: the paper's model (K = 6, p_1 = 0.5 >
    1/sqrt(6)) shows all four minor phases with the dominant feature first; every row's phase count is one of
    0..4 and its time ratios are against that row; the report states the table and the sweeps."""
    out, results = quick
    rob = results["robustness"]
    paper = rob["rows"][0]
    assert paper["dominant_first"] and paper["minor_phases"] == 4 and paper["minor_time"] is not None
    assert paper["minor_phases_text"] == "4 of 4" and paper["dominant_first_text"] == "yes"
    for r in rob["rows"]:
        assert 0 <= r["minor_phases"] <= 4 and r["minor_phases_text"].startswith(f"{r['minor_phases']} of 4")
        assert r["engine"] == "population / exact"  # --quick: population cases only
        if r["minor_time"] is not None:
            assert abs(r["minor_ratio"] - r["minor_time"] / paper["minor_time"]) < 1e-12
    noise = next(r for r in rob["rows"] if r["relaxation"] == "label noise 0.5")  # the floor is above eps
    assert noise["minor_time"] is None and noise["dominant_first_text"] == "yes (minor never reaches eps)"
    assert noise["minor_phases"] < 4 and "IV not reached" in noise["minor_phases_text"]
    assert set(rob["sweeps"]) == {"model.init_scale", "data.label_noise"}
    md = (out / "report.md").read_text()
    assert "does the stage-wise picture survive" in md and all(r["relaxation"] in md for r in rob["rows"])
    assert (out / "figures" / "robustness.png").stat().st_size > 10_000


def test_robustness_rows_say_where_the_phases_do_not_apply():
    """Linear attention (normalised scores, not a softmax): no phase count, the cell says why; neither feature
    reaches eps in 40 steps, and the table says so rather than a bare NO. The section's table carries the text."""
    cfg = with_overrides(RunConfig(), {"data.num_features": 4, "data.prompt_length": 8, "data.dominant_prob": 0.5,
                                       "train.expectation": "enumerate", "model.attention": "linear",
                                       "train.steps": 40})
    res = run_training(cfg, progress=False)
    m = robustness.measure(res.trajectory, feature_probs(cfg.data), cfg.eps, cfg.model.attention)
    assert m["minor_phases"] is None and m["minor_phases_text"] == "n/a: attention not a softmax (linear)"
    assert m["dominant_time"] is None and m["minor_time"] is None
    assert m["dominant_first"] is None and m["dominant_first_text"] == "neither reaches eps"
    row = {"relaxation": "linear attention", "engine": robustness.engine_label(cfg), **m,
           "dominant_ratio": None, "minor_ratio": None}
    sw = {"x": [0.0], "minor_time": [None], "minor_phases_text": ["4 of 4"], "dominant_first_text": ["yes"]}
    blocks = robustness.section({"K": 4, "N": 8, "p1": 0.5, "steps": 40, "rows": [row], "sweeps": {"s": sw}})
    table = next(b for b in blocks if b[0] == "table")
    assert table[2] == [["linear attention", "population / enumerate", "neither reaches eps",
                         "n/a: attention not a softmax (linear)", "not reached", "not reached"]]


def test_robustness_cases():
    """AdamW carries a weight decay that makes it differ from Adam, and says so in its label; the transformer
    engine is labelled without the expectation knob (which only the population engine has)."""
    cases = {name: case for name, _, case in robustness.CASES}
    adamw = next(n for n in cases if n.startswith("AdamW"))
    assert cases[adamw]["train.optimizer_args"] == {"weight_decay": 0.1} and "weight decay 0.1" in adamw
    assert robustness.engine_label(with_overrides(RunConfig(), robustness.TRANSFORMER)) == "transformer"
    assert robustness.engine_label(RunConfig()) == "population / exact"
    assert robustness.CASES[0][1] == "paper" and {g for _, g, _ in robustness.CASES[1:]} <= set(figures_sweeps.GROUPS)
