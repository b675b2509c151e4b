"""The memory a run may plan to hold, and its estimate's record (RunConfig.memory computes the estimate from
the config alone, before anything is built)."""

from __future__ import annotations

import os
import re
from typing import NamedTuple

from .errors import ConfigError
from .fsio import clip

MEMORY_ENV = "ICL_DYNAMICS_MAX_MEMORY"
MEMORY_FRACTION = 0.5  # of the machine's memory, when MEMORY_ENV is not set
WORKING_FACTOR = 4  # gradients, optimizer state and temporaries: a few copies of the declared arrays


def memory_ceiling() -> int:
    """Bytes a run may plan to hold: ``ICL_DYNAMICS_MAX_MEMORY`` (bytes, or with a K/M/G/T suffix), else half
    of the machine's physical memory."""
    raw = os.environ.get(MEMORY_ENV, "").strip()
    if raw:
        m = re.fullmatch(r"(\d{1,15})([KMGT]?)i?B?", raw, re.IGNORECASE)
        if not m:
            raise ConfigError(f"{MEMORY_ENV}='{clip(raw)}' is not a size; use bytes or a suffix, e.g. 8G")
        return int(m.group(1)) * 1024 ** " KMGT".index((m.group(2) or " ").upper())
    try:
        return int(MEMORY_FRACTION * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError):  # pragma: no cover - not POSIX
        return 8 * 2**30


class MemoryEstimate(NamedTuple):
    """The bytes a run will hold, and the config key of its largest array (the one to change)."""

    bytes: int
    key: str
    what: str
