"""Tasks of the models stage: train (or take from params) the demo detector, pose model and scene classifier."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from detection.datasets.imageio import load_rgb, to_batch
from detection.datasets.synthetic import CATEGORIES
from detection.datasets.tables import DatasetTables
from detection.datasets.yolo_export import write_yolo_dataset
from detection.models.scene_classifier import ClassifierTraining, save_classifier, scene_labels, train_scene_classifier
from detection.models.specs import file_sha256
from detection.models.yolo_training import YoloTraining, train_yolo
from tasks.params import Params, PullParams
from tasks.shards import write_json
from tasks.shipped_weights import verify_given

MODEL_FILES = {"detector": "detector.pt", "pose": "pose.pt", "classifier": "classifier.pt"}


def train_data_params(params: Params) -> Params:
    """The pull parameters that generate the demo models' training scenes (own seed, no val split)."""
    td = params.models.train_data
    synthetic = params.pull.synthetic.model_copy(update={"n_images": td.n_images, "val_fraction": 0.0,
                                                         "id_prefix": "train"})
    pull = PullParams(source="synthetic", out_dir=td.out_dir, metrics=td.metrics, shard_size=params.pull.shard_size,
                      limits=params.pull.limits, synthetic=synthetic)
    return params.model_copy(update={"seed": params.seed + td.seed_offset, "pull": pull})


def _yolo_dataset(params: Params, pose: bool) -> Path:
    """Training scenes as the train split, the pulled dataset's val split as val (ultralytics needs one)."""
    train = DatasetTables.read(params.models.train_data.out_dir)
    pulled = DatasetTables.read(params.pull.out_dir)
    val_images = pulled.images.filter(pc.equal(pulled.images["split"], "val"))
    images = pa.concat_tables([train.images, val_images])
    annotations = pa.concat_tables([train.annotations, pulled.annotations])
    out = Path(params.models.work_dir) / ("yolo-pose" if pose else "yolo-detect")
    shutil.rmtree(out, ignore_errors=True)
    return write_yolo_dataset(images, annotations, out, ["person"], pose=pose)


def _record(params: Params, name: str, info: dict) -> dict:
    out = Path(params.models.out_dir) / MODEL_FILES[name]
    info = {**info, "weights": str(out), "sha256": file_sha256(out)}
    write_json(Path(params.models.metrics_dir) / f"{name}.json", info)
    return info


def _given(params: Params, name: str, weights: str, sidecar: bool = False) -> dict:
    """Copy given weights (checked against the manifest beside them, see :mod:`tasks.shipped_weights`)."""
    src, dst = Path(weights), Path(params.models.out_dir) / MODEL_FILES[name]
    verify_given(src, f"models.{name}.weights")
    if sidecar:
        verify_given(src.with_suffix(".json"), f"models.{name}.weights (its .json sidecar)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    if sidecar:
        shutil.copyfile(src.with_suffix(".json"), dst.with_suffix(".json"))
    return _record(params, name, {"source": f"given:{src}"})


def _train_yolo_model(params: Params, name: str, pose: bool, init_from: Path | None) -> dict:
    cfg = getattr(params.models, name)
    data = _yolo_dataset(params, pose)
    start = time.perf_counter()
    out = Path(params.models.out_dir) / MODEL_FILES[name]
    train_yolo(cfg.arch, data, out, YoloTraining(cfg.epochs, cfg.imgsz, cfg.batch, cfg.lr0, workers=params.workers),
               seed=params.seed, work_dir=params.models.work_dir, init_from=init_from)
    return _record(params, name, {"source": "trained", "arch": cfg.arch, "epochs": cfg.epochs,
                                  "train_images": params.models.train_data.n_images,
                                  "seconds": round(time.perf_counter() - start, 1)})


@task(cache_policy=NO_CACHE)
def train_pose(params: Params) -> dict:
    cfg = params.models.pose
    if cfg.weights:
        return _given(params, "pose", cfg.weights)
    return _train_yolo_model(params, "pose", pose=True, init_from=None)


@task(cache_policy=NO_CACHE)
def train_detector(params: Params) -> dict:
    cfg = params.models.detector
    if cfg.weights:
        return _given(params, "detector", cfg.weights)
    init = Path(params.models.out_dir) / MODEL_FILES["pose"] if cfg.init_from_pose else None
    if init is not None and not init.is_file():
        raise FileNotFoundError(f"models.detector.init_from_pose: pose weights not found: {init} "
                                f"(train the pose model first)")
    return _train_yolo_model(params, "detector", pose=False, init_from=init)


def load_scene_images(tables: DatasetTables, classes: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 images [N, 3, H, W] (one size) and boolean scene labels [N, C] of a pulled dataset."""
    rows = tables.images.to_pylist()
    images = to_batch([load_rgb(r["uri"]) for r in rows], dtype=torch.uint8)
    return images, torch.from_numpy(scene_labels([r["labels"] for r in rows], classes))


@task(cache_policy=NO_CACHE)
def train_classifier(params: Params) -> dict:
    cfg = params.models.classifier
    if cfg.weights:
        return _given(params, "classifier", cfg.weights, sidecar=True)
    start = time.perf_counter()
    classes = list(CATEGORIES)
    images, labels = load_scene_images(DatasetTables.read(params.models.train_data.out_dir), classes)
    clf, history = train_scene_classifier(images, labels, classes, ClassifierTraining(
        epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr, input_size=tuple(cfg.input_size), width=cfg.width),
        seed=params.seed)
    save_classifier(clf, Path(params.models.out_dir) / MODEL_FILES["classifier"])
    get_run_logger().info("classifier loss by epoch: %s", [round(h, 4) for h in history])
    return _record(params, "classifier", {"source": "trained", "epochs": cfg.epochs, "classes": classes,
                                          "final_loss": round(history[-1], 4), "train_images": len(images),
                                          "seconds": round(time.perf_counter() - start, 1)})
