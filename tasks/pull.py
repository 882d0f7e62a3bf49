"""Tasks of the pull stage. Each works on one shard and returns the path of what it wrote, never big objects; the
flow then streams the shards into the published tables (:func:`write_streamed`), one shard in memory at a time."""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterable
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import task
from prefect.cache_policies import NO_CACHE

from detection.attributes import KEYS, computed_attributes, join_user_attributes
from detection.datasets.coco import read_coco, tables_to_coco
from detection.datasets.folder import read_folder
from detection.datasets.imageio import ImageLimits, load_rgb
from detection.datasets.records import ImageRecord, SourceListing, check_images
from detection.datasets.synthetic import CATEGORIES, SyntheticConfig, generate_images_with_attributes
from detection.datasets.tables import SCHEMAS, DatasetTables, rows_to_table, write_table_atomic
from detection.datasets.yolo import read_yolo
from tasks.params import DvcSource, PullParams
from tasks.shards import TableWriter, iter_shards, read_shards, write_json, write_shard

SHARDS_DIR = "_shards"


@task(cache_policy=NO_CACHE, retries=1)
def generate_synthetic_shard(config: SyntheticConfig, seed: int, start: int, stop: int, staging: str,
                             uri_prefix: str) -> str:
    """Render scenes [start, stop) into ``staging/images`` and their rows (with the attributes the generator drew
    per person, and the ``computed_attributes`` of their boxes and pixels, read back from the rendered files) into a
    shard folder."""
    images_dir = f"{staging}/images"
    images, annotations, parts, attributes = generate_images_with_attributes(
        config, seed, range(start, stop), images_dir, uri_prefix=uri_prefix)
    prefix = uri_prefix + "/"

    def load(uri: str):               # the URI names the published folder; the file is still in the staging one
        return load_rgb(images_dir + uri[len(uri_prefix):] if uri.startswith(prefix) else uri)

    images_t, annotations_t = rows_to_table(images, "images"), rows_to_table(annotations, "annotations")
    computed = computed_attributes(images_t, annotations_t, load_image=load)
    return write_shard(Path(staging) / SHARDS_DIR / f"{start:08d}", images=images_t, annotations=annotations_t,
                       gt_parts=parts, attributes=attributes, computed_attributes=computed)


@task(cache_policy=NO_CACHE, retries=1)
def check_images_shard(records: list[ImageRecord], limits: ImageLimits, shard_dir: str) -> str:
    """Decode and check one shard of listed images; bad ones become ``errors`` rows."""
    images, errors = check_images(records, limits)
    return write_shard(shard_dir, images=images, errors=errors)


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=5)
def fetch_dvc(source: DvcSource, dest: str) -> str:
    """``dvc get`` of a DVC-tracked path at a fixed revision (from the repository's DVC remote) into ``dest``."""
    from dvc.repo import Repo

    shutil.rmtree(dest, ignore_errors=True)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Repo.get(source.url, source.path, out=dest, rev=source.rev, remote=source.remote)
    return dest


@task(cache_policy=NO_CACHE)
def list_source(pull: PullParams, root: str | None) -> SourceListing:
    """Read the annotation files of a coco/yolo/folder source (paths relative to ``root`` when given)."""
    def at(p: str) -> Path:
        return Path(root) / p if root else Path(p)

    if pull.source == "coco":
        return read_coco(at(pull.coco.annotations), at(pull.coco.images_dir), pull.coco.split)
    if pull.source == "yolo":
        return read_yolo(at(pull.yolo.data), pull.yolo.splits)
    if pull.source == "folder":
        return read_folder(at(pull.folder.images_dir), pull.folder.split)
    raise ValueError(f"pull.source {pull.source!r} has no file listing")


def merge_shards(staging: Path, listing: SourceListing | None = None) -> DatasetTables:
    """Concatenate shard tables (in shard order) with the listing's rows; keep annotations of kept images."""
    tables = read_shards(sorted((staging / SHARDS_DIR).iterdir()), DatasetTables.names())
    if listing is not None:
        tables["errors"] = pa.concat_tables([rows_to_table(listing.errors, "errors"), tables["errors"]])
        annotations = rows_to_table(listing.annotations, "annotations")
        kept = pc.is_in(annotations["image_id"], value_set=tables["images"]["image_id"])
        tables["annotations"] = annotations.filter(kept)
    return DatasetTables(**tables)


def summary(tables: DatasetTables) -> dict:
    """Counts for DVC metrics and the manifest."""
    ann = tables.annotations
    persons = ann.filter(pc.equal(ann["category"], "person"))
    errors = {}
    for row in tables.errors.group_by("error_type").aggregate([("error_type", "count")]).to_pylist():
        errors[row["error_type"]] = row["error_type_count"]
    splits = {r["split"]: r["split_count"] for r in
              tables.images.group_by("split").aggregate([("split", "count")]).to_pylist()}
    return {"images": tables.images.num_rows, "annotations": ann.num_rows, "persons": persons.num_rows,
            "persons_with_keypoints": int(pc.sum(pc.greater(persons["num_keypoints"], 0)).as_py() or 0),
            "gt_parts": tables.gt_parts.num_rows, "errors": tables.errors.num_rows,
            "errors_by_type": dict(sorted(errors.items())), "images_by_split": dict(sorted(splits.items()))}


# ---------------------------------------------------------------------------------------------------- streamed
class _Counts:
    """:func:`summary`'s counts, accumulated shard by shard."""

    def __init__(self):
        self.rows = dict.fromkeys(("images", "annotations", "persons", "persons_with_keypoints", "gt_parts",
                                   "errors"), 0)
        self.errors_by_type: dict[str, int] = {}
        self.images_by_split: dict[str, int] = {}

    @staticmethod
    def _add(into: dict[str, int], column: pa.ChunkedArray) -> None:
        for row in pc.value_counts(column).to_pylist():
            into[row["values"]] = into.get(row["values"], 0) + row["counts"]

    def add(self, name: str, table: pa.Table) -> None:
        if name == "images":
            self._add(self.images_by_split, table["split"])
        elif name == "errors":
            self._add(self.errors_by_type, table["error_type"])
        elif name == "annotations":
            persons = table.filter(pc.equal(table["category"], "person"))
            self.rows["persons"] += persons.num_rows
            self.rows["persons_with_keypoints"] += int(pc.sum(pc.greater(persons["num_keypoints"], 0)).as_py() or 0)
        if name in self.rows:
            self.rows[name] += table.num_rows

    def summary(self) -> dict:
        return {**self.rows, "errors_by_type": dict(sorted(self.errors_by_type.items())),
                "images_by_split": dict(sorted(self.images_by_split.items()))}


class CocoStream:
    """``coco.json`` of the synthetic dataset written shard by shard: byte-identical to
    ``json.dumps(tables_to_coco(images, annotations, CATEGORIES), separators=(",", ":"))`` of the whole tables, with
    one shard's entries in memory at a time. Each shard's annotations must belong to that shard's images (true of
    the synthetic source). Images go to ``path`` + ``.images`` and annotations to ``.annotations`` (temp files),
    joined by :meth:`close`."""

    def __init__(self, path: Path, categories: list[str]):
        self.path, self.categories = Path(path), categories
        self._parts = {k: self.path.with_name(f".{self.path.name}.{k}") for k in ("images", "annotations")}
        self._files = {k: open(v, "w") for k, v in self._parts.items()}       # noqa: SIM115 - closed in close()
        self._n = {"images": 0, "annotations": 0}
        self._doc = tables_to_coco(SCHEMAS["images"].empty_table(), SCHEMAS["annotations"].empty_table(), categories)

    def _write(self, key: str, entries: list[dict]) -> None:
        for entry in entries:
            self._files[key].write(("," if self._n[key] else "") + json.dumps(entry, separators=(",", ":")))
            self._n[key] += 1

    def add(self, images: pa.Table, annotations: pa.Table) -> None:
        doc = tables_to_coco(images, annotations, self.categories)
        img_offset, ann_offset = self._n["images"], self._n["annotations"]
        for entry in doc["images"]:
            entry["id"] += img_offset
        for entry in doc["annotations"]:
            entry["id"] += ann_offset
            entry["image_id"] += img_offset
        self._write("images", doc["images"])
        self._write("annotations", doc["annotations"])

    def close(self) -> Path:
        for f in self._files.values():
            f.close()
        dumps = lambda v: json.dumps(v, separators=(",", ":"))      # noqa: E731
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        with open(tmp, "w") as out:
            out.write('{"info":' + dumps(self._doc["info"]) + ',"images":[')
            with open(self._parts["images"]) as part:
                shutil.copyfileobj(part, out)
            out.write('],"categories":' + dumps(self._doc["categories"]) + ',"annotations":[')
            with open(self._parts["annotations"]) as part:
                shutil.copyfileobj(part, out)
            out.write("]}")
        for part in self._parts.values():
            part.unlink()
        tmp.replace(self.path)
        return self.path


def _relocate(table: pa.Table, old_prefix: str, new_prefix: str) -> pa.Table:
    """Point the ``uri`` column's paths under ``old_prefix`` (the staging folder) at ``new_prefix`` (the
    published one)."""
    i = table.schema.get_field_index("uri")
    pattern = "^" + re.escape(old_prefix + "/")
    return table.set_column(i, "uri", pc.replace_substring_regex(table["uri"], pattern, new_prefix + "/"))


def write_streamed(staging: Path, pull: PullParams, seed: int, listing: SourceListing | None, out_uri: str,
                   staging_uri: str, user_file: str = "user_attributes.parquet",
                   shards: Iterable[str | Path] | None = None) -> dict:
    """The published tables of the pull stage from its finished shards, one shard in memory at a time, then the
    shards are removed; returns the summary (:func:`summary`'s counts and ``attribute_rows``), also written with the
    source and params to ``manifest.json``. The tables are the concatenation of the shards in shard order with URIs
    under the staging folder pointed at the published one (bytes as writing the whole tables at once while a table
    has at most ``tasks.shards.ROW_GROUP_ROWS`` rows). Written: the four dataset tables, ``attributes`` (what the
    synthetic generator drew, of annotated images; empty for other sources), ``computed_attributes`` (boxes and
    pixels, every source), ``user_file`` with ``pull.attributes`` (the user's columns keyed by ``image_id, ann_id``)
    and ``coco.json`` (synthetic).

    Synthetic source: every table (``computed_attributes`` too, computed by the shard tasks) and ``coco.json`` are
    streamed. Listing sources (``listing`` given: coco / yolo / folder): errors are the listing's then the shards',
    annotations the listing's of the kept images and ``computed_attributes`` are computed here over the published
    tables (the listing is in memory anyway). ``pull.attributes`` (the user's files) joins the written tables in
    memory (an opt-in). Raises :class:`detection.attributes.AttributeTableError` naming a user's file that cannot be
    joined.

    ``shards``: the shard folders in shard order, consumed lazily (the flow passes each shard task's result as it
    finishes, so the tables are written while later shards still run); default: the finished shards under
    ``staging``. Every table is written in one pass over the shards."""
    if shards is None:
        shards = sorted((staging / SHARDS_DIR).iterdir()) if (staging / SHARDS_DIR).is_dir() else []
    counts = _Counts()
    kept = _stream_shards(staging, shards, pull, listing, counts, staging_uri, out_uri)
    if listing is not None:
        annotations = rows_to_table(listing.annotations, "annotations")
        ids = pa.concat_arrays(kept) if kept else pa.array([], pa.string())
        annotations = annotations.filter(pc.is_in(annotations["image_id"], value_set=ids))
        counts.add("annotations", annotations)
        write_table_atomic(annotations, staging / "annotations.parquet")
        write_table_atomic(SCHEMAS["gt_parts"].empty_table(), staging / "gt_parts.parquet")
        write_table_atomic(SCHEMAS["attributes"].empty_table(), staging / "attributes.parquet")
        images = pq.read_table(staging / "images.parquet", columns=["image_id", "uri", "width", "height"])
        prefix = out_uri + "/"

        def load(uri: str):
            return load_rgb(staging_uri + uri[len(out_uri):] if uri.startswith(prefix) else uri)

        write_table_atomic(computed_attributes(images, annotations, load_image=load),
                           staging / "computed_attributes.parquet")
    shutil.rmtree(staging / SHARDS_DIR, ignore_errors=True)
    stats = counts.summary()
    stats["attribute_rows"] = {name: pq.ParquetFile(staging / f"{name}.parquet").metadata.num_rows
                               for name in ("attributes", "computed_attributes")}
    if pull.attributes:
        user = _user_attributes(staging, pull)
        write_table_atomic(user, staging / user_file)
        stats["attribute_rows"]["user"] = user.num_rows
    write_json(staging / "manifest.json", {"source": pull.source, "seed": seed,
                                           "params": pull.model_dump(mode="json"), "counts": stats})
    return stats


SYNTHETIC_TABLES = ("annotations", "gt_parts", "attributes", "computed_attributes")
"""The synthetic source's tables written from its shards besides images and errors (and coco.json)."""


def _stream_shards(staging: Path, shards: Iterable[str | Path], pull: PullParams, listing: SourceListing | None,
                   counts: _Counts, staging_uri: str, out_uri: str) -> list[pa.Array]:
    """One pass over ``shards`` (in shard order): images and errors (URIs pointed at the published folder; a
    listing's errors first) and, for the synthetic source, annotations, gt_parts, attributes (of annotated images
    only), computed_attributes and coco.json, each to its :class:`TableWriter`. Returns the kept images' ids per
    shard. A failure aborts every writer."""
    names = ("images", "errors", *(SYNTHETIC_TABLES if listing is None else ()))
    writers = {name: TableWriter(staging / f"{name}.parquet", name) for name in names}
    coco = CocoStream(staging / "coco.json", list(CATEGORIES)) if listing is None and pull.source == "synthetic" \
        else None
    kept: list[pa.Array] = []
    try:
        if listing is not None:
            errors = _relocate(rows_to_table(listing.errors, "errors"), staging_uri, out_uri)
            counts.add("errors", errors)
            writers["errors"].write(errors)
        for d in shards:
            tables = {name: next(iter(iter_shards([d], name)), SCHEMAS[name].empty_table()) for name in names}
            for name in ("images", "errors"):
                tables[name] = _relocate(tables[name], staging_uri, out_uri)
            if "attributes" in tables:
                drawn = tables["attributes"]
                tables["attributes"] = drawn.filter(pc.is_in(drawn["image_id"],
                                                             value_set=tables["annotations"]["image_id"]))
            kept.append(tables["images"]["image_id"].combine_chunks())
            for name in names:
                if name in ("images", "errors", "annotations", "gt_parts"):
                    counts.add(name, tables[name])
                writers[name].write(tables[name])
            if coco is not None:
                coco.add(tables["images"], tables["annotations"])
    except BaseException:
        for w in writers.values():
            w.abort()
        raise
    for w in writers.values():
        w.close()
    if coco is not None:
        coco.close()
    return kept


def _user_attributes(staging: Path, pull: PullParams) -> pa.Table:
    """The user's attribute columns (``pull.attributes`` files) joined to the written annotations, computed and
    drawn attributes (which the user's columns must not clash with), keyed by ``image_id, ann_id``."""
    anns = pq.read_table(staging / "annotations.parquet", columns=[*KEYS, "occlusion", "truncation"]).to_pandas()
    frame = anns.merge(pq.read_table(staging / "computed_attributes.parquet").to_pandas(), on=list(KEYS),
                       how="left").merge(pq.read_table(staging / "attributes.parquet").to_pandas(), on=list(KEYS),
                                         how="left")          # the user's columns must not clash
    known = set(frame.columns)
    for path in pull.attributes:
        frame = join_user_attributes(frame, path)
    user = frame[[*KEYS, *(c for c in frame.columns if c not in known)]]
    return pa.Table.from_pandas(pd.DataFrame(user), preserve_index=False)
