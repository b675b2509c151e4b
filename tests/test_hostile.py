"""Issue 14, the hostile review: one test per numbered finding, each replaying the original command or
situation through the CLI (in-process, ``cli.main``) and asserting the fixed behaviour: one stderr line with
no traceback and the documented exit code (errors.py), the user's files unchanged, memory refused before it
is allocated.

Tests that need a second process, a signal or a kill are in test_hostile_procs.py, full and read-only disks
in test_hostile_mounts.py, the generated suite of several hundred inputs in test_hostile_suite.py. The
helpers here (``call``, ``one_line``, ``snapshot``, the tiny run ``S``) are shared by those files.

Finding -> test: every test is named ``test_fNN_...`` after its finding.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import stat
import struct
import time
import tracemalloc
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from icl_dynamics import cli
from icl_dynamics.fsio_owned import MARKER

pytestmark = pytest.mark.user_defaults  # end to end: the package turns float64 on by itself

# the tiny, fast run of the commands
S_KEYS = ["data.num_features=4", "data.prompt_length=16", "train.steps=50", "train.expectation=mean_field"]
S = [x for kv in S_KEYS for x in ("--set", kv)]
# a 32-run sweep (8 x 4 seeds) in 8 committed parts of 4 rows, as in finding 4 ("28 of 32 rows")
SWEEP = {"base": {"data.num_features": 3, "data.prompt_length": 8, "train.steps": 30,
                  "train.expectation": "monte_carlo", "train.count_samples": 16},
         "grid": {"data.dominant_prob": {"linspace": [0.4, 0.8, 8]}}, "seeds": 4, "max_batch": 4}


# ---------------------------------------------------------------------------------------------- helpers

class Result(NamedTuple):
    code: int
    out: str
    err: list[str]


def call(argv: list[str]) -> Result:
    """``icl-dynamics ARGV`` in this process. An exception escaping ``cli.main`` (what a user would see as a
    traceback) fails the test where it happens; ``--help`` / ``--version`` exit through SystemExit(0)."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            code = cli.main([str(a) for a in argv])
        except SystemExit as e:  # argparse's --help and --version
            code = e.code or 0
    return Result(code, out.getvalue(), err.getvalue().splitlines())


def one_line(r: Result, code: int, *names: str) -> str:
    """``r`` ended with exit ``code`` and exactly one stderr line, an error naming each of ``names``."""
    assert r.code == code, (r.code, r.err)
    assert len(r.err) == 1, r.err
    line = r.err[0]
    assert "Traceback" not in line and line.startswith("icl-dynamics: "), line
    assert len(line) <= cli.MAX_MESSAGE + 30, line
    for name in names:
        assert name in line, (name, line)
    return line


def snapshot(*roots: Path) -> dict[str, tuple]:
    """Every file, folder and link under ``roots`` (not following links): kind, mode, size, mtime, and the
    SHA-256 of a regular file, or the target of a link. Equal snapshots: nothing was changed."""
    found: dict[str, tuple] = {}
    for root in roots:
        paths = [root] + (sorted(root.rglob("*")) if root.is_dir() and not root.is_symlink() else [])
        for p in paths:
            try:
                st = os.lstat(p)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(st.st_mode):  # a huge (sparse) file: its size and mtime stand for its content
                extra = hashlib.sha256(p.read_bytes()).hexdigest() if st.st_size < 2**24 else None
            elif stat.S_ISLNK(st.st_mode):
                extra = os.readlink(p)
            else:
                extra = None
            found[str(p)] = (stat.S_IFMT(st.st_mode), st.st_mode, st.st_size if not stat.S_ISDIR(st.st_mode)
                             else None, st.st_mtime_ns if not stat.S_ISDIR(st.st_mode) else None, extra)
    return found


def copy_run(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, symlinks=True, ignore=shutil.ignore_patterns(".lock", "figures"))
    return dst


def sets(pairs: list[str]) -> list[str]:
    return [x for kv in pairs for x in ("--set", kv)]


_BUILT: dict[str, Path] = {}  # once per process, however many test_hostile* modules import the fixtures


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """A finished run of ``S`` (trained once, in this process); tests work on copies."""
    if "run" not in _BUILT:
        out = tmp_path_factory.mktemp("hostile_run") / "run"
        r = call(["train", "--quiet", *S, "--out", out])
        assert r.code == 0, r.err
        _BUILT["run"] = out
    return _BUILT["run"]


@pytest.fixture(scope="session")
def tiny_sweep(tmp_path_factory) -> Path:
    """The finished 32-run sweep ``SWEEP``; tests work on copies."""
    if "sweep" not in _BUILT:
        d = tmp_path_factory.mktemp("hostile_sweep")
        (d / "s.yaml").write_text(yaml.safe_dump(SWEEP))
        r = call(["sweep", d / "s.yaml", "--out", d / "sw", "--workers", "1", "--quiet"])
        assert r.code == 0, r.err
        _BUILT["sweep"] = d / "sw"
    return _BUILT["sweep"]


@pytest.fixture
def run_copy(tiny_run, tmp_path) -> Path:
    return copy_run(tiny_run, tmp_path / "run")


@pytest.fixture
def sweep_copy(tiny_sweep, tmp_path) -> tuple[Path, Path]:
    """(a copy of the sweep directory, its spec file)."""
    d = shutil.copytree(tiny_sweep, tmp_path / "sw", ignore=shutil.ignore_patterns(".lock", "figures"))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SWEEP))
    return d, tmp_path / "s.yaml"


def rows_of(sweep_dir: Path) -> list[str]:
    return pq.read_table(sweep_dir / "sweep.parquet").column("config_hash").to_pylist()


def rewrite_npz(path: Path, **changes) -> None:
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    arrays.update(changes)
    np.savez(path, **arrays)


# ------------------------------------------------------------------------ 1. --overwrite and plot --out

def test_f01_overwrite_never_deletes_a_users_files(tmp_path):
    """`mkdir p; echo x > p/config.yaml; train S --out p --overwrite` deleted the user's config.yaml."""
    p = tmp_path / "p"
    p.mkdir()
    (p / "config.yaml").write_text("x\n")
    (p / "trajectory.npz").write_bytes(b"the user's own file")
    before = snapshot(p)
    one_line(call(["train", *S, "--out", p, "--overwrite", "--quiet"]), 2, "'", "no marker")
    assert snapshot(p) == before and not (p / MARKER).exists()


def test_f01_overwrite_of_our_run_keeps_the_users_extra_files(run_copy):
    """In a folder we made, --overwrite removes our artifacts only; a user's notes stay byte for byte."""
    (run_copy / "notes.txt").write_text("mine")
    (run_copy / "analysis").mkdir()
    (run_copy / "analysis" / "fig.png").write_bytes(b"png")
    before = snapshot(run_copy / "notes.txt", run_copy / "analysis")
    r = call(["train", *S, "--out", run_copy, "--overwrite", "--quiet"])
    assert r.code == 0, r.err
    assert snapshot(run_copy / "notes.txt", run_copy / "analysis") == before


def test_f01_a_users_lock_file_is_never_truncated_or_removed(tmp_path):
    """Found while replaying finding 1: a folder holding only the user's own `.lock` counted as empty, so
    train adopted it, truncated the file to write its pid and deleted it at the end. Now a `.lock` the tool
    did not create in a folder without our marker is refused by name and left as it is."""
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SWEEP))
    for name, content in (("alone", b"important\n"), ("empty", b""), ("with_pid_and_data", b"123\n")):
        p = tmp_path / name
        p.mkdir()
        (p / ".lock").write_bytes(content)
        if name == "with_pid_and_data":
            (p / "data.csv").write_text("1,2\n")
        before = snapshot(p)
        one_line(call(["train", *S, "--out", p, "--quiet"]), 2, ".lock", "no marker")
        one_line(call(["sweep", tmp_path / "s.yaml", "--out", p, "--quiet"]), 2, ".lock", "no marker")
        assert snapshot(p) == before


def test_f01_plot_out_never_replaces_a_users_figure(tiny_run, tmp_path):
    """`plot RUN --out DIR` where DIR holds the user's own feature_loss.png must not replace it silently."""
    d = tmp_path / "figs"
    d.mkdir()
    (d / "feature_loss.png").write_bytes(b"the user's figure")
    before = snapshot(d)
    one_line(call(["plot", tiny_run, "--out", d]), 2, "figs")
    assert snapshot(d) == before


# ------------------------------------------------------------------------------ 2. two writers (more in
# test_hostile_procs.py, with real second processes)

def test_f02_reproduce_takes_the_folder_lock(tmp_path, monkeypatch):
    """A report folder another writer holds is refused at once, naming the holder; the experiments never
    start (run_all is replaced by a tripwire here)."""
    import icl_dynamics.reproduce as rep
    from icl_dynamics.fsio import DirLock

    def tripwire(*a, **k):
        raise AssertionError("reproduce ran while another process held the folder")

    monkeypatch.setattr(rep, "run_all", tripwire)
    with DirLock(tmp_path / "report"):
        one_line(call(["reproduce", "--quick", "--quiet", "--out", tmp_path / "report"]), 2,
                 f"(pid {os.getpid()})")


# ------------------------------------------------------------------------------- 3. --out /dev/null

def test_f03_plot_sweep_out_dev_null_leaves_the_device(tiny_sweep):
    """plot-sweep --out /dev/null replaced the device node with a PNG."""
    before = os.stat("/dev/null")
    line = one_line(call(["plot-sweep", tiny_sweep, "--x", "data.dominant_prob", "--value", "final_loss",
                          "--out", "/dev/null"]), 2, "/dev/null", "character device")
    assert "refusing" in line
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino


def test_f03_plot_out_dev_null_leaves_the_device(tiny_run):
    before = os.stat("/dev/null")
    one_line(call(["plot", tiny_run, "--out", "/dev/null"]), 2, "/dev/null")
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino


# ------------------------------------------------------------------------------------ 4. sweep rows

def test_f04_rows_part_replaced_by_a_directory(sweep_copy):
    """A rows part replaced by a directory made the rerun rewrite sweep.parquet with 28 of 32 rows. Now the
    rerun warns about the part and takes its runs from sweep.parquet (32 rows, never written shorter); with
    sweep.parquet gone too, it computes those 4 runs again and commits them beside the folder. The folder
    (the user's now) is never touched."""
    sw, spec = sweep_copy
    parts = sorted((sw / "rows").glob("*.parquet"))
    assert len(parts) == 8 and len(rows_of(sw)) == 32
    parts[0].unlink()
    parts[0].mkdir()
    (parts[0] / "inside.txt").write_text("user")
    before = snapshot(parts[0])
    r = call(["sweep", spec, "--out", sw, "--workers", "1", "--quiet"])  # rows recovered from sweep.parquet
    assert r.code == 0 and len(r.err) == 1 and "unreadable" in r.err[0] and parts[0].name in r.err[0], r.err
    assert "0 computed" in r.out, r.out
    hashes = rows_of(sw)
    assert len(hashes) == 32 and len(set(hashes)) == 32
    assert snapshot(parts[0]) == before
    # and with sweep.parquet gone too: the part's runs are computed again and committed beside the folder
    (sw / "sweep.parquet").unlink()
    r = call(["sweep", spec, "--out", sw, "--workers", "1", "--quiet"])
    assert r.code == 0 and len(r.err) == 1 and "unreadable" in r.err[0], r.err
    assert "4 computed" in r.out, r.out
    hashes = rows_of(sw)
    assert len(hashes) == 32 and len(set(hashes)) == 32
    assert snapshot(parts[0]) == before


def test_f04_stray_rows_part_is_not_merged(sweep_copy):
    """A stray parquet in rows/ was merged (33 rows for 32 runs): now ignored with a warning, by the sweep
    and by plot-sweep's table (load_sweep)."""
    from icl_dynamics.sweeps import load_sweep

    sw, spec = sweep_copy
    rows = pq.read_table(next((sw / "rows").glob("*.parquet"))).to_pylist()[:1]
    rows[0]["config_hash"] = "0123456789abcdef"
    pq.write_table(pa.Table.from_pylist(rows), sw / "rows" / "stray.parquet")
    r = call(["sweep", spec, "--out", sw, "--workers", "1", "--quiet"])
    assert r.code == 0 and len(r.err) == 1 and "stray.parquet" in r.err[0] and "ignored" in r.err[0], r.err
    assert len(rows_of(sw)) == 32 and "0123456789abcdef" not in rows_of(sw)
    assert len(load_sweep(sw)) == 32


def test_f04_sweep_warnings_never_precede_a_refusal(sweep_copy, tmp_path):
    """A sweep's warnings (an idle grid axis, a stray part) are printed only once every refusal has passed,
    so a refused sweep still prints exactly one line."""
    sw, _ = sweep_copy
    idle = {"base": {"data.num_features": 3, "train.steps": 30, "train.expectation": "mean_field"},
            "grid": {"data.prompt_length": [8, 16]}}
    (tmp_path / "idle.yaml").write_text(yaml.safe_dump(idle))
    (tmp_path / "afile").write_text("mine")
    one_line(call(["sweep", tmp_path / "idle.yaml", "--out", tmp_path / "afile"]), 2, "afile")
    one_line(call(["sweep", tmp_path / "idle.yaml", "--out", sw]), 2, "different sweep")
    r = call(["sweep", tmp_path / "idle.yaml", "--out", tmp_path / "new", "--workers", "1", "--quiet"])
    assert r.code == 0 and len(r.err) == 1 and "data.prompt_length" in r.err[0], r.err


# -------------------------------------------------------- 5. a kill between the final writes of a run

FINAL = ["trajectory.npz", "params.npz", "metrics.parquet", "phases.json", "manifest.json", "summary.json"]


@pytest.fixture(scope="module")
def killed_states(tmp_path_factory):
    """One run with checkpoints, its folder copied just before each final write and just after the commit
    (summary.json) while the checkpoint still exists: exactly what a kill -9 at that moment leaves (every
    write is atomic, so a kill mid-write leaves the old state plus a temporary file, planted here too)."""
    from icl_dynamics import storage

    base = tmp_path_factory.mktemp("killed")
    states: dict[str, Path] = {}
    real = storage.atomic_write_bytes
    out = base / "run"

    def spy(path, data, **kw):
        name = Path(path).name
        status = None
        if name == "summary.json":
            status = json.loads(data).get("status")
        if name in FINAL and (name != "summary.json" or status == "completed"):
            where = states[f"before {name}"] = base / f"before_{name}"
            shutil.copytree(out, where, ignore=shutil.ignore_patterns(".lock"))
            (where / f".{name}.0123456789ab.tmp").write_bytes(data[: len(data) // 2])  # the cut-short write
        real(path, data, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(storage, "atomic_write_bytes", spy)
    removed = []
    from icl_dynamics import checkpoint, runner

    real_remove = checkpoint.remove

    def remove(run_dir):  # the moment between the commit point and the checkpoint's removal
        where = states["after summary.json"] = base / "after_summary"
        shutil.copytree(out, where, ignore=shutil.ignore_patterns(".lock"))
        removed.append(run_dir)
        real_remove(run_dir)

    mp.setattr(runner.checkpoint, "remove", remove)
    try:
        r = call(["train", "--quiet", *S, "--set", "train.checkpoint_every=16", "--out", out])
    finally:
        mp.undo()
    assert r.code == 0, r.err
    assert set(states) == {f"before {n}" for n in FINAL} | {"after summary.json"}, sorted(states)
    for where in states.values():
        assert (where / "checkpoint.npz").is_file()
    return out, states


@pytest.mark.parametrize("moment", [f"before {n}" for n in FINAL] + ["after summary.json"])
def test_f05_kill_between_final_writes_resume_and_out_agree(killed_states, moment, tmp_path):
    """A kill at the manifest write left summary "completed" with no manifest and a stale checkpoint;
    --resume said "already finished" while train --out said "continue with --resume". At every moment
    between two final writes both now give the same verdict: resumable (and --resume then finishes with
    the files of the uninterrupted run) or finished (and the stale checkpoint is removed)."""
    ref, states = killed_states
    where = shutil.copytree(states[moment], tmp_path / "run")
    out_says = one_line(call(["train", *S, "--set", "train.checkpoint_every=16", "--out", where, "--quiet"]), 2)
    resumable_by_out = "--resume" in out_says
    r = call(["train", "--resume", where, "--quiet"])
    if resumable_by_out:
        assert r.code == 0, (out_says, r.err)
        for name in ("trajectory.npz", "metrics.parquet", "summary.json", "phases.json", "config.yaml"):
            assert (where / name).read_bytes() == (ref / name).read_bytes(), name
        assert json.loads((where / "manifest.json").read_text())["resumed_from"] > 0
    else:
        line = one_line(r, 2, "already finished")
        assert "pass --overwrite" in out_says, out_says
        assert "completed" in line
    assert not (where / "checkpoint.npz").exists()  # resumed to the end, or a stale one removed
    assert json.loads((where / "summary.json").read_text())["status"] == "completed"
    assert moment.startswith("before") == resumable_by_out  # finished exactly once summary says so


# ---------------------------------------------------------------- 6. configs that exhaust memory

MEMORY_HUNGRY = {  # the configs; each now refused by its memory estimate, before anything is built
    "tokens_dim_40000": (["train.engine=tokens", "data.dim=40000"], "data.dim"),
    "eval_prompts_1e7_K50": (["train.engine=tokens", "train.eval_prompts=10000000", "data.num_features=50"],
                             "train.eval_prompts"),
    "count_samples_1e8": (["train.expectation=monte_carlo", "train.count_samples=100000000"],
                          "train.count_samples"),
    "max_exact_table_1e12_N2000": (["train.expectation=enumerate", "train.max_exact_table=1000000000000",
                                    "data.prompt_length=2000"], "train.max_exact_table"),
    "enumerate_N2000": (["train.expectation=enumerate", "train.max_exact_table=1000000000",
                         "data.prompt_length=2000"], "train.expectation"),
    "log_every_1_976000": (["train.steps=976000", "train.log_every=1", "data.num_features=16"],
                           "train.log_every"),
}


@pytest.mark.parametrize("name", sorted(MEMORY_HUNGRY))
def test_f06_memory_hungry_configs_are_refused_before_allocating(name, tmp_path, monkeypatch):
    """Each passed validation and then exhausted memory. Now: exit 2 naming the key to change, in well under
    a second, with next to no memory allocated (tracemalloc), and --out never created. The same configs
    under a 2 GB address-space limit in a subprocess: test_hostile_procs.py."""
    monkeypatch.setenv("ICL_DYNAMICS_MAX_MEMORY", "2G")
    overrides, key = MEMORY_HUNGRY[name]
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        r = call(["train", "--quiet", *S, *sets(overrides), "--out", tmp_path / "out"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    one_line(r, 2, f"'{key}'")
    assert time.monotonic() - t0 < 10 and peak < 100 * 2**20, peak
    assert not (tmp_path / "out").exists()


def test_f06_memory_ceiling_is_configurable(tmp_path, monkeypatch):
    """The ceiling is ICL_DYNAMICS_MAX_MEMORY: the tiny run is refused at 100K; a
    malformed value is one line naming the variable."""
    monkeypatch.setenv("ICL_DYNAMICS_MAX_MEMORY", "100K")
    one_line(call(["train", *S, "--out", tmp_path / "a"]), 2, "memory ceiling", "ICL_DYNAMICS_MAX_MEMORY")
    monkeypatch.setenv("ICL_DYNAMICS_MAX_MEMORY", "lots")
    one_line(call(["train", *S, "--out", tmp_path / "a"]), 2, "ICL_DYNAMICS_MAX_MEMORY")
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------------------------- 7. huge grids

HUGE_GRIDS = {
    "seeds_1e12": {"seeds": 1_000_000_000_000, "grid": {"seed": [0]}},
    "linspace_1e10": {"grid": {"train.lr": {"linspace": [0.1, 0.9, 10_000_000_000]}}},
    "linspace_1e8": {"grid": {"train.lr": {"linspace": [0.1, 0.9, 100_000_000]}}},
    "three_axes_of_1000": {"grid": {"train.lr": {"linspace": [0.1, 0.9, 1000]},
                                    "data.dominant_prob": {"linspace": [0.3, 0.9, 1000]},
                                    "eps": {"logspace": [0.001, 0.1, 1000]}}},
    "range_1e12": {"grid": {"seed": {"range": [0, 1_000_000_000_000]}}},
    "int_logspace_1e9": {"grid": {"train.steps": {"int_logspace": [1, 1000000, 1_000_000_000]}}},
}


@pytest.mark.parametrize("name", sorted(HUGE_GRIDS))
def test_f07_huge_grids_are_counted_before_expansion(name, tmp_path):
    """`seeds: 1e12`, linspace of 1e10 or 1e8 points, three axes of 1000: refused from their counts (exit 2,
    naming the limit) in well under a second, without building the grid, and --out never created."""
    spec = tmp_path / "s.yaml"
    spec.write_text(yaml.safe_dump(HUGE_GRIDS[name]))
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        r = call(["sweep", spec, "--out", tmp_path / "out", "--workers", "1", "--quiet"])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    line = one_line(r, 2)
    assert "100,000" in line or "100000" in line or "seeds" in line, line
    assert time.monotonic() - t0 < 5 and peak < 50 * 2**20, peak
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------ 8. config files

def test_f08_config_special_and_huge_files(tmp_path):
    """--config /dev/zero read forever, a FIFO blocked, a 50 MB YAML took minutes: all refused at once."""
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    big = tmp_path / "big.yaml"
    with open(big, "wb") as f:  # sparse: 50 MB of size, nothing written
        f.truncate(50 * 2**20)
    cases = {"/dev/zero": "character device", str(fifo): "FIFO", str(big): "larger than",
             str(tmp_path): "directory"}
    for path, words in cases.items():
        t0 = time.monotonic()
        for cmd in (["train", "--out", tmp_path / "out"], ["config", "show"]):
            one_line(call([*cmd, "--config", path]), 2, words)
        one_line(call(["sweep", path, "--out", tmp_path / "out", "--quiet"]), 2, words)
        assert time.monotonic() - t0 < 5, path
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------- 9. YAML bombs

BOMB = "\n".join(["a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
                 + [f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]) + "\n"
DEEP = "[" * 3000 + "]" * 3000


def test_f09_alias_bomb_and_deep_nesting_everywhere(run_copy, tmp_path):
    """A 300-byte alias bomb of nine levels and 3000 nested brackets, in --set, a config file, a sweep spec,
    a run's own config.yaml and summary.json: one line each, at once, nothing written."""
    assert len(BOMB.encode()) < 600
    checks = []
    for name, text in (("bomb", BOMB), ("deep", DEEP), ("deep_map", "a: " + "{a: " * 3000 + "1" + "}" * 3000)):
        f = tmp_path / f"{name}.yaml"
        f.write_text(text)
        checks += [
            (["train", "--out", tmp_path / "o", "--config", f], f.name),
            (["train", "--out", tmp_path / "o", "--set", f"data.probs={text}"], "data.probs"),
            (["sweep", f, "--out", tmp_path / "o", "--quiet"], f.name),
            (["config", "show", "--set", f"seed={text}"], "seed"),
        ]
    for argv, name in checks:
        t0 = time.monotonic()
        one_line(call(argv), 2, name)
        assert time.monotonic() - t0 < 3, argv
    assert not (tmp_path / "o").exists()
    keep = (run_copy / "config.yaml").read_text()
    for text in (BOMB, DEEP):
        (run_copy / "config.yaml").write_text(text)
        before = snapshot(run_copy)
        for cmd in (["plot"], ["phases"], ["train", "--resume"]):
            one_line(call([*cmd, run_copy]), 2, "config.yaml")
        assert snapshot(run_copy) == before
    (run_copy / "config.yaml").write_text(keep)
    (run_copy / "summary.json").write_text(DEEP)
    before = snapshot(run_copy)
    one_line(call(["plot", run_copy]), 2, "summary.json")
    assert snapshot(run_copy) == before


def test_f09_int_tag_on_a_float_is_one_line(tmp_path):
    """`!!int 4.5` raised ValueError from PyYAML's constructor."""
    for argv in (["train", "--set", "train.steps=!!int 4.5", "--out", tmp_path / "o"],
                 ["config", "show", "--set", "seed=!!int 1e3"],
                 ["config", "show", "--set", "seed=!!float abc"],
                 ["config", "show", "--set", "seed=!!python/object:os.system [echo hi]"]):
        one_line(call(argv), 2, "--set")


# ------------------------------------------------------------------------- 10. integers beyond int64

def test_f10_integers_beyond_int64_leave_the_old_run(run_copy, monkeypatch):
    """train.log_every=99999999999999999999 and ICL_DYNAMICS_FAULT=nan@99999999999999999999999 crashed after
    --overwrite had deleted the old run: now refused before --out is touched, the run byte for byte intact."""
    before = snapshot(run_copy)
    for key in ("train.log_every", "train.steps", "seed", "data.num_features", "train.checkpoint_every",
                "data.prompt_length", "train.count_samples", "train.quadrature_nodes"):
        one_line(call(["train", *S, "--set", f"{key}=99999999999999999999", "--out", run_copy, "--overwrite"]),
                 2, f"'{key}'")
    one_line(call(["train", *S, "--set", "seed=-99999999999999999999", "--out", run_copy, "--overwrite"]), 2,
             "'seed'")
    one_line(call(["train", *S, "--set", "seed=1" + "0" * 200, "--out", run_copy, "--overwrite"]), 2, "seed")
    monkeypatch.setenv("ICL_DYNAMICS_FAULT", "nan@99999999999999999999999")
    one_line(call(["train", *S, "--out", run_copy, "--overwrite"]), 2, "ICL_DYNAMICS_FAULT")
    monkeypatch.delenv("ICL_DYNAMICS_FAULT")
    assert snapshot(run_copy) == before


def test_f10_plot_steps_beyond_int64(run_copy):
    """plot RUN --steps 99999999999999999999999 raised OverflowError: one line naming --steps, exit 2."""
    before = snapshot(run_copy)
    for steps in (["99999999999999999999999"], ["0", "9" * 400]):
        one_line(call(["plot", run_copy, "--steps", *steps]), 2, "--steps")
    assert snapshot(run_copy) == before


def test_f10_plot_negative_or_huge_steps_and_feature(run_copy):
    """The other integers of plot: negative --steps (any size) and a --feature beyond int64 or K."""
    before = snapshot(run_copy)
    for argv in (["--steps", "-99999999999999999999999"], ["--steps", "-1"], ["--feature", "9" * 30],
                 ["--feature", "0"], ["--feature", "-9" + "9" * 30]):
        one_line(call(["plot", run_copy, *argv]), 2, argv[0])
    assert snapshot(run_copy) == before


# ----------------------------------------------------------------------------------- 11. OS errors

def test_f11_config_paths_the_os_refuses(tmp_path):
    """--config a symlink loop, a path through a file, a 300-character name, /proc/self/mem: one line naming
    the path and the OS reason."""
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "afile").write_text("")
    cases = {str(tmp_path / "loop"): "Too many levels of symbolic links",
             str(tmp_path / "afile" / "x.yaml"): "Not a directory",
             str(tmp_path / ("n" * 300 + ".yaml")): "File name too long",
             "/proc/self/mem": "/proc"}
    for path, reason in cases.items():
        for argv in (["train", "--out", tmp_path / "o", "--config", path], ["sweep", path, "--out", tmp_path / "o"]):
            one_line(call(argv), 2, reason)
    assert not (tmp_path / "o").exists()


def test_f11_plot_sweep_out_through_a_file(tiny_sweep, tmp_path):
    """plot-sweep --out afile/x.png: one line naming the file, nothing created, the file intact."""
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    one_line(call(["plot-sweep", tiny_sweep, "--x", "data.dominant_prob", "--value", "final_loss", "--out",
                   tmp_path / "afile" / "x.png"]), 2, "afile")
    assert snapshot(tmp_path) == before


def test_f11_plot_out_through_a_file(tiny_run, tmp_path):
    """plot RUN --out afile/figs: one line naming the path and the reason, the file intact."""
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    one_line(call(["plot", tiny_run, "--out", tmp_path / "afile" / "figs"]), 2, "afile")
    assert snapshot(tmp_path) == before


def test_f11_train_out_paths_the_os_refuses(tmp_path):
    """--out through a file, an over-long name, a NUL byte: one line (exit 2), nothing created."""
    (tmp_path / "afile").write_text("mine")
    before = snapshot(tmp_path)
    one_line(call(["train", *S, "--out", tmp_path / "afile" / "run"]), 2, "Not a directory")
    one_line(call(["train", *S, "--out", tmp_path / ("n" * 300)]), 2, "File name too long")
    one_line(call(["train", *S, "--out", f"{tmp_path}/a\0b"]), 2, "NUL")
    one_line(call(["sweep", "/dev/null", "--out", tmp_path / "afile" / "sw"]), 2)
    assert snapshot(tmp_path) == before


# ---------------------------------------------------------------------------------- 12. damaged files

def _npy_header(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    head = io.BytesIO()
    np.lib.format.write_array_header_1_0(head, {"descr": descr, "fortran_order": False, "shape": shape})
    return head.getvalue()


def _forge_member(path: Path, member: str, shape: tuple[int, ...]) -> None:
    """Replace ``member`` of the .npz at ``path`` by a header declaring ``shape`` and 64 bytes of data."""
    with zipfile.ZipFile(path) as zf:
        others = {i.filename: zf.read(i) for i in zf.infolist() if i.filename != f"{member}.npy"}
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in others.items():
            zf.writestr(name, data)
        zf.writestr(f"{member}.npy", _npy_header(shape) + b"\0" * 64)


def _zip64_deflate_bomb(path: Path, members: dict[str, bytes], bomb: str, header: bytes, inflated: int) -> int:
    """An .npz (zip64, deflate) holding ``members`` as they are and member ``bomb``: ``header`` followed by
    zeros up to ``inflated`` bytes. Made without ever holding the inflated bytes: deflate output for a
    block of zeros after a full flush is the same every time, so it is repeated. Returns the file size."""
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = bytes(1 << 22)
    first = co.compress(header + block) + co.flush(zlib.Z_FULL_FLUSH)
    again = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    n = -(-(inflated - len(header)) // len(block))
    entries = [(f"{k}.npy", zlib.compress(v, 9)[2:-4], len(v), zlib.crc32(v)) for k, v in members.items()]
    body = b"".join([first, again * (n - 1), co.flush()])
    entries.append((f"{bomb}.npy", body, len(header) + n * len(block), 0))  # CRC never reached
    with open(path, "wb") as f:
        central = []
        for name, data, size, crc in entries:
            offset = f.tell()
            extra = struct.pack("<HHQQ", 1, 16, size, len(data))
            f.write(struct.pack("<IHHHHHIIIHH", 0x04034B50, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF, 0xFFFFFFFF,
                                len(name), len(extra)) + name.encode() + extra)
            f.write(data)
            extra_c = struct.pack("<HHQQQ", 1, 24, size, len(data), offset)
            central.append(struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 8, 0, 0x21, crc, 0xFFFFFFFF,
                                       0xFFFFFFFF, len(name), len(extra_c), 0, 0, 0, 0, 0xFFFFFFFF)
                           + name.encode() + extra_c)
        start = f.tell()
        cd = b"".join(central)
        f.write(cd)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, len(entries), len(entries), len(cd), start, 0))
        return f.tell()


def test_f12_npy_headers_declaring_a_terabyte(run_copy):
    """An .npy header declaring shape (10**12,) in trajectory.npz (plot, phases) or checkpoint.npz
    (--resume) gave MemoryError: refused from the header, fast, no memory."""
    before = snapshot(run_copy)
    _forge_member(run_copy / "trajectory.npz", "steps", (10**12,))
    tracemalloc.start()
    try:
        for cmd in (["plot"], ["phases"]):
            one_line(call([*cmd, run_copy]), 2, "trajectory.npz", "declares")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20
    # an unfinished run whose checkpoint declares a terabyte of logged rows
    from icl_dynamics import checkpoint

    shutil.copy(run_copy / "params.npz", run_copy / checkpoint.CHECKPOINT)
    _forge_member(run_copy / checkpoint.CHECKPOINT, "rows_steps", (10**12,))
    (run_copy / "summary.json").write_text(json.dumps({"status": "interrupted"}))
    one_line(call(["train", "--resume", run_copy]), 2, "checkpoint.npz", "declares")
    assert set(snapshot(run_copy)) == set(before) | {str(run_copy / "checkpoint.npz")}


def test_f12_compressed_trajectory_inflating_to_12_gb(run_copy, monkeypatch):
    """A 12 MB trajectory.npz that inflates to 12 GB was read into memory by plot and phases. Now refused from
    the zip directory and .npy headers before any data is inflated: the arrays a run directory may declare
    are bounded by its own config's memory estimate (storage.read_budget), and by the ceiling."""
    monkeypatch.setenv("ICL_DYNAMICS_MAX_MEMORY", "64G")  # the config's own budget must refuse it
    with np.load(run_copy / "trajectory.npz") as z:
        arrays = {k: z[k] for k in z.files}
    K = arrays["probs"].shape[0]
    rows = 12 * 10**9 // (8 * K * K)
    members = {}
    for k, v in arrays.items():
        if k != "scores":
            buf = io.BytesIO()
            np.save(buf, v)
            members[k] = buf.getvalue()
    size = _zip64_deflate_bomb(run_copy / "trajectory.npz", members, "scores", _npy_header((rows, K, K)),
                               12 * 10**9)
    assert size < 20 * 2**20
    with zipfile.ZipFile(run_copy / "trajectory.npz") as zf:  # a well-formed zip that claims 12 GB
        assert zf.getinfo("scores.npy").file_size >= 12 * 10**9
    tracemalloc.start()
    t0 = time.monotonic()
    try:
        for cmd in (["plot"], ["phases"], ["explore"]):
            one_line(call([*cmd, run_copy]), 2, "trajectory.npz", "scores")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20 and time.monotonic() - t0 < 10


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_f12_negative_or_nan_steps(run_copy, bad):
    """Negative or NaN steps in trajectory.npz reached phase detection: one line naming the file."""
    with np.load(run_copy / "trajectory.npz") as z:
        steps = z["steps"].astype(np.float64)
    steps[0 if bad < 0 else 3] = bad
    rewrite_npz(run_copy / "trajectory.npz", steps=steps)
    before = snapshot(run_copy)
    for cmd in (["plot"], ["phases"]):
        one_line(call([*cmd, run_copy]), 2, "trajectory.npz", "steps")
    assert snapshot(run_copy) == before


def test_f12_phases_json_as_a_directory(run_copy):
    """phases.json as a directory: `phases` refuses to replace it (one line), the directory intact."""
    (run_copy / "phases.json").unlink()
    (run_copy / "phases.json").mkdir()
    (run_copy / "phases.json" / "mine.txt").write_text("keep")
    before = snapshot(run_copy)
    one_line(call(["phases", run_copy]), 2, "phases.json", "directory")
    assert snapshot(run_copy) == before


def test_f12_sweep_table_as_a_directory_and_rows_as_a_file(sweep_copy):
    """sweep.parquet as a directory, rows/ as a file: the sweep refuses before computing anything (one line),
    plot-sweep draws from rows/ or refuses in one line; nothing of the user's changes."""
    sw, spec = sweep_copy
    (sw / "sweep.parquet").unlink()
    (sw / "sweep.parquet").mkdir()
    before = snapshot(sw)
    one_line(call(["sweep", spec, "--out", sw, "--workers", "1", "--quiet"]), 2, "sweep.parquet", "directory")
    assert snapshot(sw) == before
    r = call(["plot-sweep", sw, "--x", "data.dominant_prob", "--value", "final_loss"])
    assert r.code == 0, r.err
    shutil.rmtree(sw / "rows")
    (sw / "rows").write_text("mine")
    shutil.rmtree(sw / "sweep.parquet")
    shutil.rmtree(sw / "figures")
    before = snapshot(sw)
    one_line(call(["sweep", spec, "--out", sw, "--workers", "1", "--quiet"]), 2, "rows")
    one_line(call(["plot-sweep", sw, "--x", "data.dominant_prob", "--value", "final_loss"]), 2, "rows")
    assert snapshot(sw) == before


def test_f12_rows_part_without_config_hash(sweep_copy):
    """A rows part missing config_hash: its runs are done again (warning), the table has every run once."""
    sw, spec = sweep_copy
    part = sorted((sw / "rows").glob("*.parquet"))[2]
    pq.write_table(pq.read_table(part).drop(["config_hash"]), part)
    (sw / "sweep.parquet").unlink()
    r = call(["sweep", spec, "--out", sw, "--workers", "1", "--quiet"])
    assert r.code == 0 and any(part.name in e and "unreadable" in e for e in r.err), r.err
    assert len(rows_of(sw)) == 32 and len(set(rows_of(sw))) == 32


# ---------------------------------------------------------------------------------------- 14. YAML 1.2

def test_f14_yaml_1_1_surprises_and_duplicate_keys(tmp_path):
    """`010` was read as 8 and `1:30` as 90; duplicate keys kept the last value silently."""
    one_line(call(["config", "show", "--set", "seed=010"]), 2, "leading zero")
    one_line(call(["config", "show", "--set", "seed=1:30"]), 2, "'seed'", "1:30")
    one_line(call(["config", "show", "--set", "seed=0x10"]), 2, "decimal")
    r = call(["config", "show", "--set", "seed=1_000"])
    assert r.code == 0 and "seed: 1000" in r.out, r
    (tmp_path / "c.yaml").write_text("seed: 1\ntrain:\n  lr: 0.5\n  lr: 2.0\n")
    one_line(call(["config", "show", "--config", tmp_path / "c.yaml"]), 2, "duplicate key 'lr'", "line 4")
    (tmp_path / "s.yaml").write_text("grid: {seed: [0, 1]}\ngrid: {seed: [2]}\n")
    one_line(call(["sweep", tmp_path / "s.yaml", "--out", tmp_path / "o"]), 2, "duplicate key 'grid'")
    assert not (tmp_path / "o").exists()


def test_f14_grid_axis_on_a_section_is_refused(tmp_path):
    """A grid axis `data: [{...}]` silently dropped `base: data.probs`."""
    spec = {"base": {"data.probs": "balanced", "train.steps": 10},
            "grid": {"data": [{"num_features": 3}, {"num_features": 4}]}}
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    one_line(call(["sweep", tmp_path / "s.yaml", "--out", tmp_path / "o"]), 2, "grid 'data'")
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------ 15. messages

def test_f15_messages_say_what_is_wrong(run_copy, tmp_path):
    """A file given as a run directory was "does not exist"; a symlink loop as --out "File exists"; a 0-row
    trajectory "shape (0,), expected (0,)"; an empty config.yaml was blamed on trajectory.npz."""
    (tmp_path / "afile").write_text("")
    for cmd in (["plot"], ["phases"], ["train", "--resume"], ["explore"]):
        one_line(call([*cmd, tmp_path / "afile"]), 2, "afile", "not a folder")
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    one_line(call(["train", *S, "--out", tmp_path / "loop"]), 2, "loop", "symlink", "loop;")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(SWEEP))
    one_line(call(["sweep", tmp_path / "s.yaml", "--out", tmp_path / "loop"]), 2, "loop", "symlink", "loop;")
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    one_line(call(["train", *S, "--out", tmp_path / "dangling"]), 2, "dangling", "symlink")
    one_line(call(["train", *S, "--out", tmp_path / "afile"]), 2, "afile", "regular file")
    assert not (tmp_path / "nowhere").exists()

    damaged = copy_run(run_copy, tmp_path / "zero_rows")
    with np.load(damaged / "trajectory.npz") as z:
        arrays = {k: (z[k][:0] if k != "probs" else z[k]) for k in z.files}
    np.savez(damaged / "trajectory.npz", **arrays)
    for cmd in (["plot"], ["phases"]):
        line = one_line(call([*cmd, damaged]), 2, "trajectory.npz", "no logged rows")
        assert "expected (0,)" not in line

    empty = copy_run(run_copy, tmp_path / "empty_config")
    (empty / "config.yaml").write_text("")
    for cmd in (["plot"], ["phases"], ["train", "--resume"]):
        line = one_line(call([*cmd, empty]), 2, "config.yaml", "empty")
        assert "trajectory" not in line

    looped = copy_run(run_copy, tmp_path / "looped_traj")
    (looped / "trajectory.npz").unlink()
    (looped / "trajectory.npz").symlink_to(looped / "trajectory.npz")
    one_line(call(["plot", looped]), 2, "trajectory.npz", "symbolic links")


# ------------------------------------------------------------- 16. paths derived from data, symlinks

def test_f16_column_name_cannot_leave_the_sweep_directory(sweep_copy, tmp_path):
    """A sweep column named `../../../x` plus `plot-sweep --value ../../../x` wrote outside the sweep
    directory: the figure's name is sanitised, it lands in SWEEP/figures/, nothing appears elsewhere."""
    sw, _ = sweep_copy
    for p in [*(sw / "rows").glob("*.parquet"), sw / "sweep.parquet"]:
        t = pq.read_table(p)
        pq.write_table(t.append_column("../../../x", pa.array([1.0 + i for i in range(t.num_rows)])), p)
    ups = [tmp_path.parent, tmp_path.parent.parent]  # where ../../../ from figures/ leads
    names = [set(os.listdir(u)) for u in ups]
    inside = snapshot(tmp_path)
    r = call(["plot-sweep", sw, "--x", "data.dominant_prob", "--value", "../../../x"])
    assert r.code == 0, r.err
    assert [set(os.listdir(u)) for u in ups] == names
    new = sorted(set(snapshot(tmp_path)) - set(inside))
    assert new and all(p.startswith(str(sw / "figures")) for p in new), new
    assert all(".." not in Path(p).name and "/" not in Path(p).name for p in new), new


def test_f16_planted_symlinks_are_not_followed(sweep_copy, run_copy, tmp_path):
    """Planted figures/ or runs/ symlinks were followed: a sweep's figures/, a kept run's runs/, a run's
    figures/ now refuse by name; the link targets stay empty."""
    sw, spec = sweep_copy
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (sw / "figures").symlink_to(elsewhere)
    one_line(call(["plot-sweep", sw, "--x", "data.dominant_prob", "--value", "final_loss"]), 2, "figures",
             "symlink")
    from icl_dynamics.fsio_owned import mark_owned
    from icl_dynamics.sweeps.spec import normalise, parse_spec

    keep = dict(SWEEP, keep_trajectories=True, grid={"data.dominant_prob": [0.5, 0.6]}, seeds=1)
    (tmp_path / "k.yaml").write_text(yaml.safe_dump(keep))
    ks = tmp_path / "kept"  # a sweep with keep_trajectories killed before its first batch, runs/ planted
    ks.mkdir()
    mark_owned(ks, "sweep")
    (ks / "sweep.yaml").write_text(yaml.safe_dump(normalise(parse_spec(keep)), sort_keys=False))
    (ks / "runs").symlink_to(elsewhere)
    r = call(["sweep", tmp_path / "k.yaml", "--out", ks, "--workers", "1", "--quiet"])
    one_line(r, 2, "runs", "symlink")
    (run_copy / "figures").symlink_to(elsewhere)
    one_line(call(["plot", run_copy]), 2, "figures", "symlink")
    assert os.listdir(elsewhere) == []


def test_f04_a_sweep_of_another_version_still_loads(sweep_copy):
    """The stray-row filter of load_sweep (plot-sweep, explore) keeps every row when none matches this
    version's config hashes: a sweep written before a config key was added still plots."""
    from icl_dynamics.sweeps import load_sweep

    sw, _ = sweep_copy
    for p in [*(sw / "rows").glob("*.parquet"), sw / "sweep.parquet"]:
        t = pq.read_table(p)
        old = [h[::-1] for h in t.column("config_hash").to_pylist()]  # as if hashed by another version
        pq.write_table(t.set_column(t.schema.get_field_index("config_hash"), "config_hash", pa.array(old)), p)
    assert len(load_sweep(sw)) == 32
    r = call(["plot-sweep", sw, "--x", "data.dominant_prob", "--value", "final_loss"])
    assert r.code == 0, r.err
