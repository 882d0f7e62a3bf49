"""Body-part relevance shares: the one definition that the report, the compare gate, the evaluate stage's part plot
and where it fails all read (each had its own, and they disagreed on awkward rows: a NaN value emptied a whole
target in one and a whole job's mean in another).

A target's share of region r is ``relevance[r] / Σ_i |relevance[i]|`` over *all* the target's values (the total is
a nansum: null and NaN values count 0; a zero total counts as 1, so an all-zero target has shares 0). Region names
pair with values in list order up to the shorter list: values without a name count in the total only, as do values
whose name is null; a repeated name keeps its last value; a null or NaN value gives a NaN share for its region (means
over targets skip it). Rows without relevance or without region names are skipped. Vectorised over the flattened
Arrow lists (no Python object per target).
"""
from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

COLUMNS = ("image_id", "target_id", "kind", "job", "region_names", "relevance")


@dataclass(frozen=True)
class PartShares:
    """The shares of the selected targets.

    ``targets``: the selected rows' ``image_id``, ``target_id``, ``job`` (one per target, in table order, including
    targets none of whose names survive); ``target``: int [S] the row in ``targets`` of each share; ``part``: int [S]
    its index in ``parts`` (the distinct names in order of first appearance); ``share``: float64 [S]. Shares are in
    target order, then list order."""

    targets: pa.Table
    parts: list[str]
    target: np.ndarray
    part: np.ndarray
    share: np.ndarray

    def long(self) -> pd.DataFrame:
        """One row per (target, part): ``image_id, target_id, job, part, share``."""
        t = self.targets
        return pd.DataFrame({"image_id": t["image_id"].to_numpy(zero_copy_only=False)[self.target],
                             "target_id": t["target_id"].to_numpy(zero_copy_only=False)[self.target],
                             "job": t["job"].to_numpy(zero_copy_only=False)[self.target],
                             "part": np.asarray(self.parts, dtype=object)[self.part] if len(self.parts) else
                             np.empty(0, dtype=object),
                             "share": self.share})

    def wide(self) -> np.ndarray:
        """float64 [targets, parts]: each target's share per part, NaN where the target has no such region."""
        out = np.full((self.targets.num_rows, len(self.parts)), np.nan)
        out[self.target, self.part] = self.share
        return out


def _columns(explanations: pa.Table | pd.DataFrame) -> pa.Table:
    """:data:`COLUMNS` of ``explanations`` as an Arrow table (only these converted or filtered later, not every
    column). Raises KeyError naming the missing columns."""
    have = explanations.columns if isinstance(explanations, pd.DataFrame) else explanations.column_names
    missing = [c for c in COLUMNS if c not in have]
    if missing:
        raise KeyError(f"part shares: explanations lack the columns {missing}")
    if isinstance(explanations, pd.DataFrame):
        return pa.Table.from_pandas(explanations[list(COLUMNS)], preserve_index=False)
    return explanations.select(list(COLUMNS))


def _is_list(array: pa.ChunkedArray) -> bool:
    return pa.types.is_list(array.type) or pa.types.is_large_list(array.type)


def part_shares(explanations: pa.Table | pd.DataFrame, *, job: str | None = None,
                kinds: Collection[str] | None = None) -> PartShares:
    """The shares (module docstring) of the explanation rows with relevance and region names, of ``job`` (None: every
    job) and of target kinds ``kinds`` (None: every kind but ``classes``; a row with a null kind is skipped).
    ``explanations``: the explain stage's table (Arrow or pandas) with at least :data:`COLUMNS`. Raises KeyError
    naming a missing column."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    e = _columns(explanations)
    if not (_is_list(e["region_names"]) and _is_list(e["relevance"])):
        return _empty()                         # an all-null column (no row has regions): nothing to share
    keep = pc.and_(pc.is_valid(e["relevance"]), pc.greater(pc.fill_null(pc.list_value_length(e["region_names"]), 0), 0))
    if kinds is None:
        kind_ok = pc.invert(pc.equal(e["kind"], "classes"))
    else:
        kind_ok = pc.is_in(e["kind"], pa.array(list(kinds), pa.string()))
    keep = pc.and_(keep, kind_ok)
    if job is not None:
        keep = pc.and_(keep, pc.equal(e["job"], job))
    sel = e.filter(pc.fill_null(keep, False))
    if sel.num_rows == 0:
        return _empty()
    sel = sel.combine_chunks()
    names, relevance = sel["region_names"].chunk(0), sel["relevance"].chunk(0)
    # list offsets as numpy (a sliced list array's values start at offsets[0])
    rel_off = relevance.offsets.to_numpy().astype(np.int64)
    rel = pc.cast(relevance.values, pa.float64()).to_numpy(zero_copy_only=False)[rel_off[0]:rel_off[-1]]
    rel_off -= rel_off[0]
    name_off = names.offsets.to_numpy().astype(np.int64)
    name_values = names.values.slice(name_off[0], name_off[-1] - name_off[0])
    name_off -= name_off[0]
    absolute = np.abs(np.where(np.isnan(rel), 0.0, rel))                # nansum: NaN (and null) counts 0
    totals = np.zeros(sel.num_rows)
    filled = np.diff(rel_off) > 0
    if filled.any():
        totals[filled] = np.add.reduceat(absolute, rel_off[:-1][filled])
    totals[totals == 0] = 1.0
    paired = np.minimum(np.diff(rel_off), np.diff(name_off))           # zip(): pairs up to the shorter list
    row = np.repeat(np.arange(sel.num_rows), paired)
    within = np.arange(row.size) - np.repeat(np.cumsum(paired) - paired, paired)
    with np.errstate(invalid="ignore"):                                 # inf / inf: NaN, as per target
        value = rel[rel_off[row] + within] / totals[row]
    codes, regions = pd.factorize(name_values.to_numpy(zero_copy_only=False)[name_off[row] + within], sort=False)
    named = codes >= 0                                                  # a null name (code -1): no region
    row, codes, value = row[named], codes[named], value[named]          # (before the cells: row·R − 1 is a cell)
    cell = row * max(1, len(regions)) + codes
    last = len(cell) - 1 - np.unique(cell[::-1], return_index=True)[1]  # a repeated name: its last value
    last = np.sort(last)                                                # target order, then list order
    return PartShares(sel.select(["image_id", "target_id", "job"]), [str(r) for r in regions], row[last],
                      codes[last].astype(np.int64), value[last])


def _empty() -> PartShares:
    targets = pa.table({"image_id": pa.array([], pa.string()), "target_id": pa.array([], pa.string()),
                        "job": pa.array([], pa.string())})
    return PartShares(targets, [], np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))


__all__ = ["COLUMNS", "PartShares", "part_shares"]
