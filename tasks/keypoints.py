"""Task of the models stage that trains (or copies) the top-down keypoint model the pose source of parts uses."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np
import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from detection.body import NUM_KEYPOINTS
from detection.datasets.imageio import load_rgb, to_batch
from detection.datasets.tables import DatasetTables
from detection.models.keypoints import KeypointTraining, load_keypoint_model, save_keypoint_model, train_keypoint_model
from detection.models.specs import file_sha256
from tasks.params import Params
from tasks.shards import write_json
from tasks.shipped_weights import verify_given

KEYPOINTS_FILE = "keypoints.pt"


def person_keypoints(tables: DatasetTables) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """uint8 images [B, 3, H, W] (one size) and their persons with keypoints: boxes [N, 4], image index [N],
    COCO keypoints [N, 17, 3]."""
    images = tables.images.to_pylist()
    index = {r["image_id"]: i for i, r in enumerate(images)}
    persons = [a for a in tables.annotations.to_pylist()
               if a["category"] == "person" and a["keypoints"] is not None and a["image_id"] in index]
    if not persons:
        raise ValueError("no person with keypoints in the training scenes: nothing to train the keypoint model on")
    batch = to_batch([load_rgb(r["uri"]) for r in images], dtype=torch.uint8)
    boxes = torch.tensor(np.array([a["bbox"] for a in persons], np.float32))
    image_index = torch.tensor([index[a["image_id"]] for a in persons])
    kps = torch.tensor(np.array([a["keypoints"] for a in persons], np.float32).reshape(-1, NUM_KEYPOINTS, 3))
    return batch, boxes, image_index, kps


@task(cache_policy=NO_CACHE)
def train_keypoints(params: Params) -> dict:
    cfg = params.models.keypoints
    out = Path(params.models.out_dir) / KEYPOINTS_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.weights:
        verify_given(cfg.weights, "models.keypoints.weights")
        load_keypoint_model(cfg.weights, device="cpu")            # fail here, naming the file, if it is not one
        shutil.copyfile(cfg.weights, out)
        info = {"source": f"given:{cfg.weights}"}
    else:
        start = time.perf_counter()
        images, boxes, image_index, kps = person_keypoints(DatasetTables.read(params.models.train_data.out_dir))
        training = KeypointTraining(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                    crop_size=tuple(cfg.crop_size), width=cfg.width, context=cfg.context)
        model, history = train_keypoint_model(images, boxes, image_index, kps, training, seed=params.seed)
        save_keypoint_model(model, out, training)
        get_run_logger().info("keypoint model loss by epoch: %s", [round(h, 3) for h in history])
        info = {"source": "trained", "epochs": cfg.epochs, "train_persons": len(boxes),
                "final_loss": round(history[-1], 4), "seconds": round(time.perf_counter() - start, 1)}
    info = {**info, "weights": str(out), "sha256": file_sha256(out)}
    write_json(Path(params.models.metrics_dir) / "keypoints.json", info)
    return info
