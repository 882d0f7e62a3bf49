"""params.yaml, validated by a typed schema: each stage reads its own section.

An unknown key, a wrong type or a missing input file is a :class:`ParamsError` whose message names the file,
the key (dotted path) and the value at fault.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from detection.datasets.imageio import ImageLimits
from detection.datasets.synthetic import SyntheticConfig


class ParamsError(ValueError):
    """Invalid parameters; the message names file, key and value."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CocoSource(_Section):
    annotations: str                    # COCO JSON
    images_dir: str                     # folder the JSON's file_name entries are relative to
    split: str = "val"


class YoloSource(_Section):
    data: str                           # ultralytics data yaml
    splits: tuple[str, ...] = ("train", "val")


class FolderSource(_Section):
    images_dir: str
    split: str = "test"


class DvcSource(_Section):
    """Fetch a DVC-tracked path of a (git) repository at a fixed revision before reading it (``dvc get``)."""

    url: str                            # git URL or local path of a DVC repository
    path: str                           # path inside it
    rev: str | None = None              # tag / branch / commit: the dataset version
    remote: str | None = None           # DVC remote name in that repository (default: its default remote)


class PullParams(_Section):
    source: Literal["synthetic", "coco", "yolo", "folder"] = "synthetic"
    out_dir: str = "data/pulled"
    metrics: str = "metrics/pull.json"
    shard_size: int = Field(default=32, ge=1)
    limits: ImageLimits = ImageLimits()
    synthetic: SyntheticConfig = SyntheticConfig()
    coco: CocoSource | None = None
    yolo: YoloSource | None = None
    folder: FolderSource | None = None
    # With dvc set, the coco/yolo/folder paths are relative to the fetched folder.
    dvc: DvcSource | None = None

    @model_validator(mode="after")
    def _source_section_present(self) -> "PullParams":
        if self.source != "synthetic" and getattr(self, self.source) is None:
            raise ValueError(f"source is {self.source!r} but the section pull.{self.source} is missing")
        if self.dvc is not None and self.source == "synthetic":
            raise ValueError("pull.dvc fetches files for a coco/yolo/folder source, not for 'synthetic'")
        return self

    def input_paths(self) -> list[tuple[str, str]]:
        """(dotted key, path) of every input file the chosen source names, for existence checks."""
        if self.source == "synthetic" or self.dvc is not None:
            return []
        section = getattr(self, self.source)
        keys = {"coco": ("annotations", "images_dir"), "yolo": ("data",), "folder": ("images_dir",)}[self.source]
        return [(f"pull.{self.source}.{k}", getattr(section, k)) for k in keys]


class Params(_Section):
    seed: int = 0
    workers: int = Field(default=2, ge=1)       # threads of a stage's Prefect task runner
    pull: PullParams = PullParams()


def _format_error(err: dict) -> str:
    key = ".".join(str(p) if isinstance(p, str) else f"[{p}]" for p in err["loc"]).replace(".[", "[")
    msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
    if err["type"] == "missing":
        return f"{key}: {msg}"
    return f"{key or '(top level)'}: {msg} (got {err['input']!r})"


def parse_params(data: dict, origin: str = "params.yaml", check_files: bool = True) -> Params:
    """Validate a params mapping; ``origin`` names it in error messages."""
    try:
        params = Params.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = [f"{origin}: {_format_error(e)}" for e in exc.errors()]
        raise ParamsError("\n".join(lines)) from None
    if check_files:
        for key, value in params.pull.input_paths():
            if not Path(value).exists():
                raise ParamsError(f"{origin}: {key}: file not found (got {value!r})")
    return params


def load_params(path: str | Path = "params.yaml", check_files: bool = True) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: invalid YAML ({exc})") from None
    if data is not None and not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return parse_params(data, str(path), check_files)
