"""Tasks of the pull stage. Each works on one shard and returns the path of what it wrote, never big objects."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
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
from tasks.shards import read_shards, write_json, write_shard

SHARDS_DIR = "_shards"


@task(cache_policy=NO_CACHE, retries=1)
def generate_synthetic_shard(config: SyntheticConfig, seed: int, start: int, stop: int, staging: str,
                             uri_prefix: str) -> str:
    """Render scenes [start, stop) into ``staging/images`` and their rows (with the attributes the generator drew
    per person) into a shard folder."""
    images, annotations, parts, attributes = generate_images_with_attributes(
        config, seed, range(start, stop), f"{staging}/images", uri_prefix=uri_prefix)
    return write_shard(Path(staging) / SHARDS_DIR / f"{start:08d}", images=images, annotations=annotations,
                        gt_parts=parts, attributes=attributes)


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


def attribute_tables(staging: Path, tables: DatasetTables, pull: PullParams, out_uri: str,
                     staging_uri: str) -> tuple[dict[str, pa.Table], pa.Table | None]:
    """The per-pedestrian attribute tables of the pulled dataset: ``attributes`` (what the synthetic generator drew,
    from the shards; empty for other sources), ``computed_attributes`` (boxes and pixels, every source; images read
    from the staging folder where their URI already names the published one) and, with ``pull.attributes``, the
    user's columns keyed by ``image_id, ann_id`` (None without). Call before :func:`write_outputs` removes the
    shards. Raises :class:`detection.attributes.AttributeTableError` naming a user's file that cannot be joined."""
    drawn = read_shards(sorted((staging / SHARDS_DIR).iterdir()), ("attributes",))["attributes"]
    kept = pc.is_in(drawn["image_id"], value_set=tables.annotations["image_id"])
    prefix = out_uri + "/"

    def load(uri: str):
        return load_rgb(staging_uri + uri[len(out_uri):] if uri.startswith(prefix) else uri)

    computed = computed_attributes(tables.images, tables.annotations, load_image=load)
    out = {"attributes": drawn.filter(kept).cast(SCHEMAS["attributes"]), "computed_attributes": computed}
    if not pull.attributes:
        return out, None
    anns = tables.annotations.select([*KEYS, "occlusion", "truncation"]).to_pandas()
    frame = anns.merge(computed.to_pandas(), on=list(KEYS), how="left").merge(
        out["attributes"].to_pandas(), on=list(KEYS), how="left")          # the user's columns must not clash
    known = set(frame.columns)
    for path in pull.attributes:
        frame = join_user_attributes(frame, path)
    user = frame[[*KEYS, *(c for c in frame.columns if c not in known)]]
    return out, pa.Table.from_pandas(pd.DataFrame(user), preserve_index=False)


def relocate_uris(tables: DatasetTables, old_prefix: str, new_prefix: str) -> DatasetTables:
    """Point URIs written under the staging folder at the published folder."""
    pattern = "^" + re.escape(old_prefix + "/")

    def fix(table: pa.Table) -> pa.Table:
        i = table.schema.get_field_index("uri")
        return table.set_column(i, "uri", pc.replace_substring_regex(table["uri"], pattern, new_prefix + "/"))

    return DatasetTables(images=fix(tables.images), annotations=tables.annotations, gt_parts=tables.gt_parts,
                         errors=fix(tables.errors))


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


def write_outputs(tables: DatasetTables, staging: Path, pull: PullParams, seed: int,
                  attributes: dict[str, pa.Table] | None = None, user_attributes: pa.Table | None = None,
                  user_file: str = "user_attributes.parquet") -> dict:
    """Tables, attribute tables (:func:`attribute_tables`), COCO export (synthetic) and manifest into the staging
    folder; returns the summary."""
    shutil.rmtree(staging / SHARDS_DIR, ignore_errors=True)
    tables.write(staging)
    for name, table in (attributes or {}).items():
        write_table_atomic(table, staging / f"{name}.parquet")
    if user_attributes is not None:
        write_table_atomic(user_attributes, staging / user_file)
    if pull.source == "synthetic":
        doc = tables_to_coco(tables.images, tables.annotations, list(CATEGORIES))
        (staging / "coco.json").write_text(json.dumps(doc, separators=(",", ":")))
    stats = summary(tables)
    stats["attribute_rows"] = {name: t.num_rows for name, t in (attributes or {}).items()}
    if user_attributes is not None:
        stats["attribute_rows"]["user"] = user_attributes.num_rows
    manifest = {"source": pull.source, "seed": seed, "params": pull.model_dump(mode="json"), "counts": stats}
    write_json(staging / "manifest.json", manifest)
    return stats
