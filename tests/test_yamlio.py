"""Hostile and surprising input to the YAML reader (issue 14): each finding is refused in one short line.

Every refusal must be a ConfigError (exit 2) whose message is one line under 300 characters and names the
file, key or line, never a traceback, a hang, or a memory blow-up.
"""

from __future__ import annotations

import os
import re
import threading
import time

import pytest

from helpers import one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_dynamics import yamlio
from icl_dynamics.errors import ConfigError
from icl_dynamics.yamlio import MAX_ALIASES, MAX_BYTES, MAX_DEPTH, MAX_NODES, load_value, load_yaml, read_text

LOADERS = [yamlio.StrictLoader] + ([yamlio.FastStrictLoader] if yamlio.CParser is not None else [])


@pytest.fixture(params=LOADERS, ids=lambda c: c.__name__)
def loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Run a test with each loader: the libyaml one (used when present) and the pure-Python fallback."""
    monkeypatch.setattr(yamlio, "LOADER", request.param)
    return request.param


def refused(text: str, *names: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_yaml(text, what="config file 'c.yaml'")
    return one_line(err, "config file 'c.yaml'", *names)


# ---- read_text: what may be read at all ---------------------------------------------------------------

def test_dev_zero_is_refused_without_reading() -> None:
    """--config /dev/zero used to read 8 GB: a device is refused after stat, before any read."""
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as err:
        read_text("/dev/zero", what="config file")
    one_line(err, "'/dev/zero'", "character device")
    assert time.monotonic() - t0 < 1.0, "must not read the device"


def test_fifo_is_refused_without_blocking(tmp_path: os.PathLike[str]) -> None:
    """A FIFO with no writer used to block forever: it must be refused at once (thread with 5 s timeout)."""
    fifo = os.path.join(tmp_path, "cfg.yaml")
    os.mkfifo(fifo)
    box: list[BaseException] = []

    def target() -> None:
        try:
            read_text(fifo, what="config file")
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            box.append(e)

    worker = threading.Thread(target=target, daemon=True)
    worker.start()
    worker.join(5)
    assert not worker.is_alive(), "read_text blocked on a FIFO"
    assert isinstance(box[0], ConfigError) and "FIFO" in str(box[0]) and "cfg.yaml" in str(box[0])


def test_file_over_the_limit_is_refused(tmp_path: os.PathLike[str]) -> None:
    """A 50 MB YAML took 112 s to parse: a 2 MB file is refused by size before parsing."""
    big = os.path.join(tmp_path, "big.yaml")
    with open(big, "wb") as f:
        f.write(b"a: 1\n" * (2_000_000 // 5))
    with pytest.raises(ConfigError) as err:
        read_text(big, what="config file")
    one_line(err, "big.yaml", f"larger than {MAX_BYTES} bytes")


@pytest.mark.parametrize("case, reason", [
    ("loop", "Too many levels of symbolic links"),
    ("through_file", "Not a directory"),
    ("long_name", "File name too long"),
    ("missing", "does not exist"),
    ("directory", "is a directory"),
])
def test_bad_paths_give_one_line(tmp_path: os.PathLike[str], case: str, reason: str) -> None:
    """Symlink loops, paths through a file, 300-character names used to give tracebacks: now one line each
    with the OS reason, and the echoed path is clipped so the line stays short."""
    d = str(tmp_path)
    if case == "loop":
        os.symlink(os.path.join(d, "b"), os.path.join(d, "a"))
        os.symlink(os.path.join(d, "a"), os.path.join(d, "b"))
        path = os.path.join(d, "a")
    elif case == "through_file":
        open(os.path.join(d, "afile"), "w").close()
        path = os.path.join(d, "afile", "x.yaml")
    elif case == "long_name":
        path = os.path.join(d, "n" * 300 + ".yaml")
    elif case == "missing":
        path = os.path.join(d, "nope.yaml")
    else:
        path = d
    with pytest.raises(ConfigError) as err:
        read_text(path, what="config file")
    one_line(err, "config file '", reason, path[-20:] if case != "long_name" else ".yaml")


def test_proc_file_is_refused() -> None:
    """/proc/self/mem claims to be a regular file of size 0 and fails or blocks when read: refused by file
    system, before reading."""
    with pytest.raises(ConfigError) as err:
        read_text("/proc/self/mem", what="config file")
    one_line(err, "'/proc/self/mem'", "/proc")


def test_non_utf8_and_control_characters_in_the_name(tmp_path: os.PathLike[str]) -> None:
    """Bytes that are not UTF-8 are one line; a newline in a file name is escaped, not echoed raw."""
    bad = os.path.join(tmp_path, "a\nb.yaml")
    with open(bad, "wb") as f:
        f.write(b"a: \xff\xfe\n")
    with pytest.raises(ConfigError) as err:
        read_text(bad, what="config file")
    one_line(err, "a\\nb.yaml", "not UTF-8")


def test_read_yaml_names_the_file_in_yaml_errors(tmp_path: os.PathLike[str]) -> None:
    """read_yaml = read_text + load_yaml, so a YAML problem names the file and the line."""
    p = os.path.join(tmp_path, "c.yaml")
    with open(p, "w") as f:
        f.write("a: 1\nb: 010\n")
    with pytest.raises(ConfigError) as err:
        yamlio.read_yaml(p, what="config file")
    one_line(err, f"config file '{p}' line 2", "leading zero")


# ---- load_yaml: limits -------------------------------------------------------------------------------

BILLION_LAUGHS = "\n".join(
    [f'l0: &l0 [{", ".join(["lol"] * 9)}]']
    + [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 9)]) + "\n"


def test_alias_bomb_is_refused_fast(loader: type) -> None:
    """300 bytes of nine-level billion laughs gave a 35.8 MB error line and passed 7 GB: the expanded size
    is counted while composing, so it stops at MAX_NODES in milliseconds."""
    t0 = time.monotonic()
    refused(BILLION_LAUGHS, f"more than {MAX_NODES} values")
    assert time.monotonic() - t0 < 2.0


def test_too_many_aliases_are_refused(loader: type) -> None:
    """Each alias use counts: more than MAX_ALIASES uses are refused even when small."""
    text = "a: &a 1\nb: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    refused(text, f"more than {MAX_ALIASES} aliases", "line 2")


def test_alias_to_its_own_node_is_refused(loader: type) -> None:
    """A recursive structure (&a [*a]) would make later code loop or recurse forever."""
    refused("a: &x [1, *x]\n", "alias *x refers to a node that contains it")


@pytest.mark.parametrize("text", ["[" * 3000 + "]" * 3000, "{a: " * 3000 + "}" * 3000,
                                  "".join(" " * i + "k:\n" for i in range(200))])
def test_deep_nesting_is_refused_without_recursion_error(loader: type, text: str) -> None:
    """3000 nested brackets gave RecursionError: depth is refused at MAX_DEPTH (libyaml may stop first with
    its own 'nesting depth' line)."""
    msg = refused(text)
    assert "nest" in msg, msg


def test_depth_limit_allows_exactly_max_depth(loader: type) -> None:
    """The limit is MAX_DEPTH nested values: that many pass, one more is refused."""
    ok = "[" * (MAX_DEPTH - 1) + "1" + "]" * (MAX_DEPTH - 1)
    assert load_yaml(ok, what="x") is not None
    refused("[" * MAX_DEPTH + "1" + "]" * MAX_DEPTH, f"nested deeper than {MAX_DEPTH} levels")


# ---- load_yaml: YAML 1.2 scalars ---------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("a: 1:30", "1:30"),  # YAML 1.1: 90 (base 60)
    ("a: yes", "yes"), ("a: no", "no"), ("a: on", "on"), ("a: off", "off"),  # YAML 1.1: booleans
    ("a: 2024-01-01", "2024-01-01"),  # YAML 1.1: a datetime.date that JSON cannot write
    ("a: 1e-3", 0.001), ("a: .5", 0.5), ("a: 1.", 1.0), ("a: -.inf", float("-inf")),  # 1.1: 1e-3 is a string
    ("a: 1_000", 1000), ("a: 0", 0), ("a: -7", -7), ("a: '010'", "010"),
    ("a: true", True), ("a: False", False), ("a: ~", None), ("a:", None),
])
def test_scalars_follow_yaml_1_2(loader: type, text: str, expected: object) -> None:
    """YAML 1.1 read 1:30 as 90 and yes as True; these now read as YAML 1.2 (and as people expect)."""
    value = load_yaml(text, what="x")["a"]
    assert value == expected and type(value) is type(expected), (text, value)


@pytest.mark.parametrize("text, names", [
    ("a: 010", ["'010' has a leading zero", "write 10 or '010'"]),  # YAML 1.1: 8
    ("a: 0x1F", ["'0x1F' is not decimal"]),
    ("a: !!int 4.5", ["!!int value '4.5' is not a decimal integer"]),  # gave ValueError
    ("a: !!int 1e3", ["!!int value '1e3'"]),
    ("a: !!float abc", ["!!float value 'abc' is not a number"]),
    ("a: !!bool yes", ["!!bool value 'yes' is not true or false"]),
    ("a: " + "9" * 5000, ["more than 100 digits"]),  # Python: ValueError above 4300 digits
    ("a: !!int " + "9" * 5000, ["more than 100 digits"]),
    ("a: !!python/object:os.system x", ["tag '!!python/object:os.system' is not allowed"]),
    ("a: !!binary aGk=", ["tag '!!binary' is not allowed"]),
    ("a: !!timestamp 2024-99-99", ["tag '!!timestamp' is not allowed"]),  # gave ValueError
    ("a: !foo 1", ["tag '!foo' is not allowed"]),
])
def test_ambiguous_or_bad_scalars_are_refused(loader: type, text: str, names: list[str]) -> None:
    """`!!int 4.5` gave ValueError and `010` silently became 8: each is now one ConfigError line."""
    refused(text, "line 1", *names)


def test_duplicate_keys_are_refused_by_name_and_line(loader: type) -> None:
    """A repeated key silently kept the last value; now it names the key and the line of the repeat."""
    refused("train:\n  lr: 0.1\n  lr: 0.2\n", "duplicate key 'lr'", "line 3")


def test_merge_keys_still_work_and_explicit_keys_win(loader: type) -> None:
    """<< merges are kept (not a YAML 1.1 surprise); a key set next to a merge is not a duplicate."""
    tree = load_yaml("base: &b {x: 1, y: 2}\nrun:\n  <<: *b\n  y: 3\n", what="x")
    assert tree["run"] == {"x": 1, "y": 3}


def test_syntax_errors_name_the_line_and_clip_user_text(loader: type) -> None:
    """A YAMLError becomes '... is not valid YAML at line L: <problem>' with user text clipped."""
    refused("a: 1\nb: [1, 2\n", "is not valid YAML at line")
    msg = refused("a: *" + "x" * 5000 + "\n", "is not valid YAML at line 1")
    assert "x" * 100 not in msg


def test_load_value_parses_set_values(loader: type) -> None:
    """--set values use the same rules; a blank value is None; errors name the key; bytes that were not
    UTF-8 in argv (lone surrogates) are one line, not a UnicodeEncodeError from libyaml."""
    assert load_value("1e-3", key="train.lr") == 0.001 and load_value("  ", key="k") is None
    with pytest.raises(ConfigError) as err:
        load_value("010", key="train.steps")
    one_line(err, "--set train.steps", "leading zero")
    with pytest.raises(ConfigError) as err:
        load_value("a\udcff", key="data.probs")
    one_line(err, "--set data.probs", "not UTF-8")


# ---- fuzz: nothing but ConfigError, in bounded time -------------------------------------------------

_ATOMS = st.one_of(
    st.sampled_from(["010", "00", "1:30", "yes", "off", "~", "null", "true", "0x1F", "0o17", "0b1", "1e-3",
                     ".inf", ".nan", "-", "<<", "2024-01-01", "'q'", '"\\x41"', '"\\', "|", ">", "?", ":", ",",
                     "#c", "1_000", "1__0", "--- ", "...", "%YAML 1.1", "\t", "\x00", "\x85"]),
    st.integers(min_value=-10**400, max_value=10**400).map(str),
    st.floats().map(repr),
    st.text(max_size=8),
)
_TAGS = st.sampled_from(["", "", "!!int ", "!!float ", "!!bool ", "!!str ", "!!null ", "!!seq ", "!!map ",
                         "!!binary ", "!!timestamp ", "!!set ", "!!omap ", "!!pairs ", "!!merge ",
                         "!!python/object/apply:os.system ", "!foo ", "!<tag:x> ", "! "])
_ANCHORS = st.sampled_from(["", "", "&a ", "&b ", "*a", "*b", "*c "])
_SCALAR = st.tuples(_ANCHORS, _TAGS, _ATOMS).map("".join)


def _nest(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(children, max_size=5).map(lambda xs: "[" + ", ".join(xs) + "]"),
        st.lists(st.tuples(children, children), max_size=4).map(
            lambda kv: "{" + ", ".join(f"{k}: {v}" for k, v in kv) + "}"),
        st.tuples(_ANCHORS, _TAGS, children).map("".join),
        st.lists(children, min_size=1, max_size=4).map(lambda xs: "\n".join("- " + x for x in xs)),
        st.lists(st.tuples(st.sampled_from(["a", "b", "a", "<<", "? x", "1"]), children), max_size=4).map(
            lambda kv: "\n".join(f"{k}: {v}" for k, v in kv)),
        st.tuples(st.integers(0, 8), children).map(lambda t: "\n".join(" " * t[0] + ln for ln in
                                                                        t[1].split("\n"))),
    )


def _bomb(levels: int, width: int) -> str:
    lines = [f"l0: &l0 [{', '.join(['x'] * width)}]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines)


YAMLISH = st.one_of(
    st.recursive(_SCALAR, _nest, max_leaves=30),
    st.integers(0, 3000).map(lambda n: "[" * n + "]" * n),
    st.integers(0, 400).map(lambda n: "".join(" " * i + "k:\n" for i in range(n))),
    st.tuples(st.integers(1, 12), st.integers(1, 12)).map(lambda t: _bomb(*t)),
    st.text(max_size=200),
)
_FALLBACK = re.compile(r"\((ValueError|TypeError|OverflowError|RecursionError)\)$")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=YAMLISH, fast=st.booleans())
def test_fuzz_only_config_errors_in_bounded_time(text: str, fast: bool) -> None:
    """Random YAML-ish text with tags, anchors, aliases, deep nesting and huge integers: load_yaml returns
    or raises ConfigError (one short line, never the ValueError/TypeError safety net), within 5 s."""
    old = yamlio.LOADER
    yamlio.LOADER = LOADERS[-1] if fast else LOADERS[0]
    t0 = time.monotonic()
    try:
        load_yaml(text, what="config file 'f.yaml'")
    except ConfigError as e:
        msg = str(e)
        assert "\n" not in msg and len(msg) < 300 and msg.startswith("config file 'f.yaml'"), msg[:400]
        assert not _FALLBACK.search(msg), f"an exception escaped the loader's own checks: {msg}"
    finally:
        yamlio.LOADER = old
    assert time.monotonic() - t0 < 5.0
