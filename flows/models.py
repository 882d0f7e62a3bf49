"""The models stage: training scenes, then the demo detector, pose model and scene classifier (or given weights)."""
from __future__ import annotations

from pathlib import Path

import flows  # noqa: F401  (environment defaults)
from flows.pull import pull_flow

from prefect import flow
from prefect.task_runners import ThreadPoolTaskRunner

from tasks.models import train_classifier, train_data_params, train_detector, train_pose
from tasks.params import Params, load_params

MODELS = ("pose", "detector", "classifier")     # dependency order: the detector starts from the pose model
_TASKS = {"detector": train_detector, "pose": train_pose, "classifier": train_classifier}


@flow(name="models", log_prints=True)
def models_flow(params: Params, only: tuple[str, ...] = MODELS) -> dict:
    """Train (or copy) the requested models in dependency order; training is CPU/GPU bound, so one at a time."""
    return {name: _TASKS[name](params) for name in MODELS if name in only}


def run_train_data(params_file: str | Path = "params.yaml") -> dict:
    """Generate the demo models' training scenes (the pull flow with the train_data seed and size)."""
    params = load_params(params_file)
    runner = ThreadPoolTaskRunner(max_workers=params.workers)
    return pull_flow.with_options(name="train-data", task_runner=runner)(train_data_params(params))


def run_models(params_file: str | Path = "params.yaml", only: tuple[str, ...] = MODELS) -> dict:
    unknown = set(only) - set(MODELS)
    if unknown:
        raise ValueError(f"unknown model(s) {sorted(unknown)}; choose from {list(MODELS)}")
    return models_flow(load_params(params_file), tuple(only))
