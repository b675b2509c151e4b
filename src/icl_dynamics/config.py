"""Run configuration: plain data, validated in one place (pydantic).

A config comes from defaults, then an optional YAML file, then ``--set dotted.key=value`` overrides whose
values are parsed as YAML 1.2 with limits (config_io.py, yamlio.py). Every problem becomes a
:class:`ConfigError` whose message names the key.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from .errors import ConfigError
from .registry import ATTENTION, DISTRIBUTIONS, ENGINES, OPTIMIZERS

ProbsSpec = str | list[float]  # a name registered in registry.DISTRIBUTIONS, or explicit probabilities


class _Strict(BaseModel):
    # strict: "1" is not an int and 1 is not a bool; extra keys are errors, not silently ignored.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


# Upper bounds are sanity limits: an absurd size gets a clear error here instead of an out-of-memory crash.
MAX_UNIFORM_SPAN = 10_000


class DataConfig(_Strict):
    num_features: int = Field(16, ge=1, le=4096, description="K, the number of orthonormal features")
    dim: int | None = Field(None, ge=1, le=65536, description="d, the token dimension (default: K); must be >= K")
    prompt_length: int | dict[str, Any] = Field(256, description="N, the number of prompt tokens; or a law "
                                                "(population engine, exact expectation): {poisson: mean} or "
                                                "{uniform: [lo, hi]}")
    probs: ProbsSpec = Field("imbalanced", description="balanced | imbalanced | zipf | an explicit list")
    dominant_prob: float = Field(0.5, gt=0.0, lt=1.0, description="p_1 for 'imbalanced'")
    zipf_exponent: float = Field(1.0, ge=0.0, allow_inf_nan=False, description="s in p_k ~ k^-s for 'zipf'")
    # relaxations of the paper's data (spec section 8); each default is the paper's setting
    features: Literal["orthonormal", "random_unit", "gram"] = Field(
        "orthonormal", description="the feature vectors V (d x K): orthonormal (the paper) | random_unit (i.i.d. "
        "uniform on the unit sphere of R^d, from the seed) | gram (V^T V = data.feature_gram)")
    feature_gram: list[list[float]] | None = Field(
        None, description="with features=gram: the K x K Gram matrix V^T V, symmetric positive definite; realised "
        "by V = U L^T (L its Cholesky factor, U the d x K orthonormal frame of 'orthonormal')")
    task_cov: Literal["identity"] | list[float] = Field(
        "identity", description="w ~ N(0, Sigma_w): identity, or K eigenvalues lambda > 0 along the features: "
        "Sigma_w = V_o diag(lambda) V_o^T + (I - V_o V_o^T), V_o = V (V^T V)^{-1/2}")
    label_noise: float = Field(0.0, ge=0.0, le=1e6, allow_inf_nan=False, description="sigma: prompt labels "
                               "y_i = <w, x_i> + N(0, sigma^2); the target <w, x_q> stays noiseless")
    token_noise: float = Field(0.0, ge=0.0, le=1e6, allow_inf_nan=False, description="sigma: N(0, sigma^2 I_d) "
                               "added to every token, the query's too (labels and target follow the noisy "
                               "tokens); train.engine=transformer only")
    tokens: Literal["features", "gaussian"] = Field(
        "features", description="features (tokens drawn from V by probs) | gaussian (tokens i.i.d. N(0, "
        "diag(token_cov)), no per-feature quantities); gaussian: train.engine=transformer only")
    token_cov: Literal["identity"] | list[float] = Field(
        "identity", description="with tokens=gaussian: the d eigenvalues (> 0) of the token covariance Lambda, "
        "along the standard basis")

    @field_validator("feature_gram")
    @classmethod
    def _gram(cls, v: list[list[float]] | None) -> list[list[float]] | None:
        if v is None:
            return v
        K = len(v)
        if K == 0 or any(len(row) != K for row in v):
            raise ValueError("must be a square K x K matrix (a list of K rows of K numbers)")
        G = np.asarray(v, dtype=np.float64)
        if not np.all(np.isfinite(G)):
            raise ValueError("entries must be finite")
        if np.max(np.abs(G - G.T)) > 1e-12 * max(1.0, np.max(np.abs(G))):
            raise ValueError("must be symmetric")
        eig = np.linalg.eigvalsh(G)
        if eig[0] <= 1e-10 * max(eig[-1], 0.0) or eig[-1] <= 0:
            raise ValueError(f"must be positive definite (full rank); its smallest eigenvalue is {eig[0]:.3g}")
        return v

    @field_validator("task_cov", "token_cov")
    @classmethod
    def _eigenvalues(cls, v: str | list[float]) -> str | list[float]:
        if isinstance(v, list):
            if not v:
                raise ValueError("must be 'identity' or a non-empty list of eigenvalues")
            if any(not math.isfinite(x) or x <= 0 or x > 1e12 for x in v):
                raise ValueError("eigenvalues must be finite and > 0 (and <= 1e12)")
        return v

    @field_validator("prompt_length")
    @classmethod
    def _prompt_length(cls, v: int | dict[str, Any]) -> int | dict[str, Any]:
        if isinstance(v, int):
            if not 1 <= v <= 10**9:
                raise ValueError("must be between 1 and 10^9")
            return v
        if list(v) == ["poisson"]:
            lam = v["poisson"]
            if isinstance(lam, bool) or not isinstance(lam, (int, float)) or not 0 < lam <= 10**9:
                raise ValueError("{poisson: mean} needs a mean in (0, 10^9]")
            return {"poisson": float(lam)}
        if list(v) == ["uniform"]:
            r = v["uniform"]
            if not (isinstance(r, list) and len(r) == 2 and all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in r) and 0 <= r[0] <= r[1] <= 10**9):
                raise ValueError("{uniform: [lo, hi]} needs integers 0 <= lo <= hi <= 10^9")
            if r[1] - r[0] > MAX_UNIFORM_SPAN:
                raise ValueError(f"{{uniform: [lo, hi]}} spans at most {MAX_UNIFORM_SPAN} lengths (its cost grows "
                                 f"with hi - lo); use {{poisson: mean}} for a wide law")
            return v
        raise ValueError("must be a whole number N, {poisson: mean} or {uniform: [lo, hi]}")

    @field_validator("probs", mode="before")
    @classmethod
    def _probs_shape(cls, v: Any) -> Any:
        ok_list = isinstance(v, list) and all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in v)
        if not (isinstance(v, str) or ok_list):
            raise ValueError("must be a distribution name (balanced, imbalanced, zipf) or a list of numbers")
        return [float(p) for p in v] if ok_list else v

    @field_validator("probs")
    @classmethod
    def _check_probs(cls, v: ProbsSpec) -> ProbsSpec:
        if isinstance(v, str):
            if v not in DISTRIBUTIONS:
                raise ValueError(f"{DISTRIBUTIONS.unknown(v)} or a list")
        else:
            if any(not math.isfinite(p) or p < 0 for p in v):
                raise ValueError("probabilities must be finite and >= 0")
            if abs(sum(v) - 1.0) > 1e-9:
                raise ValueError(f"probabilities must sum to 1 (they sum to {sum(v):.12g})")
        return v

    @model_validator(mode="after")
    def _resolve(self) -> DataConfig:
        if self.dim is None:
            object.__setattr__(self, "dim", self.num_features)
        if self.dim < self.num_features:
            raise ValueError(f"dim: d={self.dim} must be >= num_features K={self.num_features}")
        if isinstance(self.probs, list) and len(self.probs) != self.num_features:
            raise ValueError(f"probs: {len(self.probs)} entries but num_features is {self.num_features}")
        if self.probs == "imbalanced" and self.num_features < 2:
            raise ValueError("probs: 'imbalanced' needs num_features >= 2")
        K = self.num_features
        if (self.features == "gram") != (self.feature_gram is not None):
            raise ValueError("feature_gram: give it exactly when features=gram" if self.feature_gram is not None
                             else "features: 'gram' needs data.feature_gram (a K x K matrix)")
        if self.feature_gram is not None and len(self.feature_gram) != K:
            raise ValueError(f"feature_gram: {len(self.feature_gram)} x {len(self.feature_gram)} but num_features "
                             f"is {K}")
        if isinstance(self.task_cov, list) and len(self.task_cov) != K:
            raise ValueError(f"task_cov: {len(self.task_cov)} eigenvalues but num_features is {K}")
        if isinstance(self.token_cov, list):
            if self.tokens != "gaussian":
                raise ValueError("token_cov: only with data.tokens=gaussian")
            if len(self.token_cov) != self.dim:
                raise ValueError(f"token_cov: {len(self.token_cov)} eigenvalues but dim is {self.dim}")
        return self


class ModelConfig(_Strict):
    include_query_in_softmax: bool = Field(False, description="let the query's own column join the softmax")
    attention: str = Field("softmax", description="a registered attention variant (registry.ATTENTION): softmax "
                           "| linear | relu (the last two normalised by the number of keys)")
    params: Literal["q_only", "full"] = Field(
        "q_only", description="q_only: train Q (W^KQ = [[Q, 0], [0, 0]], W^PV fixed [[0, 0], [0, 1]], the paper) | "
        "full: every entry of W^KQ and W^PV; full: train.engine=transformer only")
    init_scale: float = Field(0.0, ge=0.0, le=100.0, allow_inf_nan=False, description="0: zero init (the paper); "
                              "> 0: i.i.d. N(0, init_scale^2 / d) entries from the seed (train.engine=transformer)")
    heads: int = Field(1, ge=1, le=16, description="attention heads, summed through their own W^PV; with q_only "
                       "each head's W^PV is the paper's divided by heads (heads = 1 is the paper); from zero init "
                       "the heads stay equal (use init_scale > 0); each head is full size (d+1 x d+1), so any "
                       "number fits any d; > 1: train.engine=transformer only")

    @field_validator("attention")
    @classmethod
    def _known(cls, v: str) -> str:
        return ATTENTION.check(v)


class TrainConfig(_Strict):
    engine: str = Field("population", description="a registered engine (registry.ENGINES): population | tokens | transformer")
    expectation: Literal["exact", "enumerate", "monte_carlo", "mean_field"] = Field(
        "exact", description="over the prompt's token counts (population engine): exact (closed form, any N) | "
        "enumerate (every count vector; small K, N) | monte_carlo | mean_field (n = N p)")
    quadrature_nodes: int | None = Field(None, ge=16, le=65536, description="nodes of the exact expectation's "
                                         "quadrature; None: sized from the score spread (summary.json reports "
                                         "the error estimate)")
    count_samples: int = Field(4096, ge=1, le=10**8, description="Monte Carlo count vectors, fixed for the run")
    batch_size: int = Field(256, ge=1, le=10**7, description="prompts per step (tokens and transformer engines)")
    eval_prompts: int = Field(512, ge=1, le=10**7, description="fixed prompts for the tokens and transformer engines' metrics, per query feature")
    lr: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="the step size (learning rate)")
    optimizer: str = Field("gd", description="a registered optimizer (optim.py): gd | sgd_momentum | adam | adamw")
    optimizer_args: dict[str, float | bool] = Field(default_factory=dict, description="the optimizer's "
                                                    "hyperparameters, e.g. {momentum: 0.9} or {b1: 0.9, b2: 0.999}")
    # 3000: the minor features reach eps (step 2071 at N=256) within the default run
    steps: int = Field(3000, ge=1, le=10**12, description="GD steps (with stop_at_eps, the most steps)")
    log_every: int | None = Field(None, ge=1, le=10**12, description="None: log-spaced plus linear schedule")
    max_exact_table: int = Field(2_000_000, ge=1, le=10**9, description="largest count table 'enumerate' will build")
    checkpoint_every: int | None = Field(None, ge=1, le=10**12, description="steps between checkpoints (written at the "
                                         "next chunk boundary); None: every 5% of steps, >= 30 s apart")
    method: Literal["gd", "flow"] = Field("gd", description="gd: discrete steps; flow: the gradient flow "
                                          "d scores/dt = -grad L (population engine, plain GD), integrated by "
                                          "diffrax, in time units lr x steps")
    flow_solver: Literal["tsit5", "dopri5", "dopri8", "kvaerno5"] = Field("tsit5", description="diffrax solver")
    flow_rtol: float = Field(1e-8, gt=0.0, lt=1.0, description="relative tolerance of the adaptive flow solver")
    flow_atol: float = Field(1e-10, gt=0.0, lt=1.0, description="absolute tolerance of the adaptive flow solver")
    stop_at_eps: bool = Field(False, description="stop once every feature_loss <= eps has held for stop_factor "
                                                 "times the step of the last crossing (a sweep's steps then "
                                                 "only bound the run)")
    stop_factor: float = Field(1.1, ge=1.0, le=100.0, allow_inf_nan=False,
                               description="with stop_at_eps: run on to this factor times the last crossing")

    @field_validator("engine")
    @classmethod
    def _known(cls, v: str) -> str:
        return ENGINES.check(v)

    @field_validator("optimizer")
    @classmethod
    def _known_optimizer(cls, v: str) -> str:
        return OPTIMIZERS.check(v)

    @model_validator(mode="after")
    def _optimizer_args(self) -> TrainConfig:
        from .optim import check_args

        try:
            check_args(self.optimizer, self.optimizer_args)
        except ValueError as e:
            raise ValueError(f"optimizer_args: {e}") from None
        if any(not math.isfinite(v) for v in self.optimizer_args.values()):
            raise ValueError("optimizer_args: values must be finite numbers")
        return self


from .memory import MEMORY_ENV, MemoryEstimate, WORKING_FACTOR, memory_ceiling  # noqa: E402,F401


class RunConfig(_Strict):
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    eps: float = Field(1e-2, gt=0.0, lt=1.0, description="the target per-feature loss (phases, time to eps)")
    seed: int = Field(0, ge=0, lt=2**63, description="determines every random draw of the run")
    eval: dict[str, Any] = Field(default_factory=dict, description="out-of-distribution curves logged beside "
                                 "the run's own: data keys to change, e.g. {data.probs: balanced} or "
                                 "--set eval.data.probs=balanced (eval_trajectory.npz)")

    @field_validator("eval", mode="before")
    @classmethod
    def _dotted_eval(cls, v: Any) -> Any:
        """{data: {probs: x}} (nested YAML, or --set eval.data.probs=x) as {data.probs: x}."""
        return flatten(v) if isinstance(v, dict) else v

    @model_validator(mode="after")
    def _eval_block(self) -> RunConfig:
        bad = [k for k in self.eval if not str(k).startswith("data.") or k in ("data.num_features", "data.dim")]
        if bad:
            raise ValueError(f"eval: '{str(bad[0])[:60]}' cannot change; the eval block takes data keys other than "
                             f"data.num_features and data.dim (the parameters' shapes)")
        if self.eval:  # the eval distribution must be one this engine can compute, checked before any run
            try:
                with_overrides(self.model_copy(update={"eval": {}}), dict(self.eval))
            except ConfigError as e:
                raise ValueError(f"'eval' block: {e}") from None
        return self

    @model_validator(mode="after")
    def _flow_needs_population(self) -> RunConfig:
        t = self.train
        if t.method == "flow" and (t.engine != "population" or t.optimizer != "gd"):
            raise ValueError("train.method: the gradient flow needs train.engine=population and train.optimizer=gd "
                             "(a deterministic gradient)")
        return self

    @model_validator(mode="after")
    def _relaxations_fit_engine(self) -> RunConfig:
        # what each engine can compute (spec section 8): the reduced engines need every token to be a feature
        # and Q the only trained parameter; the tokens engine also samples w ~ N(0, I) on orthonormal features
        d, m, t = self.data, self.model, self.train
        literal_only = [("data.token_noise", d.token_noise > 0), ("data.tokens", d.tokens != "features"),
                        ("model.params", m.params != "q_only"), ("model.init_scale", m.init_scale > 0),
                        ("model.heads", m.heads > 1)]
        if t.engine in ("population", "tokens"):
            for key, on in literal_only:
                if on:
                    raise ValueError(f"{key}: train.engine={t.engine} cannot compute it (only a literal model on "
                                     f"sampled prompts can); use train.engine=transformer")
        if t.engine == "tokens":
            for key, on in [("data.features", d.features != "orthonormal"), ("data.task_cov", d.task_cov != "identity"),
                            ("data.label_noise", d.label_noise > 0)]:
                if on:
                    raise ValueError(f"{key}: train.engine=tokens has the paper's data only; use train.engine="
                                     f"transformer (sampled prompts) or train.engine=population (exact)")
        if t.engine == "population" and t.expectation == "exact" and m.attention != "softmax":
            raise ValueError(f"model.attention: train.expectation=exact is softmax-only; for {m.attention!r} "
                             f"use train.expectation=enumerate, monte_carlo or mean_field")
        return self

    @model_validator(mode="after")
    def _law_needs_exact(self) -> RunConfig:
        if isinstance(self.data.prompt_length, dict) and not (
                self.train.engine == "population" and self.train.expectation == "exact"):
            raise ValueError("data.prompt_length: a prompt-length law needs train.engine=population with "
                             "train.expectation=exact (computed through its generating function)")
        return self

    def memory(self) -> MemoryEstimate:
        """Every array the run will hold (the engine's declared ones, the logged trajectory), in bytes,
        times WORKING_FACTOR; estimated from the config alone, before anything is built."""
        t = self.train
        K = self.data.num_features
        rows = (t.steps // t.log_every + 2) if t.log_every else 2 * 256 + 2
        sizes = [("train.log_every", "the logged trajectory (rows x 2 K^2)", rows * (2 * K * K + K + 2)),
                 *ENGINES[t.engine].sizes(self)]
        key, what, _ = max(sizes, key=lambda x: x[2])
        return MemoryEstimate(WORKING_FACTOR * 8 * sum(n for _, _, n in sizes), key, what)

    @model_validator(mode="after")
    def _fits_in_memory(self) -> RunConfig:
        # each field is in range, but their products size the arrays: refuse here, before a run directory
        # is made, what would not fit
        try:
            est, ceiling = self.memory(), memory_ceiling()
        except ConfigError as e:
            raise ValueError(str(e)) from None
        if est.bytes > ceiling:
            raise ValueError(f"{est.key}: the run would hold about {est.bytes / 2**30:.3g} GiB (largest: {est.what}), "
                             f"over the memory ceiling of {ceiling / 2**30:.3g} GiB ({MEMORY_ENV}); change {est.key}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def hash(self) -> str:
        """Content hash of the resolved config (stable across runs and machines)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# reading, parsing and overriding configs (config_io.py), and the memory estimate (memory.py): re-exported,
# so callers import every config function from here
from .config_io import (config_keys, flatten, int_keys, load_config, parse_override, read_yaml,  # noqa: E402,F401
                        set_dotted, validate, with_overrides)
