"""Bootstrap 95 % intervals of the report's mean body-part shares per bucket (person height, occlusion, detector
confidence, found / missed, miss type), and their HTML.

Every cell (part × bucket) is the mean share over the pedestrians in it; its interval resamples *images* (a cluster
bootstrap: pedestrians of one image share its lighting, background and detector pass, so they are not independent)
with :func:`detection.slices.mean_interval` (BCa, Efron & Tibshirani 1993, ch. 14.3) applied to the images'
linearised values (the empirical influence values of the ratio, Davison & Hinkley, *Bootstrap Methods and their
Application*, 1997, §2.7.2 and §3.8): with ``S_i`` the sum of the shares and ``n_i`` the pedestrians of image ``i``
in the cell, ``N = Σ n_i`` over the ``K`` images and ``R = Σ S_i / N`` the cell's mean,

    z_i = R + K (S_i − R n_i) / N,

whose mean is exactly ``R`` and whose resampled means are the first-order expansion of the resampled ratios
``Σ S*_i / Σ n*_i``. With one pedestrian per image ``z_i`` is the pedestrian's share and the interval is the plain
pedestrian bootstrap. ``cluster=None`` resamples pedestrians instead.

Deterministic: each cell's resamples come from its own stream, ``SeedSequence([seed, crc32(label | part |
bucket)])``, so an interval depends only on the seed and the cell's own pedestrians — not on the other cells or
their order, nor on the process (no hash randomisation).
"""
from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
import pandas as pd

from detection.slices import mean_interval
from tasks.bootstrap import CONFIDENCE, N_BOOT, SEED, cell_seed

MIN_UNITS = 2         # fewer resampled units (images, or pedestrians) than this: no interval (n/a)
COLUMNS = ["part", "bucket", "mean", "low", "high", "n", "images"]


def linearised(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """[K] values whose bootstrap mean approximates the cluster bootstrap of the ratio ``Σ sums / Σ counts``:
    ``R + K (sums − R counts) / Σ counts`` (the ratio's empirical influence values shifted by ``R``). Their mean is
    ``R``. ``sums``, ``counts`` [K] per cluster; raises ``ValueError`` when the shapes differ or no count is
    positive."""
    sums, counts = np.asarray(sums, float).reshape(-1), np.asarray(counts, float).reshape(-1)
    if sums.shape != counts.shape or counts.sum() <= 0:
        raise ValueError(f"linearised: sums {sums.shape} and counts {counts.shape} must match, with a positive "
                         f"total count (got {counts.sum()})")
    total = counts.sum()
    ratio = sums.sum() / total
    return ratio + sums.size * (sums - ratio * counts) / total


def share_intervals(shares: pd.DataFrame, column: str, order: Sequence[str] | None = None,
                    parts: Sequence[str] | None = None, label: str = "", cluster: str | None = "image_id",
                    seed: int = SEED, confidence: float = CONFIDENCE, n_boot: int = N_BOOT) -> pd.DataFrame:
    """Per part × bucket of ``column``: the mean ``share`` and its bootstrap interval.

    ``shares``: long table, one row per pedestrian and part (:func:`tasks.report.part_shares` of one job) with
    ``part``, ``share``, ``column`` and ``cluster`` (default ``image_id``; None: resample rows, i.e. pedestrians).
    ``order``: the buckets in display order (default: as they appear; buckets absent from the table are skipped);
    ``parts``: the parts in order (default: as they appear). ``label`` names the breakdown in each cell's seed.
    Returns :data:`COLUMNS`: ``mean`` (equal to the plain mean of the cell's rows), ``low`` / ``high`` (NaN with
    fewer than :data:`MIN_UNITS` images, or pedestrians when ``cluster`` is None), ``n`` (rows: pedestrians) and
    ``images`` (distinct ``cluster`` values; ``n`` when None). Rows with a missing share or bucket are left out.
    Raises ``KeyError`` naming a column the table lacks."""
    needed = ["part", "share", column] + ([cluster] if cluster else [])
    missing = [c for c in needed if c not in shares.columns]
    if missing:
        raise KeyError(f"share_intervals: column(s) {missing} not in the shares table; it has {list(shares.columns)}")
    frame = shares[needed].dropna(subset=["share", column])
    if order is None:
        order = list(dict.fromkeys(frame[column]))
    if parts is None:
        parts = list(dict.fromkeys(frame["part"]))
    frame = frame[frame[column].isin(list(order)) & frame["part"].isin(list(parts))]
    rows = []
    for (part, bucket), cell in frame.groupby(["part", column], sort=False):
        values = cell["share"].to_numpy(float)
        if cluster:
            per = cell.groupby(cluster, sort=True)["share"].agg(["sum", "count"])
            units = linearised(per["sum"].to_numpy(), per["count"].to_numpy())
        else:
            units = values
        low, high = (mean_interval(units, confidence, n_boot, np.random.default_rng(cell_seed(seed, label, part,
                                                                                                bucket)))
                     if units.size >= MIN_UNITS else (np.nan, np.nan))
        rows.append((part, bucket, float(values.mean()), low, high, int(values.size), int(units.size)))
    out = pd.DataFrame(rows, columns=COLUMNS)
    out = out.assign(_p=out["part"].map({p: i for i, p in enumerate(parts)}),
                     _b=out["bucket"].map({b: i for i, b in enumerate(order)}))
    return out.sort_values(["_p", "_b"], kind="stable").drop(columns=["_p", "_b"]).reset_index(drop=True)


def interval_text(mean: float, low: float, high: float) -> str:
    """``'0.28 [0.21, 0.35]'``; ``n/a`` for a missing number, ``0.00`` (not ``-0.00``) for one that rounds to 0."""
    def num(v: float) -> str:
        return "n/a" if v is None or not np.isfinite(v) else f"{round(float(v), 2) + 0.0:.2f}"
    return f"{num(mean)} [{num(low)}, {num(high)}]"


def interval_note(pedestrians: int, images: int | None, cluster: bool = True, confidence: float = CONFIDENCE,
                  n_boot: int = N_BOOT, seed: int = SEED) -> str:
    """One line saying what the intervals are: level, method, resampled unit, and how many pedestrians (in how many
    images) the cells hold together."""
    unit = "images (an image's pedestrians resampled together)" if cluster else "pedestrians"
    where = f" in {images} images" if images is not None else ""
    return (f"Intervals: bootstrap {confidence * 100:g} % (BCa, {n_boot} resamples, seed {seed}) of each mean share, "
            f"resampling {unit}; n = pedestrians in the cell ({pedestrians}{where} in all); n/a with fewer than "
            f"{MIN_UNITS} {'images' if cluster else 'pedestrians'}.")


def intervals_html(intervals: pd.DataFrame, bucket_name: str, note: str) -> str:
    """An expandable table ``part | <bucket_name> | share [95 % interval] | n | images`` under a figure, with the
    note beneath it."""
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ("part", bucket_name, "mean share [95 % interval]", "n",
                                                          "images"))
    body = "".join(f"<tr><td>{html.escape(str(r.part).replace('_', ' '))}</td><td>{html.escape(str(r.bucket))}</td>"
                   f"<td>{interval_text(r.mean, r.low, r.high)}</td><td>{r.n}</td><td>{r.images}</td></tr>"
                   for r in intervals.itertuples())
    return (f"<details class='intervals'><summary>mean shares with 95 % intervals ({html.escape(bucket_name)})"
            f"</summary><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></details>"
            f"<p class='note'>{html.escape(note)}</p>")


def breakdown_intervals(shares: pd.DataFrame, column: str, order: Sequence[str], parts: Sequence[str], label: str,
                        bucket_name: str, seed: int = SEED) -> str:
    """The expandable interval table and its note for one breakdown (``shares``: one job's rows, as
    :func:`share_intervals` takes them, with ``image_id`` / ``target_id``)."""
    table = share_intervals(shares, column, order, parts, label=label, seed=seed)
    held = shares[shares[column].isin(list(order)) & shares["share"].notna()]
    pedestrians = len(held[["image_id", "target_id"]].drop_duplicates())
    return intervals_html(table, bucket_name, interval_note(pedestrians, held["image_id"].nunique(), seed=seed))
