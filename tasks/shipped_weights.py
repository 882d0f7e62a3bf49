"""Weights that ship in the repository (``weights/demo/``) and the manifest that vouches for them.

A folder of shipped weights holds the files, the params they were trained with (``train.yaml``) and
``manifest.json``: per file its SHA-256, size, how it was trained (from the training stage's own record) and the
quality the pipeline measured with it. The models stages copy a given weights file only after
:func:`verify_given` has checked it against the manifest beside it (when there is one), so a truncated download, a
Git LFS pointer or a hand-edited file fails naming the file instead of auditing with other weights than the
manifest describes.

    python -m tasks.shipped_weights weights/demo            # (re)write weights/demo/manifest.json
    python -m tasks.shipped_weights weights/demo --check    # exit 1 naming each file that does not match
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detection.models.specs import file_sha256

MANIFEST = "manifest.json"


class WeightsMismatchError(ValueError):
    """A shipped weights file whose content is not the one its manifest lists (names file, expected and actual)."""


def manifest_entry(path: str | Path) -> dict | None:
    """The manifest entry of ``path`` (``manifest.json`` in its folder, keyed by file name), or None without one.
    Raises ValueError naming the manifest when it is not valid JSON with a ``files`` mapping."""
    path = Path(path)
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"{manifest}: not a weights manifest (a JSON object with 'files'): {exc}") from exc
    return files.get(path.name)


def verify_given(path: str | Path, key: str) -> str:
    """Check a given weights file before a models stage copies it; returns its SHA-256.

    Raises FileNotFoundError (``params <key>: file not found``) and :class:`WeightsMismatchError` when the
    manifest beside the file lists another SHA-256 (e.g. a Git LFS pointer or a partial copy)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params {key}: file not found: {path}")
    digest = file_sha256(path)
    entry = manifest_entry(path)
    if entry is not None and entry.get("sha256") != digest:
        raise WeightsMismatchError(
            f"params {key}: {path} has SHA-256 {digest[:12]}… ({path.stat().st_size} bytes) but "
            f"{path.parent / MANIFEST} lists {str(entry.get('sha256'))[:12]}… ({entry.get('bytes')} bytes): "
            f"not the shipped file (a Git LFS pointer or a partial copy?)")
    return digest


def write_manifest(folder: str | Path, quality: dict | None = None) -> dict:
    """Write ``<folder>/manifest.json`` for every ``*.pt`` / ``*.json`` sidecar there: SHA-256, bytes, and the
    training record the models stage wrote (``<folder>/metrics/<name>.json``, as ``models.metrics_dir`` of
    ``train.yaml`` points there) or the one already in the manifest. ``quality``: measurements to record beside
    them (e.g. infer's and parts' metrics with these weights). Returns the manifest."""
    folder = Path(folder)
    old = {}
    if (folder / MANIFEST).is_file():
        old = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    files = {}
    for path in sorted(folder.glob("*.pt")) + sorted(folder.glob("*.json")):
        if path.name == MANIFEST:
            continue
        entry = {"sha256": file_sha256(path), "bytes": path.stat().st_size}
        record = folder / "metrics" / f"{path.stem}.json"
        if path.suffix == ".pt" and record.is_file():
            entry["training"] = json.loads(record.read_text(encoding="utf-8"))
        elif path.name in old.get("files", {}) and "training" in old["files"][path.name]:
            entry["training"] = old["files"][path.name]["training"]
        files[path.name] = entry
    manifest = {"train_params": str(folder / "train.yaml"), "files": files,
                "quality": quality if quality is not None else old.get("quality", {})}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return manifest


def check(folder: str | Path) -> list[str]:
    """One line per file of the manifest that is missing or differs; empty when all match."""
    folder = Path(folder)
    files = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))["files"]
    problems = []
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{path}: missing (listed in {folder / MANIFEST})")
        elif file_sha256(path) != entry["sha256"]:
            problems.append(f"{path}: SHA-256 differs from {folder / MANIFEST}")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tasks.shipped_weights", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--quality", nargs="*", default=None, metavar="METRICS_JSON",
                        help="metrics files to record as the weights' measured quality (e.g. metrics/infer.json)")
    args = parser.parse_args(argv)
    if args.check:
        problems = check(args.folder)
        print("\n".join(problems) or "all files match", file=sys.stderr if problems else sys.stdout)
        return 1 if problems else 0
    quality = None
    if args.quality is not None:
        quality = {q: json.loads(Path(q).read_text(encoding="utf-8")) for q in args.quality}
    manifest = write_manifest(args.folder, quality)
    print(f"{Path(args.folder) / MANIFEST}: {len(manifest['files'])} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
