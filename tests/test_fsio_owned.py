"""Ownership markers (issue 14): --overwrite deleted a user's own config.yaml in an --out the tool had not
made. Now only folders carrying our marker are reused, and only the files we own in them are deleted.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import one_line

from icl_dynamics.errors import RunDirError
from icl_dynamics.fsio_owned import MARKER, is_owned, mark_owned, marker_kind, prepare_owned_dir


def test_overwrite_never_deletes_a_users_folder(tmp_path: Path) -> None:
    """--overwrite deleted a user's config.yaml in an --out the tool had not made: refused, file intact."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("precious")
    with pytest.raises(RunDirError) as err:
        prepare_owned_dir(out, "run", True, ["config.yaml"])
    one_line(err, "mine", "no marker", "choose a new --out")
    assert (out / "config.yaml").read_text() == "precious" and not (out / MARKER).exists()


def test_overwrite_in_a_marked_folder_deletes_only_owned_files(tmp_path: Path) -> None:
    """Only owned entries and their temporaries go; user files, links' targets and unmarked folders stay."""
    out = prepare_owned_dir(tmp_path / "a" / "run", "run", False, [])  # parents created, marked
    assert is_owned(out, "run") and not is_owned(out, "sweep")
    outside = tmp_path / "outside.txt"
    outside.write_text("keep")
    (out / "config.yaml").write_text("old")
    (out / ".config.yaml.0123456789ab.tmp").write_text("half")
    (out / "notes.txt").write_text("user")
    (out / "summary.json").symlink_to(outside)  # an owned name planted as a link: the link goes, not outside
    (out / "rows").mkdir()
    (out / "rows" / "1.parquet").write_text("r")
    (out / "rows" / "keep.txt").write_text("u")
    (out / "runs" / "x").mkdir(parents=True)
    mark_owned(out / "runs" / "x", "run")
    (out / "runs" / "y").mkdir()  # not ours: kept
    (out / "figures").symlink_to(tmp_path)  # a symlink on the way to owned files: not followed
    (tmp_path / "fig.png").write_text("outside figure")
    with pytest.raises(RunDirError) as err:
        prepare_owned_dir(out, "run", False, ["config.yaml"])
    one_line(err, "run", "pass --overwrite")
    with pytest.raises(RunDirError) as err:
        prepare_owned_dir(out, "sweep", True, [])
    one_line(err, "holds an icl-dynamics run, not a sweep")
    owned = ["config.yaml", "summary.json", "rows/*.parquet", "runs/*", "figures/fig.png"]
    assert prepare_owned_dir(out, "run", True, owned) == out
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    assert left == [MARKER, "figures", "notes.txt", "rows", "rows/keep.txt", "runs", "runs/y"]
    assert outside.read_text() == "keep" and (tmp_path / "fig.png").read_text() == "outside figure"


def test_prepare_owned_dir_takes_an_empty_folder_and_follows_a_user_symlink(tmp_path: Path) -> None:
    """An empty folder is adopted; --out given as a symlink is followed once and the real folder returned,
    so later writes never go through a link."""
    (tmp_path / "empty").mkdir()
    assert prepare_owned_dir(tmp_path / "empty", "figures", False, []) == tmp_path / "empty"
    assert marker_kind(tmp_path / "empty") == "figures"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert prepare_owned_dir(tmp_path / "link", "sweep", False, []) == tmp_path / "real"


@pytest.mark.parametrize("case, reason", [("file", "regular file"), ("loop", "Too many levels"),
                                          ("through_file", "Not a directory"), ("long", "File name too long")])
def test_prepare_owned_dir_bad_paths(tmp_path: Path, case: str, reason: str) -> None:
    """A file, a symlink loop, a path through a file, an over-long name: RunDirError, one line."""
    if case == "file":
        path = tmp_path / "f"
        path.write_text("")
    elif case == "loop":
        path = tmp_path / "loop"
        path.symlink_to(path)
    elif case == "through_file":
        (tmp_path / "afile").write_text("")
        path = tmp_path / "afile" / "run"
    else:
        path = tmp_path / ("n" * 300)
    with pytest.raises(RunDirError) as err:
        prepare_owned_dir(path, "run", True, [])
    one_line(err, reason)


def test_planted_marker_symlink_does_not_count(tmp_path: Path) -> None:
    """A marker that is a symlink (to a real marker elsewhere) is not ours: the folder stays protected."""
    ours = prepare_owned_dir(tmp_path / "ours", "run", False, [])
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "data.txt").write_text("x")
    (victim / MARKER).symlink_to(ours / MARKER)
    assert not is_owned(victim, "run")
    with pytest.raises(RunDirError):
        prepare_owned_dir(victim, "run", True, ["data.txt"])
    assert (victim / "data.txt").exists()
