"""schedule.py: logged steps, chunks, and stop_at_eps."""

from __future__ import annotations

import numpy as np
import pytest

from icl_dynamics.config import load_config
from icl_dynamics.engines import build_engine
from icl_dynamics.schedule import CHUNK_ROWS, StopAtEps, log_schedule, stop_rule
from icl_dynamics.trainer import run_training, train_batched

BASE = ["data.num_features=4", "data.prompt_length=64", "train.expectation=mean_field", "train.steps=5000"]


def test_stop_rule_on_a_known_curve():
    """Every feature <= eps from step 100 on (row 10 of steps 0, 10, 20, ...): with factor 1.5 the run stops at
    the chunk containing step 150 (row 15), so it keeps 16 rows; factor 2 -> step 200 (row 20) -> 32 rows."""
    steps = np.arange(0, 1000, 10)
    fl = np.where(steps[:, None] >= 100, 1e-3, 1.0) * np.ones((1, 3))
    assert StopAtEps(1e-2, 1.5).crossing(steps, fl) == 100
    assert StopAtEps(1e-2, 1.5).rows(steps, fl) == CHUNK_ROWS
    assert StopAtEps(1e-2, 2.0).rows(steps, fl) == 2 * CHUNK_ROWS
    assert StopAtEps(1e-4, 2.0).rows(steps, fl) is None  # never reached: go on


def test_stop_at_eps_ends_a_run_early_and_keeps_its_start():
    """The stopped run equals the full run's first rows bit for bit (same computation), ends within one chunk
    of factor x the crossing, and a control without the flag runs to train.steps."""
    full = run_training(load_config(None, BASE), progress=False).trajectory
    cut = run_training(load_config(None, [*BASE, "train.stop_at_eps=true", "train.stop_factor=1.2"]),
                       progress=False).trajectory
    T = len(cut.steps)
    assert T % CHUNK_ROWS == 0 and T < len(full.steps) and full.steps[-1] == 5000
    assert np.array_equal(cut.feature_loss, full.feature_loss[:T])
    crossing = StopAtEps(1e-2, 1.2).crossing(full.steps, full.feature_loss)
    assert crossing is not None and cut.steps[-1] >= 1.2 * crossing
    assert cut.steps[T - CHUNK_ROWS - 1] < 1.2 * crossing  # not a chunk later than needed


def test_batched_members_stop_where_single_runs_stop():
    """In one vmapped batch each member's trajectory ends at the row its own single run ends at (vmapped
    arithmetic may differ from single runs in the last bits: 1e-12 relative)."""
    cfgs = [load_config(None, [*BASE, "train.stop_at_eps=true", f"data.dominant_prob={p}"]) for p in (0.5, 0.8)]
    batch = train_batched([build_engine(c) for c in cfgs], log_schedule(5000), None, stop_rule(cfgs[0]))
    for c, res in zip(cfgs, batch):
        single = run_training(c, progress=False).trajectory
        assert np.array_equal(res.trajectory.steps, single.steps)
        np.testing.assert_allclose(res.trajectory.feature_loss, single.feature_loss, rtol=1e-12, atol=1e-15)
    assert batch[0].trajectory.steps[-1] != batch[1].trajectory.steps[-1]  # they really stopped apart


@pytest.mark.parametrize("steps, every", [(10, None), (1000, 7), (5, 1)])
def test_log_schedule_starts_at_0_and_ends_at_steps(steps, every):
    s = log_schedule(steps, every)
    assert s[0] == 0 and s[-1] == steps and np.all(np.diff(s) > 0)
