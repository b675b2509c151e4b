"""The explorer pages in headless Chromium (selenium), loaded from file:// with the network unused: they draw
without console errors, and the slider, legend, hover and sweep click do what a researcher expects.

Screenshots go to $ICL_TEST_ARTIFACTS (default: a pytest temporary folder) as explorer_run.png and
explorer_sweep.png. The tests skip only where Chromium or its driver cannot start.
"""

from __future__ import annotations


import numpy as np
import pytest

from icl_dynamics.explorer import write_run_explorer
from icl_dynamics.explorer_sweep import NOT_KEPT, write_sweep_explorer
from browser import load, screenshot, severe  # noqa: E402  (driver, artifacts: conftest)
from test_explorer import V, X, Y, synthetic_run, synthetic_sweep

selenium = pytest.importorskip("selenium", reason="selenium is not installed")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402

KEPT = ("h4-0.1-0", "h4-0.1-1")  # the two runs of cell (K 4, lr 0.1) whose trajectories are kept
# the drawn matrix of a heatmap trace (calcdata: what plotly actually rendered)
READ_Z = "var c=document.getElementById(arguments[0]).calcdata[arguments[1]][0];return c.z.map(r=>Array.from(r));"


@pytest.fixture(scope="module")
def run():
    return synthetic_run()


@pytest.fixture(scope="module")
def pages(run, tmp_path_factory):
    d = tmp_path_factory.mktemp("pages")
    runs = {h: synthetic_run(title=f"run {h}: K 4, lr 0.1") for h in KEPT}
    return {"run": write_run_explorer(run, d / "run.html"),
            "sweep": write_sweep_explorer(synthetic_sweep(), d / "sweep.html", X, Y, V, runs)}


def test_run_page_draws_exact_data_without_errors(driver, pages, run, artifacts):
    assert severe(load(driver, pages["run"])) == []
    K = run.feature_loss.shape[1]
    # the base64 float64 arrays decode in the browser to the input values, exactly
    ys = driver.execute_script("return document.getElementById('loss-plot')._fullData.map(t => Array.from(t.y));")
    assert len(ys) == K + 1
    for k in range(K):
        np.testing.assert_array_equal(ys[k], run.feature_loss[:, k])
    np.testing.assert_array_equal(driver.execute_script(READ_Z, "heatmap-plot", 0), run.attention[-1])
    title = driver.find_element(By.CSS_SELECTOR, "#heatmap-plot .gtitle").text
    assert title == f"Attention and scores at step {run.steps[-1]}"
    screenshot(driver, artifacts / "explorer_run.png")
    assert (artifacts / "explorer_run.png").stat().st_size > 20_000  # a drawn page, not a blank one


def test_slider_click_shows_that_steps_matrices(driver, pages, run):
    load(driver, pages["run"])
    T = len(run.steps)
    ticks = driver.find_elements(By.CSS_SELECTOR, "#heatmap-plot .slider-tick-rect")
    assert len(ticks) == T
    before = driver.execute_script(READ_Z, "heatmap-plot", 0)
    i = 17
    ActionChains(driver).move_to_element(ticks[i]).click().perform()  # a real click on the slider's rail
    WebDriverWait(driver, 10).until(lambda d: d.find_element(
        By.CSS_SELECTOR, "#heatmap-plot .gtitle").text.endswith(f"step {run.steps[i]}"))
    assert driver.execute_script("return document.getElementById('heatmap-plot').layout.sliders[0].active") == i
    after = driver.execute_script(READ_Z, "heatmap-plot", 0)
    assert not np.array_equal(after, before)
    np.testing.assert_array_equal(after, run.attention[i])
    np.testing.assert_array_equal(driver.execute_script(READ_Z, "heatmap-plot", 1), run.scores[i])
    assert severe(driver.get_log("browser")) == []


def test_legend_click_hides_one_feature(driver, pages):
    load(driver, pages["run"])
    items = driver.find_elements(By.CSS_SELECTOR, "#loss-plot .legend .traces")
    item = next(e for e in items if e.find_element(By.CSS_SELECTOR, ".legendtext").text == "feature 2")
    drawn = "return document.querySelectorAll('#loss-plot .scatterlayer .trace').length"
    assert driver.execute_script(drawn) == 5  # 4 features + total loss
    ActionChains(driver).move_to_element(item.find_element(By.CSS_SELECTOR, ".legendtoggle")).click().perform()
    visible = "return document.getElementById('loss-plot').data.map(t => t.visible === undefined ? true : t.visible)"
    # plotly waits out the double-click delay before toggling
    WebDriverWait(driver, 5).until(lambda d: d.execute_script(visible)[1] == "legendonly")
    assert driver.execute_script(visible) == [True, "legendonly", True, True, True]  # only feature 2
    assert driver.execute_script(drawn) == 4


def test_hover_shows_step_and_value(driver, pages, run):
    load(driver, pages["run"])
    t = 20
    driver.execute_script("Plotly.Fx.hover('loss-plot', [{curveNumber: 1, pointNumber: arguments[0]}]);", t)
    label = driver.find_element(By.CSS_SELECTOR, "#loss-plot .hoverlayer .hovertext").text
    v = run.feature_loss[t, 1]
    assert 1e-3 < v < 1  # so d3's '.6~g' and Python's '.6g' write it the same way
    assert "feature 2" in label and f"step {run.steps[t]}" in label and f"loss {v:.6g}" in label
    # heatmap: query feature 2 (row), key feature 3 (column) of the displayed (last) step
    driver.execute_script("Plotly.Fx.hover('heatmap-plot', {xval: 3, yval: 2}, 'xy');")
    label = driver.find_element(By.CSS_SELECTOR, "#heatmap-plot .hoverlayer .hovertext").text
    assert "query feature k = 2" in label and "key feature n = 3" in label
    assert f"attention {run.attention[-1, 1, 2]:.6g}" in label


def _cell_center(driver, x_label: str, y_label: str) -> tuple[float, float]:
    """Viewport pixel of a sweep heatmap cell (category axes: the label's index)."""
    return driver.execute_script(
        "var gd=document.getElementById('sweep-plot'),L=gd._fullLayout,r=gd.getBoundingClientRect(),"
        "h=gd._fullData[0];return [r.left+L.xaxis._offset+L.xaxis.l2p(h.x.indexOf(arguments[0])),"
        "r.top+L.yaxis._offset+L.yaxis.l2p(h.y.indexOf(arguments[1]))];", x_label, y_label)


def _click(driver, xy: tuple[float, float]) -> None:
    actions = ActionChains(driver)
    actions.w3c_actions.pointer_action.move_to_location(int(xy[0]), int(xy[1])).pause(0.2).click()
    actions.perform()


def test_sweep_click_fills_run_plot(driver, pages, artifacts):
    assert severe(load(driver, pages["sweep"])) == []
    ntraces = "return document.getElementById('sweep-run-plot').data.length"
    msg = lambda d: d.find_element(By.ID, "sweep-run-message").text  # noqa: E731
    assert driver.execute_script(ntraces) == 0
    # a cell without kept trajectories: hover says 'not reached', the click says why nothing is shown
    _click(driver, _cell_center(driver, "16", "0.1"))
    assert "not reached (1 of 3 runs)" in driver.find_element(By.CSS_SELECTOR, "#sweep-plot .hovertext").text
    WebDriverWait(driver, 5).until(lambda d: NOT_KEPT in msg(d))
    assert driver.execute_script(ntraces) == 0
    # a cell with two kept runs: the first one's K curves, exactly; the select switches to the other
    _click(driver, _cell_center(driver, "4", "0.1"))
    WebDriverWait(driver, 5).until(lambda d: d.execute_script(ntraces) == 4)
    assert msg(driver) == f"{X} = 4, {Y} = 0.1: run {KEPT[0]}"
    ys = driver.execute_script("return document.getElementById('sweep-run-plot')._fullData.map(t => Array.from(t.y))")
    want = synthetic_run().feature_loss
    for k in range(4):
        np.testing.assert_array_equal(ys[k], want[:, k])
    select = Select(driver.find_element(By.ID, "sweep-run-select"))
    assert [o.text for o in select.options] == ["seed 0", "seed 1"]
    select.select_by_index(1)
    WebDriverWait(driver, 5).until(lambda d: msg(d).endswith(KEPT[1]))
    assert driver.find_element(By.CSS_SELECTOR, "#sweep-run-plot .gtitle").text == f"run {KEPT[1]}: K 4, lr 0.1"
    assert driver.find_element(By.CSS_SELECTOR, "#sweep-run-plot .xtitle").text == "step + 1"
    assert severe(driver.get_log("browser")) == []
    _hover_off = ActionChains(driver)
    _hover_off.w3c_actions.pointer_action.move_to_location(5, 5)  # no hover label over the cells
    _hover_off.perform()
    screenshot(driver, artifacts / "explorer_sweep.png")
    assert (artifacts / "explorer_sweep.png").stat().st_size > 20_000
