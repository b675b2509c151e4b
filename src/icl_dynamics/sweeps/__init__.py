"""Sweeps: a grid of runs, vectorised with ``jax.vmap``, spread over Dask workers, stored resumably.

Flow, one module per stage: ``spec`` (YAML -> one validated config per grid point) -> ``plan`` (batches of
runs sharing array shapes) -> ``worker`` (one ``trainer.train_batched`` per batch, one row per run) ->
``store`` (the sweep directory) ; ``driver`` runs it all, ``figures`` draws the table (docs/sweeps.md).
"""

from .driver import run_sweep
from .spec import SweepSpec, expand, load_spec, parse_spec
from .store import SPEC_FILE, TABLE_FILE, load_sweep

__all__ = ["SweepSpec", "expand", "load_spec", "parse_spec", "run_sweep", "load_sweep", "SPEC_FILE", "TABLE_FILE"]
