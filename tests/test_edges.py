"""Edge cases found in review: late transients, pinned sweep dimensions, memory limits, output paths, file
modes. Each asserts an exact, theory-free property (an event that cannot persist, a value the user set)."""

from __future__ import annotations

import os
import stat

import numpy as np

from icl_dynamics.cli import main
from icl_dynamics.phases import PERSIST_ROWS, crossing
from icl_dynamics.storage import atomic_write_text
from icl_dynamics.sweeps import expand, load_spec

TINY = ["--set", "data.num_features=3", "--set", "data.prompt_length=8", "--set", "train.expectation=mean_field",
        "--set", "train.steps=20", "--quiet"]


def test_a_crossing_on_the_last_rows_cannot_show_persistence():
    steps = np.arange(100.0)
    x = np.zeros(100)
    x[-1] = 1.0  # one spike on the last row: no rows after it to persist
    assert crossing(steps, x, 0.5, 0.05) is None
    x[-PERSIST_ROWS - 1:] = 1.0  # the same rise held for PERSIST_ROWS more rows is an event at its first row
    assert crossing(steps, x, 1.0, 0.05) == steps[-PERSIST_ROWS - 1]


def test_sweep_keeps_a_dim_set_in_its_base(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("base: {data.dim: 4, data.num_features: 4, train.steps: 5, train.expectation: mean_field}\n"
                    "grid: {data.num_features: [2, 4]}\n")
    dims = sorted((r.config.data.num_features, r.config.data.dim) for r in expand(load_spec(spec)))
    assert dims == [(2, 4), (4, 4)]


def test_array_sizes_beyond_memory_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--set", "train.engine=tokens", "--set", "data.prompt_length=100000000", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "memory ceiling" in err[0] and "GiB" in err[0]
    assert not out.exists()


def test_plot_out_that_is_a_file_is_one_line(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    capsys.readouterr()
    rc = main(["plot", str(out), "--out", str(out / "config.yaml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "not a directory" in err[0]


def test_an_unfinished_run_points_to_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"")
    rc = main(["train", *TINY, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--resume" in err[0]
    assert (out / "checkpoint.npz").exists()  # nothing the user had is removed


def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path):
    old = os.umask(0o027)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with open(tmp_path / "b.txt", "w") as f:
            f.write("x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode == stat.S_IMODE((tmp_path / "b.txt").stat().st_mode) == 0o640


def test_tokens_engine_loss_is_the_literal_forward_pass():
    """The engine's per-feature regrouping equals the paper's literal F(E)[d, N] on the same prompts, in value
    and gradient, with d > K (random orthonormal V) and both softmax options: to round-off (1e-12)."""
    import jax
    import jax.numpy as jnp

    from icl_dynamics.config import load_config
    from icl_dynamics.data import sample_prompts
    from icl_dynamics.model import embed, literal_forward
    from icl_dynamics.engines import build_engine
    from icl_dynamics.engines import tokens as T

    for include_query in (False, True):
        cfg = load_config(None, ["data.num_features=3", "data.dim=5", "data.prompt_length=7", "train.engine=tokens",
                                 f"model.include_query_in_softmax={str(include_query).lower()}"])
        e = build_engine(cfg)
        st, c = e.static, e.consts
        pr = sample_prompts(jax.random.PRNGKey(3), c.probs, 64, 7, 5)
        Q = jax.random.normal(jax.random.PRNGKey(4), (5, 5), jnp.float64)

        def literal(Q):
            x = jnp.moveaxis(c.V[:, pr.feat], 0, 1)  # (B, d, N+1)
            y = jnp.einsum("bdi,bd->bi", x, pr.w)
            yhat = literal_forward(embed(x, y), Q, include_query)[:, 5, 7]
            return 0.5 * jnp.mean((yhat - y[:, -1]) ** 2)

        ours, g_ours = jax.value_and_grad(T.prompts_loss)(Q, st, c, pr)
        ref, g_ref = jax.value_and_grad(literal)(Q)
        np.testing.assert_allclose(ours, ref, rtol=1e-12)
        np.testing.assert_allclose(g_ours, g_ref, rtol=1e-10, atol=1e-13)
