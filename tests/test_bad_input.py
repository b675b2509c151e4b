"""Bad input everywhere (issue 5): generated malformed configs, --set overrides, sweep specs and damaged run
directories must end in exit code 2 and one stderr line that names the offending key or file, never a
traceback. No example trains: every one fails validation first.

Property: for a config that is valid except for one key (given a value that is invalid on its own, or a
key that does not exist), the CLI names exactly that dotted key.
"""

from __future__ import annotations

import contextlib
import io
import json
import keyword
import string
import tempfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from icl_dynamics import cli
from icl_dynamics.config import RunConfig, validate
from icl_dynamics.errors import ConfigError
from icl_dynamics.storage import save_npz, write_config

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------ values invalid on their own, per key

_idents = st.text(string.ascii_lowercase + "_", min_size=1, max_size=10).filter(
    lambda s: s.isidentifier() and not keyword.iskeyword(s))
_junk = st.one_of(
    st.text(max_size=8),  # strings are never numbers or booleans in strict mode ("1" included)
    st.lists(st.integers(-3, 3), max_size=3),
    st.dictionaries(_idents, st.integers(), min_size=1, max_size=2),
)
_non_int = st.one_of(_junk, st.booleans(), st.floats(allow_nan=True, allow_infinity=True))
_pos_int_bad = st.one_of(_non_int, st.integers(max_value=0), st.none())
_opt_pos_int_bad = st.one_of(_non_int, st.integers(max_value=0))
_non_float = st.one_of(_junk, st.booleans(), st.none())
_nan = st.just(float("nan"))


def _outside(lo=None, hi=None):
    parts = [_non_float, _nan]
    if lo is not None:
        parts.append(st.floats(max_value=lo))  # includes lo itself and -inf
    if hi is not None:
        parts.append(st.floats(min_value=hi))
    return st.one_of(parts)


BAD_VALUES: dict[str, st.SearchStrategy] = {
    "data.num_features": _pos_int_bad,
    "data.dim": _opt_pos_int_bad,
    "data.prompt_length": st.one_of(_pos_int_bad.filter(lambda v: not isinstance(v, dict)),
                                    st.dictionaries(st.sampled_from(["poisson", "uniform", "normal"]),
                                                    st.one_of(st.floats(max_value=0), st.lists(st.integers(-5, -1),
                                                                                                max_size=3)),
                                                    min_size=1, max_size=2)),
    "data.dominant_prob": _outside(0.0, 1.0),
    "data.zipf_exponent": st.one_of(_non_float, _nan, st.floats(max_value=-1e-12)),
    "data.probs": st.one_of(
        st.text(max_size=8).filter(lambda s: s not in ("balanced", "imbalanced", "zipf")),
        st.integers(), st.booleans(), st.none(),
        st.lists(st.floats(0, 1), min_size=16, max_size=16).filter(lambda p: abs(sum(p) - 1) > 1e-6),
        st.lists(st.floats(-1, -1e-3), min_size=16, max_size=16),
        st.integers(1, 15).map(lambda n: [1.0 / n] * n),  # sums to 1, wrong length for K=16
    ),
    "data.features": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("orthonormal", "random_unit", "gram")),
                               st.integers(), st.none()),
    "data.feature_gram": st.one_of(  # not a matrix, not square, not symmetric positive definite, or K != 16
        st.integers(), st.text(max_size=5), st.booleans(), st.just([]),
        st.lists(st.lists(st.floats(-1, 1), min_size=2, max_size=2), min_size=3, max_size=3),
        st.just([[1.0, 2.0], [2.0, 1.0]]), st.just([[1.0, 0.5], [0.0, 1.0]]), st.just([[1.0, 0.0], [0.0, 1.0]])),
    "data.task_cov": st.one_of(
        st.text(max_size=8).filter(lambda s: s != "identity"), st.integers(), st.none(), st.just([]),
        st.lists(st.floats(0.1, 2.0), min_size=1, max_size=15),  # the wrong length for K=16
        st.lists(st.floats(max_value=0.0), min_size=16, max_size=16)),
    "data.label_noise": st.one_of(_non_float, _nan, st.floats(max_value=-1e-12), st.floats(min_value=1e6 + 1)),
    "data.token_noise": st.one_of(_non_float, _nan, st.floats(max_value=-1e-12), st.floats(min_value=1e6 + 1)),
    "data.tokens": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("features", "gaussian")),
                             st.integers(), st.none()),
    "data.token_cov": st.one_of(  # also any list while data.tokens=features
        st.text(max_size=8).filter(lambda s: s != "identity"), st.integers(), st.none(), st.just([]),
        st.lists(st.floats(0.1, 2.0), min_size=1, max_size=16),
        st.lists(st.floats(max_value=0.0), min_size=16, max_size=16)),
    "model.include_query_in_softmax": st.one_of(_junk, st.integers(), st.floats(), st.none()),
    "model.attention": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("softmax", "linear", "relu")),
                                 st.integers(), st.none()),
    "model.params": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("q_only", "full")), st.integers(),
                              st.none()),
    "model.init_scale": st.one_of(_non_float, _nan, st.floats(max_value=-1e-12), st.floats(min_value=100.001)),
    "model.heads": st.one_of(_non_int, st.none(), st.integers(max_value=0), st.integers(min_value=17)),
    "train.engine": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("population", "tokens", "transformer")),
                              st.integers(), st.none()),
    "train.expectation": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("exact", "enumerate",
                                                                                    "monte_carlo", "mean_field")),
                                   st.integers(), st.none()),
    "train.method": st.one_of(st.text(max_size=6).filter(lambda s: s not in ("gd", "flow")), st.integers()),
    "train.flow_solver": st.one_of(st.text(max_size=6), st.integers(), st.none()),
    "train.flow_rtol": st.one_of(_outside(0.0, 1.0), _nan),
    "train.flow_atol": st.one_of(_outside(0.0, 1.0), _nan),
    "train.stop_at_eps": st.one_of(_junk, st.integers(), st.floats(), st.none()),
    "train.stop_factor": st.one_of(_non_float, _nan, st.floats(max_value=0.999), st.floats(min_value=100.001)),
    "train.quadrature_nodes": st.one_of(st.integers(max_value=15), st.integers(min_value=65537), _non_int),
    "train.count_samples": _pos_int_bad,
    "train.batch_size": _pos_int_bad,
    "train.eval_prompts": _pos_int_bad,
    "train.lr": st.one_of(_outside(0.0), st.just(float("inf"))),
    "train.optimizer": st.one_of(st.text(max_size=8).filter(lambda s: s not in ("gd", "sgd_momentum", "adam",
                                                                              "adamw")), st.integers(), st.none()),
    "train.optimizer_args": st.one_of(  # gd takes no arguments; non-numbers and non-mappings are refused
        st.dictionaries(st.sampled_from(["momentum", "b1", "lr", "x"]), st.floats(0, 1), min_size=1, max_size=2),
        st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)),
    "train.steps": _pos_int_bad,
    "train.log_every": _opt_pos_int_bad,
    "train.max_exact_table": _pos_int_bad,
    "train.checkpoint_every": _opt_pos_int_bad,
    "eps": _outside(0.0, 1.0),
    "eval": st.one_of(st.dictionaries(st.sampled_from(["data.num_features", "data.dim", "train.lr", "seed", "x"]),
                                      st.integers(1, 4), min_size=1, max_size=2),
                      st.integers(), st.text(max_size=4), st.lists(st.integers(), max_size=2)),
    "seed": st.one_of(_non_int, st.none(), st.integers(max_value=-1), st.integers(min_value=2**63)),
}
SECTIONS = {name: set(f.annotation.model_fields) for name, f in RunConfig.model_fields.items()
            if hasattr(f.annotation, "model_fields")}


def test_every_config_key_has_bad_values():
    keys = {f"{s}.{k}" for s, fields in SECTIONS.items() for k in fields}
    keys |= {k for k in RunConfig.model_fields if k not in SECTIONS}
    assert keys == set(BAD_VALUES)  # a new config key needs its bad values here


class _Dumper(yaml.SafeDumper):
    """Double-quotes every string, so a generated string such as '1E0' stays a string when read back."""


_Dumper.add_representer(str, lambda d, s: d.represent_scalar("tag:yaml.org,2002:str", s, style='"'))


def _dump(v) -> str:
    return yaml.dump(v, Dumper=_Dumper, default_flow_style=True, width=10**6)


def _yaml_value(v) -> str:
    return _dump(v).strip().removesuffix("...").strip()


def _guard(d: str) -> str:
    """An --out that is a plain file: should a generated config ever be valid, the CLI stops with a
    (test-failing) message about --out instead of training."""
    Path(d, "guard").write_text("")
    return f"{d}/guard"


def _call(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue().strip().splitlines()


def _assert_one_line_naming(code, err, *names):
    assert code == 2, err
    assert len(err) == 1, err
    assert err[0].startswith("icl-dynamics: error:") and "Traceback" not in err[0]
    for n in names:
        assert n in err[0], (n, err)


def _set(tree: dict, dotted: str, value) -> dict:
    node = tree
    *head, last = dotted.split(".")
    for k in head:
        node = node[k]
    node[last] = value
    return tree


_key_and_value = st.sampled_from(sorted(BAD_VALUES)).flatmap(lambda k: st.tuples(st.just(k), BAD_VALUES[k]))


@settings(max_examples=150, **SETTINGS)
@given(_key_and_value)
def test_bad_set_override_names_the_key(kv):
    key, value = kv
    with tempfile.TemporaryDirectory() as d:
        code, err = _call(["train", "--quiet", "--out", _guard(d), "--set", f"{key}={_yaml_value(value)}"])
        _assert_one_line_naming(code, err, f"'{key}'")


@settings(max_examples=100, **SETTINGS)
@given(_key_and_value, st.booleans())
def test_bad_yaml_file_names_the_key(kv, full):
    key, value = kv
    # the rest of the file is valid: either the full default config or just the one key
    tree = RunConfig().to_dict() if full else {}
    if not full:
        for part in key.split(".")[:-1]:
            tree[part] = {}
    _set(tree, key, value)
    with pytest.raises(ConfigError, match=f"'{key}'"):
        validate(tree)
    with tempfile.TemporaryDirectory() as d:
        Path(d, "c.yaml").write_text(_dump(tree))
        code, err = _call(["train", "--quiet", "--out", _guard(d), "--config", f"{d}/c.yaml"])
        _assert_one_line_naming(code, err, f"'{key}'")


_unknown = st.one_of(
    _idents.filter(lambda k: k not in RunConfig.model_fields),
    st.tuples(st.sampled_from(sorted(SECTIONS)), _idents).filter(lambda t: t[1] not in SECTIONS[t[0]])
    .map(".".join),
)


@settings(max_examples=50, **SETTINGS)
@given(_unknown, st.one_of(st.integers(), st.text(max_size=5), st.floats(allow_nan=False)), st.booleans())
def test_unknown_key_is_named(key, value, via_file):
    with tempfile.TemporaryDirectory() as d:
        if via_file:
            tree: dict = {}
            *head, last = key.split(".")
            node = tree
            for k in head:
                node = node.setdefault(k, {})
            node[last] = value
            Path(d, "c.yaml").write_text(_dump(tree))
            args = ["--config", f"{d}/c.yaml"]
        else:
            args = ["--set", f"{key}={_yaml_value(value)}"]
        code, err = _call(["train", "--quiet", "--out", _guard(d), *args])
        _assert_one_line_naming(code, err, f"unknown config key '{key}'")


_broken_override = st.one_of(  # (text, what the message must name)
    _idents.map(lambda k: (f"train.{k}", f"train.{k}")),  # no '='
    st.sampled_from(["=1", ".=1", "train..lr=1", "train.=1", ".train.lr=1"]).map(
        lambda t: (t, f"'{t.split('=')[0]}'")),
    st.sampled_from(["train.lr=[1, 2", "train.lr={a: 1", "train.lr='x", "train.lr=a: b: c", "train.lr=@x"]).map(
        lambda t: (t, "train.lr")),
    st.sampled_from(sorted(BAD_VALUES)).map(lambda k: (f"{k}.sub=1", f"'{k}")),  # descending into a value
)


@settings(max_examples=40, **SETTINGS)
@given(_broken_override)
def test_malformed_override_is_one_line(text_and_name):
    text, name = text_and_name
    with tempfile.TemporaryDirectory() as d:
        code, err = _call(["train", "--quiet", "--out", _guard(d), "--set", text])
        _assert_one_line_naming(code, err, name)


@pytest.mark.parametrize("text,names", [
    ("[1, 2]", ["mapping"]), ("just a string", ["mapping"]), ("data: {num_features: [", ["not valid YAML"]),
    ("data:\n  - 1\n  - 2", ["'data'"]), ("train: 3", ["'train'"]), ("{{{", ["not valid YAML"]),
    ("\x00\x01", ["c.yaml"])])
def test_broken_yaml_file_is_one_line(tmp_path, text, names):
    (tmp_path / "c.yaml").write_text(text)
    code, err = _call(["train", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "c.yaml")])
    _assert_one_line_naming(code, err, *names)


def test_missing_config_file_is_one_line(tmp_path):
    code, err = _call(["train", "--out", str(tmp_path / "run"), "--config", str(tmp_path / "nope.yaml")])
    _assert_one_line_naming(code, err, "nope.yaml")


# ------------------------------------------------------------------------------------ sweep specs

SWEEP_BAD = st.one_of(
    # unknown top-level keys
    _idents.filter(lambda k: k not in ("base", "grid", "seeds", "keep_trajectories", "max_batch"))
    .map(lambda k: ({k: 1, "grid": {"seed": [0]}}, k)),
    # wrong types / ranges for top-level keys
    st.tuples(st.sampled_from(["seeds", "max_batch"]), _pos_int_bad.filter(lambda v: v is not None))
    .map(lambda t: ({t[0]: t[1], "grid": {"train.lr": [1.0]}}, t[0])),
    _junk.map(lambda v: ({"keep_trajectories": v, "grid": {"seed": [0]}}, "keep_trajectories")),
    # malformed axes
    st.tuples(st.sampled_from(sorted(BAD_VALUES)), st.one_of(
        st.just([]), st.integers(), st.text(max_size=5),
        st.just({"range": [0.5, 2]}), st.just({"range": [1, 5, 0]}), st.just({"linspace": [0, 1, 0]}),
        st.just({"logspace": [-1, 1, 3]}), st.just({"int_logspace": [1, 10]}), st.just({"bogus": [1, 2, 3]}),
        st.just({"linspace": ["a", 1, 2]}), st.just({"range": [5, 1]}))).map(lambda t: ({"grid": {t[0]: t[1]}}, t[0])),
    # an axis value that is invalid for its key
    _key_and_value.map(lambda kv: ({"grid": {kv[0]: [kv[1]]}}, kv[0])),
    # a bad base value, or an axis on a key that does not exist
    _key_and_value.map(lambda kv: ({"base": {kv[0]: kv[1]}, "grid": {"seed": [0, 1]}}, kv[0])),
    _unknown.map(lambda k: ({"grid": {k: [1, 2]}}, k)),
)


@settings(max_examples=80, **SETTINGS)
@given(SWEEP_BAD)
def test_malformed_sweep_spec_names_the_key(spec_and_key):
    spec, key = spec_and_key
    with tempfile.TemporaryDirectory() as d:
        Path(d, "s.yaml").write_text(_dump(spec))
        code, err = _call(["sweep", f"{d}/s.yaml", "--out", _guard(d), "--workers", "1", "--quiet"])
        _assert_one_line_naming(code, err, key)


@pytest.mark.parametrize("text", ["[1, 2]", "grid: [", "7", ""])
def test_broken_sweep_file_is_one_line(tmp_path, text):
    (tmp_path / "s.yaml").write_text(text)
    code, err = _call(["sweep", str(tmp_path / "s.yaml"), "--out", str(tmp_path / "out"), "--quiet"])
    _assert_one_line_naming(code, err)


# ---------------------------------------------------------------- damaged or other-version run dirs

K = 3


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """A finished-looking run directory, written without training (the damage is what is under test)."""
    out = tmp_path / "run"
    out.mkdir()
    cfg = validate({"data": {"num_features": K, "probs": "balanced"}, "train": {"steps": 10}})
    write_config(out, cfg)
    T = 4
    rng = np.random.default_rng(0)
    att = rng.dirichlet(np.ones(K), size=(T, K))
    save_npz(out / "trajectory.npz", {
        "steps": np.array([0, 1, 5, 10]), "loss": np.linspace(0.4, 0.1, T), "feature_loss": np.full((T, K), 0.2),
        "scores": rng.normal(size=(T, K, K)), "attention": att, "probs": np.full(K, 1 / K)})
    (out / "summary.json").write_text(json.dumps({"status": "completed"}))
    return out


def _rewrite_npz(out: Path, **changes):
    with np.load(out / "trajectory.npz") as z:
        arrays = dict(z)
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(out / "trajectory.npz", **arrays)


DAMAGES = {
    "no_dir": (lambda o: __import__("shutil").rmtree(o), "does not exist"),
    "no_config": (lambda o: (o / "config.yaml").unlink(), "config.yaml"),
    "config_other_version": (lambda o: (o / "config.yaml").write_text(
        (o / "config.yaml").read_text() + "future_key: 1\n"), "future_key"),
    "config_renamed_key": (lambda o: (o / "config.yaml").write_text(
        (o / "config.yaml").read_text().replace("num_features:", "n_features:")), "n_features"),
    "config_bad_yaml": (lambda o: (o / "config.yaml").write_text("data: [\n"), "config.yaml"),
    "config_is_dir": (lambda o: ((o / "config.yaml").unlink(), (o / "config.yaml").mkdir()), "config.yaml"),
    "no_trajectory": (lambda o: (o / "trajectory.npz").unlink(), "trajectory.npz"),
    "truncated_npz": (lambda o: (o / "trajectory.npz").write_bytes((o / "trajectory.npz").read_bytes()[:700]),
                      "trajectory.npz"),
    "garbage_npz": (lambda o: (o / "trajectory.npz").write_bytes(b"\x00" * 100), "trajectory.npz"),
    "npz_missing_array": (lambda o: _rewrite_npz(o, attention=None), "attention"),
    "npz_wrong_shape": (lambda o: _rewrite_npz(o, scores=np.zeros((4, K + 1, K + 1))), "scores"),
    "npz_wrong_dtype": (lambda o: _rewrite_npz(o, loss=np.array(["a", "b", "c", "d"])), "loss"),
    "npz_object_array": (lambda o: _rewrite_npz(o, steps=np.array([0, None, 2, 3], dtype=object)),
                         "trajectory.npz"),
    "npz_empty": (lambda o: _rewrite_npz(o, steps=np.zeros(0), loss=np.zeros(0)), "steps"),
    "summary_bad_json": (lambda o: (o / "summary.json").write_text("{not json"), "summary.json"),
    "summary_not_object": (lambda o: (o / "summary.json").write_text("[1, 2]"), "summary.json"),
    "summary_binary": (lambda o: (o / "summary.json").write_bytes(b"\xff\xfe\x00"), "summary.json"),
}


@pytest.mark.parametrize("command", ["plot", "phases"])
@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_run_dir_is_one_line(run_dir, damage, command):
    cli.build_parser()  # registers the commands in icl_dynamics/commands/
    if command not in cli.COMMANDS:
        pytest.skip(f"no '{command}' command yet")
    fn, words = DAMAGES[damage]
    fn(run_dir)
    code, err = _call([command, str(run_dir)])
    _assert_one_line_naming(code, err, words)


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_resume_of_damaged_run_dir_is_one_line(run_dir, damage):
    fn, words = DAMAGES[damage]
    fn(run_dir)
    code, err = _call(["train", "--resume", str(run_dir)])
    _assert_one_line_naming(code, err)  # config damage is named; otherwise "finished" or "no checkpoint"
    if damage.startswith("config") or damage == "no_dir":
        assert words in err[0]
