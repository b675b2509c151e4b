"""runner.py: one run end to end (most of it is exercised by test_cli and test_checkpoint)."""

from __future__ import annotations

from icl_dynamics.cli import main

TINY_RUN = ["--set", "data.num_features=3", "--set", "data.prompt_length=8", "--set", "train.expectation=mean_field",
            "--set", "train.steps=20", "--quiet"]


def test_an_unfinished_run_points_to_resume(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoint.npz").write_bytes(b"")
    rc = main(["train", *TINY_RUN, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--resume" in err[0]
    assert (out / "checkpoint.npz").exists()  # nothing the user had is removed
