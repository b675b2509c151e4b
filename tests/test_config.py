"""Configuration: defaults, YAML + --set precedence, validation messages naming the key, and probabilities."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from icl_dynamics.config import load_config, parse_override, validate, with_overrides
from icl_dynamics.data import feature_probs, setting_name
from icl_dynamics.errors import ConfigError
from icl_dynamics.cli import main


def test_defaults_are_the_documented_ones():
    cfg = load_config()
    d, m, t = cfg.data, cfg.model, cfg.train
    assert (d.num_features, d.dim, d.prompt_length, d.probs, d.dominant_prob, d.zipf_exponent) == \
        (16, 16, 256, "imbalanced", 0.5, 1.0)
    assert m.include_query_in_softmax is False
    assert (t.engine, t.expectation, t.lr, t.log_every) == ("population", "exact", 1.0, None)
    assert cfg.eps == 1e-2


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  num_features: 4\n  probs: balanced\ntrain:\n  lr: 0.5\n  steps: 10\neps: 1e-3\n")
    cfg = load_config(path, ["train.lr=0.25", "data.probs=[0.4,0.3,0.2,0.1]", "train.log_every=1",
                             "model.include_query_in_softmax=true", "seed=7"])
    assert cfg.data.num_features == 4 and cfg.data.dim == 4  # d defaults to K
    assert cfg.train.lr == 0.25 and cfg.train.steps == 10 and cfg.train.log_every == 1
    assert cfg.data.probs == [0.4, 0.3, 0.2, 0.1]
    assert cfg.model.include_query_in_softmax is True and cfg.seed == 7 and cfg.eps == 1e-3


def test_parse_override_parses_yaml_values():
    assert parse_override("a.b=[0.6,0.2,0.2]") == ("a.b", [0.6, 0.2, 0.2])
    assert parse_override("x=1") == ("x", 1)
    assert parse_override("x=1e-3") == ("x", 1e-3)  # YAML 1.2 float; PyYAML alone gives the string '1e-3'
    assert parse_override("x=[1e-3,2E2]") == ("x", [1e-3, 200.0])
    assert parse_override("x=null") == ("x", None)
    assert parse_override("x=a=b") == ("x", "a=b")
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("novalue")


def test_with_overrides_keeps_d_tied_to_K_unless_set():
    cfg = load_config(None, ["data.num_features=4"])
    assert with_overrides(cfg, {"data.num_features": 6}).data.dim == 6
    assert with_overrides(cfg, {"data.num_features": 3, "data.dim": 5}).data.dim == 5
    cfg5 = load_config(None, ["data.num_features=3", "data.dim=5"])
    assert with_overrides(cfg5, {"data.num_features": 4}).data.dim == 5


def test_hash_is_stable_and_sensitive():
    a, b = load_config(None, ["seed=1"]), load_config(None, ["seed=1"])
    assert a.hash() == b.hash() and len(a.hash()) == 16
    assert a.hash() != load_config(None, ["seed=2"]).hash()
    assert validate(a.to_dict()).hash() == a.hash()  # the resolved dict re-validates to the same config


@pytest.mark.parametrize("overrides,key", [
    (["data.num_features=5", "data.dim=3"], "data.dim"),
    (["data.num_features=3", "data.probs=[-0.1,0.6,0.5]"], "data.probs"),
    (["data.num_features=3", "data.probs=[0.5,0.3,0.1]"], "data.probs"),
    (["data.num_features=3", "data.probs=[0.5,0.5]"], "data.probs"),
    (["train.lr=0"], "train.lr"),
    (["train.lr=-1"], "train.lr"),
    (["train.lr=.nan"], "train.lr"),
    (["data.prompt_length=0"], "data.prompt_length"),
    (["data.foo=1"], "data.foo"),
    (["bogus=1"], "bogus"),
    (["train.steps=abc"], "train.steps"),
    (["train.steps=1.5"], "train.steps"),
    (["train.steps=true"], "train.steps"),
    (["model.include_query_in_softmax=maybe"], "model.include_query_in_softmax"),
    (["data.probs=uniform"], "data.probs"),
    (["train.engine=gpu"], "train.engine"),
    (["eps=0"], "eps"),
    (["data.num_features=1", "data.probs=imbalanced"], "data.probs"),
])
def test_bad_values_name_their_key(overrides, key):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides)
    msg = str(e.value)
    assert f"'{key}'" in msg and "\n" not in msg


def test_enumerated_table_too_large_is_refused_at_validation():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.expectation=enumerate", "data.num_features=8", "data.prompt_length=64"])
    msg = str(e.value)
    assert "'train.expectation'" in msg and f"{math.comb(64 + 7, 7):,}" in msg and "expectation=exact" in msg
    # the closed form and the tokens engine do not enumerate counts, so the same data is fine there
    load_config(None, ["train.expectation=exact", "data.num_features=8", "data.prompt_length=64"])
    load_config(None, ["train.expectation=enumerate", "data.num_features=8", "data.prompt_length=64",
                       "train.engine=tokens"])


@pytest.mark.parametrize("value, ok", [("{poisson: 50}", True), ("{uniform: [10, 20]}", True),
                                       ("{poisson: -1}", False), ("{uniform: [20, 10]}", False),
                                       ("{uniform: [0, 20000]}", False), ("{binomial: 3}", False), ("0", False)])
def test_prompt_length_laws(value, ok):
    sets = [f"data.prompt_length={value}"]
    if ok:
        assert load_config(None, sets).data.prompt_length
        with pytest.raises(ConfigError, match="needs train.engine=population with train.expectation=exact"):
            load_config(None, [*sets, "train.expectation=mean_field"])
    else:
        with pytest.raises(ConfigError, match="'data.prompt_length'"):
            load_config(None, sets)


def test_feature_probs_and_setting_names():
    cfg = load_config(None, ["data.num_features=4"])
    np.testing.assert_allclose(feature_probs(cfg.data), [0.5, 0.5 / 3, 0.5 / 3, 0.5 / 3], rtol=1e-15)
    assert setting_name(cfg.data) == "imbalanced"
    bal = with_overrides(cfg, {"data.probs": "balanced"})
    np.testing.assert_allclose(feature_probs(bal.data), 0.25, rtol=1e-15)
    assert setting_name(bal.data) == "balanced"
    z = with_overrides(cfg, {"data.probs": "zipf", "data.zipf_exponent": 2.0})
    w = 1 / np.arange(1, 5) ** 2
    np.testing.assert_allclose(feature_probs(z.data), w / w.sum(), rtol=1e-15)
    assert setting_name(z.data) == "custom"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=6).filter(lambda w: sum(w) > 1e-3))
def test_any_valid_probability_list_is_accepted(weights):
    p = [w / sum(weights) for w in weights]
    if abs(sum(p) - 1.0) > 1e-9:  # pragma: no cover - float rounding of the normalisation
        return
    cfg = validate({"data": {"num_features": len(p), "probs": p}})
    q = feature_probs(cfg.data)
    assert q.shape == (len(p),) and abs(q.sum() - 1) < 1e-12 and np.all(q >= 0)


TINY_RUN = ["--set", "data.num_features=3", "--set", "data.prompt_length=8", "--set", "train.expectation=mean_field",
            "--set", "train.steps=20", "--quiet"]


def test_array_sizes_beyond_memory_are_refused_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--set", "train.engine=tokens", "--set", "data.prompt_length=100000000", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "memory ceiling" in err[0] and "GiB" in err[0]
    assert not out.exists()
