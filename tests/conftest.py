import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.pop("ICL_DYNAMICS_FAULT", None)

import icl_dynamics  # noqa: E402,F401  (enables float64 before any test builds arrays)
