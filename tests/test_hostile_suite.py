"""The hostile suite (issue 14): several hundred generated and hand-written inputs through the CLI, in this
process, each checked for

* no traceback: nothing escapes ``cli.main``, no "Traceback" on stderr, and every non-zero exit prints
  exactly one stderr line (``icl-dynamics: ...``) with a documented exit code (errors.py);
* no run over the memory ceiling: ``ICL_DYNAMICS_MAX_MEMORY=2G`` for the whole suite, and the process's
  peak resident memory never climbs past 2 GiB during a test;
* no user file changed: a folder of the user's files (hashes, modes, sizes, mtimes, link targets) planted
  next to and inside the --out targets is snapshotted around every single call.

Inputs (see each test): A. generated argument lists for every command; B. generated YAML (tags, anchors and
aliases, alias bombs, nesting depth, huge and YAML-1.1-looking numbers, duplicate keys) as config files,
--set values, sweep specs and a run's own config.yaml; C. generated sweep specs (axis forms, counts, derived
expressions, seeds); D. damaged run directories (12 artifacts x 12 damages); E. special files (devices,
FIFO, socket, folders, symlink loops, /proc, sparse giants, bad encodings) in every role; F. hand-written.

Generated cases are derandomized (the same inputs every run). ``ICL_HOSTILE_COUNT=FILE`` appends one line
per call to FILE (used to report the suite's size).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import string
from pathlib import Path
from typing import NamedTuple

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_dynamics.config import config_keys
from test_hostile import S, SWEEP, Result, call, copy_run, snapshot, tiny_run, tiny_sweep  # noqa: F401

pytestmark = pytest.mark.user_defaults

CEILING = 2 * 2**30
EXIT_CODES = {2, 3, 4, 130, 143}
HYP = dict(deadline=None, derandomize=True, database=None,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                  HealthCheck.data_too_large, HealthCheck.filter_too_much])


@pytest.fixture(autouse=True)
def _suite_limits(monkeypatch, tmp_path):
    """The memory ceiling at 2G, a scratch working directory (relative paths land there), and the peak RSS
    checked to stay under the ceiling (unless an earlier test of this process already went higher)."""
    monkeypatch.setenv("ICL_DYNAMICS_MAX_MEMORY", "2G")
    monkeypatch.delenv("ICL_DYNAMICS_FAULT", raising=False)
    monkeypatch.chdir(tmp_path)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    yield
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert after <= max(before, CEILING), f"peak RSS {after / 2**30:.2f} GiB over the 2 GiB ceiling"


# --------------------------------------------------------------------------------------- the user's land

class Land(NamedTuple):
    root: Path
    user: list[Path]  # the user's things: never changed by any call
    outs: list[str]  # --out values that can never become a new output folder
    bad: list[str]  # paths that are no valid config, spec, run or sweep
    run: Path  # a finished run of ours, with the user's files inside
    sweep: Path  # a finished sweep of ours, with the user's file inside
    spec: Path  # a valid sweep spec


@pytest.fixture(scope="module")
def land(tmp_path_factory, tiny_run, tiny_sweep) -> Land:  # noqa: F811
    root = tmp_path_factory.mktemp("userland")
    (root / "notes.txt").write_text("the user's notes\n")
    mine = root / "mine"  # a user's folder whose files share our artifact names
    (mine / "sub").mkdir(parents=True)
    (mine / "config.yaml").write_text("my: own config\n")
    (mine / "feature_loss.png").write_bytes(b"\x89PNG my figure")
    (mine / "trajectory.npz").write_bytes(b"not ours")
    (mine / ".lock").write_text("mine\n")
    (mine / "sub" / "data.csv").write_text("1,2\n")
    (root / "afile").write_text("a plain file of the user\n")
    (root / "link_to_mine").symlink_to(mine)
    (root / "loop").symlink_to(root / "loop")
    (root / "dangling").symlink_to(root / "nowhere")
    os.mkfifo(root / "fifo")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(root / "sock"))
    sock.close()  # the socket file stays
    (root / "deep.yaml").write_text("[" * 3000 + "]" * 3000)
    (root / "bomb.yaml").write_text("\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{c}: &{c} [{', '.join(['*' + p] * 9)}]" for p, c in zip("abcdefgh", "bcdefghi")]))
    with open(root / "big.yaml", "wb") as f:
        f.truncate(1_100_000)
    with open(root / "giant.bin", "wb") as f:  # sparse: 2 GB of size, nothing on disk
        f.truncate(2 * 2**30)
    (root / "empty.yaml").write_text("")
    (root / "nul.yaml").write_bytes(b"seed: 1\x00\n")
    (root / "latin1.yaml").write_bytes(b"data: {probs: caf\xe9}\n")
    (root / "utf16.yaml").write_bytes("seed: 1\n".encode("utf-16"))
    (root / "list.yaml").write_text("- 1\n- 2\n")
    badrun = copy_run(tiny_run, root / "badrun")
    (badrun / "trajectory.npz").write_bytes(b"PK\x03\x04 truncated")
    run = copy_run(tiny_run, root / "run")
    (run / "notes.txt").write_text("the user's notes inside our run\n")
    (run / "analysis").mkdir()
    (run / "analysis" / "fig.png").write_bytes(b"the user's figure")
    sw = shutil.copytree(tiny_sweep, root / "sw", ignore=shutil.ignore_patterns(".lock", "figures"))
    (sw / "notes.txt").write_text("the user's notes inside our sweep\n")
    (root / "s.yaml").write_text(yaml.safe_dump(SWEEP))
    user = [root / n for n in ("notes.txt", "mine", "afile", "link_to_mine", "loop", "dangling", "fifo", "sock",
                               "deep.yaml", "bomb.yaml", "big.yaml", "giant.bin", "empty.yaml", "nul.yaml",
                               "latin1.yaml", "utf16.yaml", "list.yaml", "s.yaml")]
    user += [run / "notes.txt", run / "analysis", sw / "notes.txt"]
    outs = [str(root / n) for n in ("mine", "link_to_mine", "afile", "loop", "dangling", "fifo", "sock",
                                    "big.yaml", "giant.bin")]
    outs += [str(root / "afile" / "x"), str(root / "fifo" / "x"), str(root / ("n" * 300)), "/dev/null", "/dev/zero",
             "/proc/self", f"{root}/a\0b", ""]
    bad = [str(root / n) for n in ("mine", "afile", "loop", "dangling", "fifo", "sock", "deep.yaml", "bomb.yaml",
                                   "big.yaml", "giant.bin", "empty.yaml", "nul.yaml", "latin1.yaml",
                                   "utf16.yaml", "list.yaml", "badrun", "nowhere")]
    bad += [str(root / "afile" / "x.yaml"), str(root / ("n" * 300)), "/dev/zero", "/dev/null", "/dev/full",
            "/dev/urandom", "/proc/self/mem", "/proc/self/environ", f"{root}/a\0b", "", "does-not-exist"]
    return Land(root, user, outs, bad, run, sw, root / "s.yaml")


def _count(argv: list) -> None:
    where = os.environ.get("ICL_HOSTILE_COUNT")
    if where:
        with open(where, "a") as f:
            f.write(json.dumps([str(a)[:60] for a in argv][:4]) + "\n")


def check(land: Land, argv: list, *also: Path, ours: tuple[Path, ...] = (), tree: tuple[Path, ...] = ()) -> Result:
    """One hostile call: no traceback, one line for a failure, the user's things (and ``also``) unchanged.
    Our own outputs may change: the entries ``ours`` themselves (and new entries below them: never what a
    user put inside a folder planted at that name), and anything below the folders ``tree``."""
    _count(argv)
    roots = [*land.user, *also]
    before = snapshot(*roots)
    r = call(argv)  # an exception escaping cli.main fails the test here, with its traceback
    text = "\n".join(r.err)
    assert "Traceback" not in text, (argv, text[-2000:])
    if r.code != 0:
        assert r.code in EXIT_CODES, (argv, r.code, r.err)
        assert len(r.err) == 1 and r.err[0].startswith("icl-dynamics: "), (argv, r.code, r.err)
    after = snapshot(*roots)
    exact = {str(p) for p in ours}
    under = tuple(str(p) + "/" for p in ours)
    below = tuple(str(p) for p in tree)

    def mine(k: str, old: bool) -> bool:  # a change there is legitimate
        return k in exact or k.startswith(below) or (k.startswith(under) and not old)

    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    bad = sorted(k for k in changed if not mine(k, k in before))
    assert not bad, (argv, r.code, r.err, [(k, before.get(k), after.get(k)) for k in bad[:4]])
    return r


# -------------------------------------------------------------------------- A. generated argument lists

_free = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=24).filter(
    lambda s: not s.startswith("-"))  # never an option of its own: values only
_ints = st.one_of(st.sampled_from(["0", "-1", "1", "3", "99999999999999999999999", "-99999999999999999999999",
                                   "1e3", "nan", "inf", "0x10", "", " 1", "٣", "1_0", "9" * 5000]),
                  st.integers().map(str))
_floats = st.one_of(st.sampled_from(["0", "1", "0.5", "-0.1", "nan", "inf", "-inf", "1e-400", "1e400", "", "x"]),
                    st.floats().map(repr))
_columns = st.one_of(st.sampled_from(["data.num_features", "data.dominant_prob", "seed", "final_loss",
                                      "time_to_eps_minor", "status", "data.probs", "config_hash", "run",
                                      "../../../x", "", "minor_time_to_eps", "a" * 500, "\n", "\x1b[31m",
                                      "num_features", "dominant_prob"]), _free)
KEYS = sorted(config_keys())
_set_values = st.sampled_from(["1", "0", "-1", "99999999999999999999", "010", "1:30", "0x1F", "yes", "~", "",
                               "[", "{", "!!int 4.5", "!!binary aGk=", "&a [*a]", "*a", "[1, 2]", "{a: 1}",
                               "1e999", ".nan", "'", '"', "\x00", "@x", "%YAML 1.1", "--- 1\n--- 2",
                               "[" * 100 + "]" * 100, "1" * 101, "balanced", "tokens", "mean_field", "true"])
_sets = st.one_of(st.builds(lambda k, v: f"{k}={v}", st.sampled_from(KEYS + ["data", "x.y", "", "seed.a", "."]),
                            st.one_of(_set_values, _free)), _free)


def argv_strategy(land: Land) -> st.SearchStrategy:
    bad, outs = st.sampled_from(land.bad), st.sampled_from(land.outs)
    anyout = st.one_of(outs, _free)  # a fresh name is fine where the input before it always fails
    sweepish = st.one_of(bad, st.just(str(land.sweep)))

    def opts(*pairs):
        flags = [st.just([flag]) if value is None else value.map(lambda v, f=flag: [f, v]) for flag, value in pairs]
        return st.lists(st.one_of(*flags), max_size=5).map(lambda xs: [t for x in xs for t in x])

    train = st.tuples(st.just(["train"]), opts(("--config", bad), ("--set", _sets), ("--overwrite", None),
                                               ("--resume", st.one_of(bad, outs)), ("--quiet", None)),
                      st.one_of(st.just([]), outs.map(lambda o: ["--out", o])))
    plot = st.tuples(st.just(["plot"]), bad.map(lambda b: [b]),
                     opts(("--out", anyout), ("--feature", _ints), ("--format", _free)),
                     st.one_of(st.just([]), st.lists(_ints, min_size=1, max_size=3).map(lambda s: ["--steps", *s])))
    phases = st.tuples(st.just(["phases"]), bad.map(lambda b: [b]), opts(("--eps", _floats)))
    sweep = st.tuples(st.just(["sweep"]), bad.map(lambda b: [b]),
                      opts(("--out", anyout), ("--workers", _ints), ("--cluster", _free), ("--quiet", None)))
    plot_sweep = st.tuples(st.just(["plot-sweep"]), sweepish.map(lambda b: [b]),
                           opts(("--x", _columns), ("--y", _columns), ("--value", _columns), ("--out", anyout),
                                ("--by", _columns), ("--no-fit", None)))
    explore = st.tuples(st.just(["explore"]), st.one_of(bad, st.just(str(land.sweep))).map(lambda b: [b]),
                        opts(("--out", anyout), ("--x", _columns), ("--y", _columns), ("--value", _columns)))
    evaluate = st.tuples(st.just(["evaluate"]), bad.map(lambda b: [b]), opts(("--set", _sets), ("--out", anyout)))
    config = st.tuples(st.just(["config"]), st.sampled_from([["show"], ["shw"], []]),
                       opts(("--config", bad), ("--set", _sets)))
    other = st.tuples(st.sampled_from([["bogus"], ["--bogus"], [""], ["TRAIN"], ["--version"], ["train", "-h"],
                                       ["plot-sweep"], ["sweep"], ["reproduce"], ["reproduce", "--out"]]),
                      st.just([]))
    return st.one_of(train, plot, phases, sweep, plot_sweep, explore, evaluate, config, other).map(
        lambda parts: [t for p in parts for t in p])


@settings(max_examples=160, **HYP)
@given(data=st.data())
def test_a_generated_argument_lists(land, data):
    """Every command with generated options and values: paths to special and damaged files, huge and
    malformed numbers, hostile column names, malformed --set."""
    argv = data.draw(argv_strategy(land))
    check(land, argv, land.sweep, ours=(land.sweep / "explore.html",), tree=(land.sweep / "figures",))


# ------------------------------------------------------------------------------------- B. generated YAML

TAGS = ["!!int", "!!float", "!!str", "!!bool", "!!null", "!!binary", "!!timestamp", "!!set", "!!omap", "!!pairs",
        "!!seq", "!!map", "!!python/object/apply:os.system", "!!python/name:os.system", "!custom",
        "!<tag:yaml.org,2002:int>", "!<!>", "!!merge", "!!value", "!"]
ANCHORS = ["a", "b", "k"]
SCALARS = ["~", "null", "true", "yes", "no", "on", "off", "y", "NO", "010", "0o17", "0x1F", "0b101", "1:30",
           "1_000", "+1", "-0", "1e999", "-1e999", ".nan", ".inf", "-.inf", "2024-01-01",
           "2001-12-14t21:59:43.10-05:00", "'quoted'", '"\\u0000"', '"\\x1b[2J"', "@", "`", "%x", "0.", ".5",
           "1e-3", "4.5", "16", "3", "0.5", "balanced", "imbalanced", "tokens", "mean_field", "exact", "[]", "{}"]
_KEYWORDS = ["data", "train", "model", "seed", "eps", "num_features", "dim", "prompt_length", "probs", "steps",
             "lr", "engine", "expectation", "log_every", "<<", "? x", "'a'", "1", "null", "base", "grid",
             "seeds", "max_batch", "keep_trajectories", "train.steps", "data.num_features"]
_huge_ints = st.integers(0, 5000).map(lambda n: "-" * (n % 2) + "9" * (n + 1))


@st.composite
def yaml_node(draw, depth: int = 0) -> str:
    kinds = ["scalar", "scalar", "map", "seq", "alias"] if depth < 4 else ["scalar", "alias"]
    kind = draw(st.sampled_from(kinds))
    if kind == "alias":
        return "*" + draw(st.sampled_from(ANCHORS + ["undefined"]))
    prefix = ""
    if draw(st.integers(0, 3)) == 0:
        prefix += draw(st.sampled_from(TAGS)) + " "
    if draw(st.integers(0, 2)) == 0:
        prefix += "&" + draw(st.sampled_from(ANCHORS)) + " "
    if kind == "scalar":
        value = draw(st.one_of(st.sampled_from(SCALARS), _huge_ints, st.integers().map(str),
                               st.floats().map(repr), st.text(max_size=12).map(json.dumps)))
        return prefix + value
    n = draw(st.integers(0, 4))
    if kind == "map":
        keys = [draw(st.one_of(st.sampled_from(_KEYWORDS), st.text(string.ascii_lowercase, min_size=1, max_size=5)))
                for _ in range(n)]
        return prefix + "{" + ", ".join(f"{k}: {draw(yaml_node(depth + 1))}" for k in keys) + "}"
    return prefix + "[" + ", ".join(draw(yaml_node(depth + 1)) for _ in range(n)) + "]"


@st.composite
def yaml_document(draw) -> str:
    """A hostile YAML document: a config-shaped mapping of generated nodes, a bomb, deep nesting, a flood of
    aliases or nodes, huge numbers, several documents, odd bytes."""
    form = draw(st.sampled_from(["config", "config", "config", "node", "bomb", "deep", "aliases", "wide",
                                 "docs", "block", "raw"]))
    if form == "config":
        sections = draw(st.lists(st.sampled_from(["data", "train", "model", "seed", "eps", "bogus"]), max_size=4))
        parts = []
        for s in sections:
            keys = [k.split(".", 1)[1] for k in KEYS if k.startswith(s + ".")] or [None]
            key = draw(st.sampled_from(keys))
            node = draw(yaml_node(1))
            parts.append(f"{s}: {{{key}: {node}}}" if key else f"{s}: {node}")
        return "{" + ", ".join(parts) + "}"
    if form == "node":
        return draw(yaml_node())
    if form == "bomb":
        levels, width = draw(st.integers(2, 12)), draw(st.integers(2, 12))
        names = [f"l{i}" for i in range(levels)]
        lines = [f"{names[0]}: &{names[0]} [" + ", ".join(["lol"] * width) + "]"]
        lines += [f"{c}: &{c} [" + ", ".join(["*" + p] * width) + "]" for p, c in zip(names, names[1:])]
        return "\n".join(lines) + "\n"
    if form == "deep":
        n = draw(st.sampled_from([10, 49, 50, 51, 100, 1000, 3000, 20000]))
        opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}"), ("- ", "")]))
        if opener == "- ":
            return "".join("  " * i + "- \n" for i in range(min(n, 2000))) + "  " * min(n, 2000) + "1\n"
        return opener * n + "1" + closer * n
    if form == "aliases":
        n = draw(st.sampled_from([99, 100, 101, 1000]))
        return "a: &a 1\nb: [" + ", ".join(["*a"] * n) + "]\n"
    if form == "wide":
        n = draw(st.sampled_from([2000, 20_000]))  # past MAX_NODES: the bombs
        return "[" + ",".join(["1"] * n) + "]"
    if form == "docs":
        return "--- " + draw(yaml_node()) + "\n--- " + draw(yaml_node()) + "\n"
    if form == "block":
        key = draw(st.sampled_from(_KEYWORDS))
        return f"{key}:\n  {key}: 1\n  {key}: 2\n\t{key}: 3\n"
    return draw(st.text(max_size=200))


def _write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    return path


@settings(max_examples=90, **HYP)
@given(data=st.data())
def test_b_generated_yaml_everywhere(land, tmp_path, data):
    """One generated document as a config file (train, config show), a --set value, and a sweep spec."""
    text = data.draw(yaml_document())
    f = _write(tmp_path / "c.yaml", text)
    out = data.draw(st.sampled_from(land.outs))
    check(land, ["train", "--config", f, "--out", out, "--quiet"], f)
    key = data.draw(st.sampled_from(KEYS))
    if len(text) < 20_000:  # the same parser as --config: a huge document once is enough
        check(land, ["config", "show", "--config", f], f)
        check(land, ["config", "show", "--set", f"{key}={text}"])
    check(land, ["sweep", f, "--out", out, "--quiet", "--workers", "1"], f)


@settings(max_examples=40, **HYP)
@given(data=st.data())
def test_b_generated_yaml_as_a_runs_own_config(land, tmp_path_factory, data):
    """A generated document as a finished run's config.yaml: plot, phases, --resume and --out refuse it in one
    line (or, for a valid config of another run, in one line about the trajectory); nothing changes."""
    text = data.draw(yaml_document())
    run = copy_run(land.run, tmp_path_factory.mktemp("own") / "run")
    _write(run / "config.yaml", text)
    for argv in (["phases", run], ["train", "--resume", run], ["train", *S, "--out", run], ["plot", run]):
        r = check(land, argv, run, ours=(run / "phases.json", run / ".lock"), tree=(run / "figures",))
        assert r.code != 0 or argv[0] in ("phases", "plot"), (argv, r)


# -------------------------------------------------------------------------------- C. generated sweep specs

DERIVED = ["{K*2}", "{1/0}", "{10**100}", "{int(1e308)*int(1e308)}", "{__import__('os').system('true')}",
           "{().__class__}", "{lr}", "{x}", "{" + "(" * 300 + "1" + ")" * 300 + "}", "{9**9**9}", "{2**64}", "{-1}",
           "{max()}", "{min(1)}", "{sqrt(-1)}", "{log(0)}", "{exp(1000)}", "{round(1e308, -400)}", "{int('5')}",
           "{'a'}", "{[1,2]}", "{K if K else N}", "{lambda: 1}", "{K" + "*K" * 100 + "}", "{}", "{ }", "{{K}}",
           "{1e308*10}", "{-(" * 50 + "1" + ")" * 50 + "}", "{ceil(1e300)}", "{seed}", "{N/0.0}", "{p1**0.5}"]
_spec_values = st.one_of(st.sampled_from([0, 1, -1, 2.5, True, None, "x", "", [], {}, 10**30, -(10**30), 1e308,
                                          float("nan"), [1, 2], {"a": 1}, "balanced", 3, 16, 0.5]),
                         st.sampled_from(DERIVED), st.integers(), st.floats(allow_nan=False), st.text(max_size=8))
_counts = st.sampled_from([0, 1, 2, 3, -1, 100_001, 10**12, 2.5, True, "3", None])
_axis = st.one_of(
    st.lists(_spec_values, max_size=3),
    st.builds(lambda form, a, b, n: {form: [a, b, n]}, st.sampled_from(["linspace", "logspace", "int_logspace"]),
              st.sampled_from([0.1, 1, -1, 0, 1e308, float("inf"), "a"]), st.sampled_from([0.9, 10, 1e-300, 2]),
              _counts),
    st.builds(lambda args: {"range": args}, st.lists(st.sampled_from([0, 1, 3, -5, 10**12, 0.5, "a"]), max_size=4)),
    st.dictionaries(st.sampled_from(["range", "linspace", "bogus", "logspace"]), _spec_values, max_size=2),
    st.sampled_from(DERIVED).map(lambda d: [d]), _spec_values)
_grid_keys = st.one_of(st.sampled_from(KEYS), st.sampled_from(["data", "../x", "", "seed", "train.steps", "x",
                                                               "data.num_features", "train.lr"]))


@st.composite
def sweep_spec(draw) -> dict:
    spec: dict = {}
    if draw(st.booleans()):
        spec["base"] = draw(st.dictionaries(st.sampled_from(KEYS + ["bogus", "data"]), _spec_values, max_size=3))
    if draw(st.integers(0, 5)):
        spec["grid"] = draw(st.dictionaries(_grid_keys, _axis, max_size=3))
    for key, values in (("seeds", _counts), ("max_batch", _counts), ("keep_trajectories", _spec_values),
                        ("bogus", _spec_values)):
        if draw(st.integers(0, 3)) == 0:
            spec[key] = draw(values)
    return spec


@settings(max_examples=90, **HYP)
@given(data=st.data())
def test_c_generated_sweep_specs(land, tmp_path, data):
    """Generated specs (axis forms with huge, zero, negative or non-numeric counts, derived expressions,
    unknown keys), written as YAML: refused in one line (or stopped by the --out they are given)."""
    spec = data.draw(sweep_spec())
    f = tmp_path / "spec.yaml"
    f.write_text(yaml.safe_dump(spec, allow_unicode=True))
    check(land, ["sweep", f, "--out", data.draw(st.sampled_from(land.outs)), "--workers", "1", "--quiet"], f)


# ------------------------------------------------------------------------------- D. damaged run directories

ARTIFACTS = ["config.yaml", "trajectory.npz", "summary.json", "phases.json", "manifest.json", "metrics.parquet",
             "params.npz", "checkpoint.npz", ".icl-dynamics", ".lock", "figures", "explore.html"]
DAMAGES = ["missing", "empty", "garbage", "truncated", "directory", "fifo", "to_dev_zero", "to_users_file",
           "loop", "dangling", "sparse_giant", "deep"]


def damage(run: Path, artifact: str, how: str, users_file: Path) -> list[Path]:
    """Damage ``run/artifact``; returns the user's things it planted (to stay unchanged)."""
    p = run / artifact
    old = p.read_bytes() if p.is_file() else b"x" * 100
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif os.path.lexists(p):
        p.unlink()
    if how == "missing":
        return []
    if how == "empty":
        p.write_bytes(b"")
    elif how == "garbage":
        p.write_bytes(bytes(range(256)) * 3)
    elif how == "truncated":
        p.write_bytes(old[: len(old) // 2])
    elif how == "directory":
        p.mkdir()
        (p / "mine.txt").write_text("the user's")
        return [p]
    elif how == "fifo":
        os.mkfifo(p)
        return [p]
    elif how == "to_dev_zero":
        p.symlink_to("/dev/zero")
        return [p]
    elif how == "to_users_file":
        p.symlink_to(users_file)
        return [p, users_file]
    elif how == "loop":
        p.symlink_to(p)
    elif how == "dangling":
        p.symlink_to(run / "nowhere")
        return [p]
    elif how == "sparse_giant":
        with open(p, "wb") as f:
            f.truncate(2 * 2**30)
    elif how == "deep":
        p.write_text("[" * 3000 + "]" * 3000)
    return []


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("artifact", ARTIFACTS)
def test_d_damaged_run_directories(land, tmp_path, artifact, how):
    """Every artifact of a finished run damaged every way, under `train --out` (no --overwrite), `train
    --resume`, `phases` (and `explore` where the damage is in what it reads or writes): one line, or a
    success that rewrote only our own outputs; the user's planted things unchanged."""
    run = copy_run(land.run, tmp_path / "run")
    users_file = tmp_path / "users_file.txt"
    users_file.write_text("the user's own file\n")
    planted = damage(run, artifact, how, users_file)
    ours = (run / "phases.json", run / "explore.html", run / "checkpoint.npz", run / ".lock")
    r = check(land, ["train", *S, "--out", run, "--quiet"], run, *planted, ours=(run / ".lock",))
    assert r.code == 2, r
    check(land, ["train", "--resume", run, "--quiet"], run, *planted, ours=ours)
    check(land, ["phases", run], run, *planted, ours=ours)
    if artifact in ("config.yaml", "trajectory.npz", "summary.json", "explore.html"):
        check(land, ["explore", run], run, *planted, ours=ours)




@pytest.mark.parametrize("how", DAMAGES)
def test_d_plot_with_a_damaged_figures_folder(land, tmp_path, how):
    """`plot RUN` when RUN/figures is not a folder: one line; a user's file in figures/ stays."""
    run = copy_run(land.run, tmp_path / "run")
    (tmp_path / "users_file.txt").write_text("the user's own file\n")
    planted = damage(run, "figures", how, tmp_path / "users_file.txt")
    keep = [run / "figures" / "mine.txt"] if how == "directory" else planted
    check(land, ["plot", run], *keep)


@pytest.mark.parametrize("how", DAMAGES)
@pytest.mark.parametrize("artifact", ["config.yaml", "trajectory.npz", "summary.json"])
def test_d_plot_of_a_damaged_run(land, tmp_path, artifact, how):
    """`plot RUN` with what it reads damaged: one line (a missing summary.json still plots)."""
    run = copy_run(land.run, tmp_path / "run")
    users_file = tmp_path / "users_file.txt"
    users_file.write_text("the user's own file\n")
    planted = damage(run, artifact, how, users_file)
    r = check(land, ["plot", run], run, *planted, tree=(run / "figures",))
    assert r.code == 2 or (artifact == "summary.json" and how in ("missing", "loop", "dangling")), r


# ------------------------------------------------------------------------------------ E. special files

SPECIAL = ["dev_zero", "dev_null", "dev_full", "dev_urandom", "fifo", "socket", "empty_dir", "users_dir", "loop",
           "dangling", "proc_mem", "proc_environ", "sparse_giant", "over_limit", "empty_file", "nul_bytes",
           "latin1", "utf16", "through_file", "long_name", "nul_in_path", "to_users_dir", "users_file"]


def special(kind: str, where: Path) -> tuple[str, list[Path]]:
    """A path of ``kind`` under ``where`` and the user's things it involves."""
    p = where / "x"
    fixed = {"dev_zero": "/dev/zero", "dev_null": "/dev/null", "dev_full": "/dev/full", "dev_urandom": "/dev/urandom",
             "proc_mem": "/proc/self/mem", "proc_environ": "/proc/self/environ"}
    if kind in fixed:
        return fixed[kind], []
    if kind == "fifo":
        os.mkfifo(p)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(p))
        s.close()
    elif kind == "empty_dir":
        p.mkdir()
    elif kind in ("users_dir", "to_users_dir"):
        d = where / "users_dir"
        d.mkdir()
        (d / "config.yaml").write_text("mine: 1\n")
        (d / "sweep.yaml").write_text("mine: 2\n")
        (d / "figures").mkdir()
        (d / "figures" / "feature_loss.png").write_bytes(b"my figure")
        if kind == "users_dir":
            return str(d), [d]
        p.symlink_to(d)
        return str(p), [p, d]
    elif kind == "loop":
        p.symlink_to(p)
    elif kind == "dangling":
        p.symlink_to(where / "nowhere")
    elif kind == "sparse_giant":
        with open(p, "wb") as f:
            f.truncate(2 * 2**30)
    elif kind == "over_limit":
        p.write_bytes(b"# " + b"x" * 1_100_000 + b"\n")
    elif kind == "empty_file":
        p.write_bytes(b"")
    elif kind == "nul_bytes":
        p.write_bytes(b"seed: 1\x00\x00\n")
    elif kind == "latin1":
        p.write_bytes(b"seed: caf\xe9\n")
    elif kind == "utf16":
        p.write_bytes("seed: 1\n".encode("utf-16"))
    elif kind == "through_file":
        (where / "afile").write_text("mine")
        return str(where / "afile" / "x"), [where / "afile"]
    elif kind == "long_name":
        return str(where / ("n" * 300)), []
    elif kind == "nul_in_path":
        return f"{where}/a\0b", []
    elif kind == "users_file":
        p.write_text("the user's file\n")
    return str(p), ([p] if os.path.lexists(p) else [])


ROLES = {  # how a path is used; the other arguments are valid
    "train_config": lambda p, land: ["train", "--config", p, "--out", land.outs[0]],
    "config_show": lambda p, land: ["config", "show", "--config", p],
    "sweep_spec": lambda p, land: ["sweep", p, "--out", land.outs[0], "--quiet"],
    "plot_run": lambda p, land: ["plot", p],
    "phases_run": lambda p, land: ["phases", p],
    "resume_run": lambda p, land: ["train", "--resume", p, "--quiet"],
    "explore_path": lambda p, land: ["explore", p],
    "plot_sweep_dir": lambda p, land: ["plot-sweep", p, "--x", "data.dominant_prob", "--value", "final_loss"],
    "train_out": lambda p, land: ["train", *S, "--out", p, "--quiet"],
    "sweep_out": lambda p, land: ["sweep", land.spec, "--out", p, "--quiet", "--workers", "1"],
    "plot_sweep_out": lambda p, land: ["plot-sweep", land.sweep, "--x", "data.dominant_prob", "--value",
                                       "final_loss", "--out", p],
}
SLOW_ROLES = {"plot_sweep_out"}  # draws before it writes: a subset of kinds
_SWEEP_RUNS = {"empty_dir"}  # an empty folder is a fine new sweep directory: the sweep would run




@pytest.mark.parametrize("role, kind", [
    (r, k) for r in sorted(ROLES) for k in SPECIAL])
def test_e_special_files_in_every_role(land, tmp_path, kind, role):
    """Devices, a FIFO, a socket, folders (empty, the user's, linked), symlink loops, /proc files, a 2 GB
    sparse file, a file over the size limit, bad encodings, paths through a file, too long or with a NUL:
    as a config, a spec, a run, a sweep, and as every --out. One line or a legitimate success; the user's
    things unchanged."""
    if role in SLOW_ROLES and kind not in ("dev_null", "fifo", "socket", "empty_dir", "users_dir", "loop",
                                           "dangling", "through_file", "nul_in_path", "to_users_dir", "users_file",
                                           "sparse_giant"):
        pytest.skip("drawing roles take a subset of kinds")
    if role == "sweep_out" and kind in _SWEEP_RUNS:
        pytest.skip("a valid sweep into an empty folder just runs")
    path, planted = special(kind, tmp_path)
    named = role == "plot_sweep_out" and os.path.isfile(path)  # a file named outright by --out is replaced
    if kind == "empty_dir":
        planted = []  # nothing of the user's in it: an output folder may be made there
    r = check(land, ROLES[role](path, land), *([] if named else planted), land.sweep,
              tree=(land.sweep / "figures",))
    if kind not in ("empty_dir",) and role not in ("config_show",) and not named:
        assert r.code != 0, (role, kind, r)


# ------------------------------------------------------------------------------------- F. hand-written

def _hand_written(land: Land) -> list[list]:
    r, sw, spec, root = land.run, land.sweep, land.spec, land.root
    return [
        ["--version"], ["-h"], ["train", "--help"], ["train"], ["train", "--out"], ["train", "--resume"],
        ["train", "--resume", r, "--out", root / "x"], ["train", "--resume", r, "--overwrite"],
        ["train", "--resume", r, "--set", "seed=1"], ["train", "--resume", r, "--config", spec],
        ["train", "--resume", r], ["train", *S, "--out", r], ["train", *S, "--out", root / "mine", "--overwrite"],
        ["train", *S, "--out", root / "link_to_mine", "--overwrite"], ["train", "--set", "=", "--out", r],
        ["train", "--set", "seed", "--out", r], ["train", "--set", "train=1", "--out", r],
        ["train", "--set", "data.probs=[0.5, 0.5]", "--out", r], ["train", "--set", "data.dim=3", "--out", r],
        ["train", "--set", "train.engine=nope", "--out", r], ["train", "--set", "model.attention=linear", "--out", r],
        ["plot", r, "--steps"], ["plot", r, "--steps", "-1"], ["plot", r, "--feature", "0"],
        ["plot", r, "--feature", "5"], ["plot", r, "--format", "exe"], ["plot", r, "--out", root / "afile"],
        ["plot", r, "--out", "/dev/null"], ["plot", r, "--out", root / "fifo"],
        ["phases", r, "--eps", "0"], ["phases", r, "--eps", "1"], ["phases", r, "--eps", "nan"],
        ["phases", r, "--eps", "-1e400"], ["phases", root / "mine"], ["phases", root / "link_to_mine"],
        ["sweep", spec, "--out", sw, "--workers", "0"], ["sweep", spec, "--out", sw, "--workers", "-1"],
        ["sweep", spec, "--out", sw, "--workers", "99999999999999999999"],
        ["sweep", spec, "--out", sw, "--workers", "2", "--cluster", "tcp://x"], ["sweep", spec, "--out", r],
        ["sweep", spec, "--out", root / "mine"], ["sweep", root / "deep.yaml", "--out", sw],
        ["plot-sweep", sw, "--x", "seed", "--y", "seed", "--value", "final_loss"],
        ["plot-sweep", sw, "--x", "status", "--value", "final_loss"],
        ["plot-sweep", sw, "--x", "seed", "--value", "status"],
        ["plot-sweep", sw, "--x", "data.probs", "--value", "final_loss"],
        ["plot-sweep", sw, "--x", "", "--value", ""], ["plot-sweep", sw, "--x", "seed", "--value", "../../../x"],
        ["plot-sweep", sw, "--x", "data.dominant_prob", "--value", "final_loss", "--out", root / "mine"],
        ["plot-sweep", sw, "--x", "data.dominant_prob", "--value", "final_loss", "--out", root / "link_to_mine"],
        ["plot-sweep", r, "--x", "seed", "--value", "final_loss"],
        ["plot-sweep", root / "mine", "--x", "seed", "--value", "final_loss"],
        ["explore", r, "--x", "seed"], ["explore", r, "--out", "/dev/null"],
        ["explore", root / "mine"], ["explore", sw, "--x", "nope"], ["explore", sw, "--value", "status"],
        ["evaluate", r, "--out", "/dev/null"], ["evaluate", r, "--out", root / "fifo"],
        ["evaluate", r, "--out", root / "mine"], ["evaluate", r, "--set", "data.num_features=99999999999999999999"],
        ["evaluate", r, "--set", "data.probs=[1, 2"], ["evaluate", r, "--set", "data.dim=40000"],
        ["evaluate", root / "mine"], ["evaluate", root / "badrun"],
        ["config", "show", "--set", "data.num_features=99999999999999999999"],
        ["config", "show", "--config", root / "list.yaml"], ["config", "show", "--config", root / "empty.yaml"],
        ["reproduce", "--out", root / "afile"], ["reproduce", "--out", root / "mine"],
        ["reproduce", "--out", root / "mine", "--overwrite"], ["reproduce", "--out", "/dev/null"],
    ]


def test_f_hand_written(land):
    """The findings' commands and their neighbours, by hand; the finished run and sweep stay as they were,
    but for the outputs the successful ones write."""
    ours = (land.run / "phases.json", land.run / "explore.html", land.sweep / "explore.html",
            land.sweep / "sweep.parquet")
    tree = (land.run / "figures", land.sweep / "figures")
    cases = _hand_written(land)
    assert len(cases) >= 60
    for argv in cases:
        r = check(land, argv, land.run, land.sweep, ours=ours, tree=tree)
        wrote_ok = argv[:1] in (["plot"], ["phases"], ["plot-sweep"], ["explore"], ["config"], ["--version"], ["sweep"],
                                ["evaluate"],
                                ["-h"]) or argv[1:2] == ["--help"]
        assert r.code != 0 or wrote_ok, (argv, r)


def test_suite_size():
    """The suite holds well over 500 inputs (generated examples + parametrised cases x calls each)."""
    generated = 160 + 90 * 4 + 40 * 4 + 90
    damaged = len(ARTIFACTS) * len(DAMAGES) * 3 + 4 * len(DAMAGES) + len(DAMAGES) + 3 * len(DAMAGES)
    specials = len(SPECIAL) * len(ROLES)
    assert generated + damaged + specials + 60 >= 500


def test_f_no_command_is_one_line(land):
    check(land, [])
