"""The models stage's keypoint model: trained on the training scenes' persons (or copied from params)."""
from __future__ import annotations

from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow

from tasks.keypoints import train_keypoints
from tasks.params import Params, load_params


@flow(name="keypoints", log_prints=True)
def keypoints_flow(params: Params) -> dict:
    return train_keypoints(params)


def run_keypoints(params_file: str | Path = "params.yaml") -> dict:
    return keypoints_flow(load_params(params_file))
