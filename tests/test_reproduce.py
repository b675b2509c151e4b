"""``reproduce --quick`` end to end, its output folder rules, the ``phases`` command, and the pieces
reproduce relies on (padded sweep runs, power-law fits)."""

import json

import numpy as np
import pytest

from icl_dynamics.cli import main
from icl_dynamics.config import RunConfig, with_overrides
from icl_dynamics.reproduce.experiments import fit_power, padded, unpad
from icl_dynamics.engines import build_engine
from icl_dynamics.reproduce import FIGURES, FILES
from icl_dynamics.trainer import log_schedule, train

pytestmark = pytest.mark.user_defaults  # end to end: the package must turn float64 on by itself

KEYS = {"claim", "measured", "criterion", "passed"}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One ``reproduce --quick`` into a folder that already holds a foreign file and a stale report."""
    out = tmp_path_factory.mktemp("reproduce") / "results"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "report.md").write_text("stale")
    assert main(["reproduce", "--out", str(out), "--quick", "--quiet"]) == 2  # refuses: not empty
    assert main(["reproduce", "--out", str(out), "--quick", "--quiet", "--overwrite"]) == 0
    return out


def test_quick_writes_every_file(quick):
    for name in FILES:
        assert (quick / name).is_file(), name
    for name in FIGURES:
        png = (quick / "figures" / name).read_bytes()
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000, name
    for run in ("balanced", "imbalanced"):
        for name in ("config.yaml", "trajectory.npz", "summary.json", "phases.json", "manifest.json"):
            assert (quick / "runs" / run / name).is_file(), (run, name)
    claims = json.loads((quick / "claims.json").read_text())
    assert isinstance(claims, list) and len(claims) == 8  # one row per claim listed in the issue
    for c in claims:
        assert set(c) == KEYS and isinstance(c["passed"], bool)
        assert c["claim"] and c["measured"] and c["criterion"]
    html = (quick / "report.html").read_text()
    assert html.count("data:image/png;base64,") == len(FIGURES)  # self-contained: figures embedded
    assert "src='figures/" not in html
    md = (quick / "report.md").read_text()
    for name in FIGURES:
        assert f"figures/{name}" in md
    for c in claims:  # every claim is in both documents, passing or failing
        assert c["claim"] in md


def test_quick_measures_the_theory(quick):
    res = json.loads((quick / "results.json").read_text())
    # spec section 6 table, "within a few percent" (3%)
    assert res["spec_check"] and all(r["rel_error"] <= 0.03 for r in res["spec_check"])
    fits = res["fits"]
    # GD time in the small-step limit scales exactly as 1/lr; discrete steps up to lr = 4 barely bend it
    assert abs(fits["time_vs_lr"]["exponent"] + 1) <= 0.05
    # spec: Phase I ~ K^2 (up to log factors: +-0.3); dominant time independent of K (+-0.3)
    assert abs(fits["phase1_vs_K"]["exponent"] - 2) <= 0.3
    assert abs(fits["dominant_vs_K"]["exponent"]) <= 0.3
    # the main runs' phases.json equal what the report used
    for run in ("balanced", "imbalanced"):
        on_disk = json.loads((quick / "runs" / run / "phases.json").read_text())
        assert on_disk == res["main"][run]["phases"]


def test_overwrite_replaces_only_its_own_files(quick, tmp_path, capsys):
    assert (quick / "notes.txt").read_text() == "mine"
    assert (quick / "report.md").read_text() != "stale"
    out = tmp_path / "r"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert main(["reproduce", "--out", str(out), "--quick", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--overwrite" in err and len(err.splitlines()) == 1
    (tmp_path / "file").write_text("x")
    assert main(["reproduce", "--out", str(tmp_path / "file"), "--quick", "--quiet"]) == 2


def test_phases_command(quick, tmp_path, capsys):
    run = quick / "runs" / "imbalanced"
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
    assert ph["features"][0]["phases"][0]["end"] == 73  # spec section 6: dominant reaches eps at 73


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
