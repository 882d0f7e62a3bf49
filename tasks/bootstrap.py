"""The project's bootstrap settings, declared once: the report's intervals (``tasks.report_intervals``), the compare
gate's (``tasks.compare``) and the sanity check's interval of each median (``tasks.sanity``) are ``CONFIDENCE``
intervals from ``N_BOOT`` resamples, each cell's resamples drawn from its own stream :func:`cell_seed` (``SEED`` and
the cell's key), so that an interval is the same bytes run after run and does not depend on the other cells.
numpy only: a stage that needs the settings does not import pandas."""
from __future__ import annotations

import zlib

import numpy as np

CONFIDENCE = 0.95
N_BOOT = 2000
SEED = 0              # every bootstrap is seeded from this constant: same bytes run after run


def cell_seed(seed: int, *key: str) -> np.random.SeedSequence:
    """The random stream of one cell: ``SeedSequence([seed, crc32('|'.join(key))])`` (crc32: the same in every
    process, unlike ``hash``)."""
    return np.random.SeedSequence([int(seed), zlib.crc32("|".join(map(str, key)).encode())])


__all__ = ["CONFIDENCE", "N_BOOT", "SEED", "cell_seed"]
