"""icl-dynamics: in-context learning dynamics of one-layer softmax transformers.

Data flows data -> model -> objectives -> trainer -> observers -> storage -> plots / report.
Dynamics run in float64, so importing the package enables JAX's x64 mode.
"""

import jax

jax.config.update("jax_enable_x64", True)

__version__ = "0.1.0"

from .config import RunConfig, load_config  # noqa: E402
from .trainer import run_training  # noqa: E402

__all__ = ["RunConfig", "load_config", "run_training", "__version__"]
