"""icl-dynamics: in-context learning dynamics of one-layer softmax transformers.

Data flows config -> data -> model -> engines -> trainer -> measures / phases -> storage -> plots, with
sweeps/ and reproduce/ above. Dynamics run in float64, explicitly where they run: importing the package
leaves the caller's JAX defaults (float32 unless they chose otherwise) untouched.
"""

__version__ = "0.1.0"

from .config import RunConfig, load_config, with_overrides  # noqa: E402
from .engines import Engine, EngineSpec, build_engine  # noqa: E402
from .registry import ATTENTION, DISTRIBUTIONS, ENGINES  # noqa: E402
from .runner import execute, resume  # noqa: E402
from .storage import Run, load_run  # noqa: E402
from .sweeps import load_sweep, run_sweep  # noqa: E402
from .trainer import run_training, train, train_batched  # noqa: E402
from .trajectory import Metrics, Trajectory  # noqa: E402

__all__ = ["RunConfig", "load_config", "with_overrides", "Engine", "EngineSpec", "build_engine", "ATTENTION",
           "DISTRIBUTIONS", "ENGINES", "execute", "resume", "Run", "load_run", "load_sweep", "run_sweep",
           "run_training", "train", "train_batched", "Metrics", "Trajectory", "__version__"]
