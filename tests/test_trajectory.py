"""trajectory.py: the records and the one owner of their shapes."""

from __future__ import annotations

import numpy as np

from icl_dynamics.trajectory import Metrics, Trajectory, expected_shapes, from_arrays, stack_rows, to_arrays


def _metrics(R: int, K: int, start: float) -> Metrics:
    r = np.arange(R, dtype=np.float64)[:, None] + start
    return Metrics(r[:, 0], np.repeat(r, K, 1), np.repeat(r[:, :, None], K, 1).repeat(K, 2) * 0 + r[:, :, None],
                   np.zeros((R, K, K)))


def test_stack_rows_drops_padding_and_post_divergence_repeats():
    """Chunks pad by repeating the last step, and a diverged run repeats its last step: only increasing
    steps are kept, with their own rows (exact: a selection)."""
    steps = [np.array([0, 1, 2, 2]), np.array([2, 2, 5, 7])]
    rows = stack_rows(steps, [_metrics(4, 3, 0.0), _metrics(4, 3, 10.0)])
    assert list(rows.steps) == [0, 1, 2, 5, 7] and rows.steps.dtype == np.int64
    assert list(rows.loss) == [0.0, 1.0, 2.0, 12.0, 13.0]
    for k, shape in expected_shapes(5, 3).items():
        assert getattr(rows, k).shape == shape


def test_arrays_round_trip():
    t = stack_rows([np.array([0, 3, 9])], [_metrics(3, 2, 1.5)])
    back = from_arrays(to_arrays(t, np.array([0.7, 0.3])))
    assert isinstance(back, Trajectory) and back.steps.dtype == np.int64
    for name in Trajectory._fields:
        assert np.array_equal(getattr(back, name), getattr(t, name))
