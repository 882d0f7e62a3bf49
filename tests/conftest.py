"""Shared fixtures. Tests make all their data themselves; nothing is downloaded."""
from __future__ import annotations

import os
import sys
from pathlib import Path

# pytest-xdist (`make test` runs `-n 2`): each worker process gets its share of the cores for torch's (and OpenMP's)
# intra-op threads, set before torch is first imported; more threads than cores spin-wait on a shared 2-core machine.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    os.environ.setdefault("OMP_NUM_THREADS",
                          str(max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))))

import flows  # noqa: E402, F401  (offline / no-telemetry defaults before Prefect is imported)

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API (own SQLite DB) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def one_torch_thread():
    """One torch thread (restored after): on a shared 2-core machine two threads spin-wait, several times the CPU.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """Run the test with a fresh temporary folder as the working directory (the 'project root')."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def tool_env():
    """Environment for subprocesses (dvc, git, xai-audit) that finds this venv's executables."""
    env = dict(os.environ)
    env["PATH"] = VENV_BIN + os.pathsep + env.get("PATH", "")
    env.setdefault("GIT_AUTHOR_NAME", "xai-audit tests")
    env.setdefault("GIT_AUTHOR_EMAIL", "tests@example.invalid")
    env.setdefault("GIT_COMMITTER_NAME", "xai-audit tests")
    env.setdefault("GIT_COMMITTER_EMAIL", "tests@example.invalid")
    return env


TINY_JOBS = [
    {"method": "kernel_shap", "targets": "persons", "regions": "parts", "budget": 16},
    {"method": "occlusion", "targets": "persons", "regions": "parts"},
    {"method": "drise", "targets": "persons", "regions": "none", "budget": 32, "options": {"grid": 4, "center": True}},
    {"method": "rise", "targets": "classes", "regions": "none", "budget": 32, "split": "val"},
]


def tiny_params(root: Path, **extra) -> Path:
    """params.yaml of a tiny project: 12 synthetic images, 1-epoch demo models, cheap explainer jobs."""
    import yaml

    params = {"seed": 0, "pull": {"synthetic": {"n_images": 12}},
              "models": {"train_data": {"n_images": 24},
                         "detector": {"epochs": 1, "arch": str(REPO / "detection/configs/yolo-person-tiny.yaml")},
                         "pose": {"epochs": 1, "arch": str(REPO / "detection/configs/yolo-pose-tiny.yaml")},
                         "classifier": {"epochs": 1}, "keypoints": {"epochs": 1}},
              "explain": {"shard_size": 2, "min_height": 20, "jobs": TINY_JOBS},
              "evaluate": {"steps": 4, "shard_size": 4, "causal_split": None,
                           "sanity": {"targets": 2, "max_targets": 4}},
              "report": {"gallery": 2}}
    for key, value in extra.items():
        params[key] = {**params.get(key, {}), **value} if isinstance(value, dict) else value
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, prefect_server):
    """A project folder with pull -> models -> infer -> parts done once for the session (tests copy it)."""
    from flows.infer import run_infer
    from flows.keypoints import run_keypoints
    from flows.models import run_models, run_train_data
    from flows.parts import run_parts
    from flows.pull import run_pull

    root = tmp_path_factory.mktemp("tiny_project")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        params = tiny_params(root)
        run_pull(params)
        run_train_data(params)
        run_models(params)
        run_keypoints(params)
        run_infer(params)
        run_parts(params)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def project(tiny_project, tmp_path, monkeypatch):
    """A private copy of the tiny project as the working directory."""
    import shutil

    root = tmp_path / "project"
    shutil.copytree(tiny_project, root, ignore=shutil.ignore_patterns(".work"))
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="session")
def explained_project(tiny_project, tmp_path_factory):
    """The tiny project after explain -> evaluate with :func:`tiny_params` (TINY_JOBS), run once for the session:
    (its folder, explain's result dict). Tests that need those stages done, or the rows of a plain threads run, copy
    it (``explained``) instead of running them again; the result store (``.cache``) is copied with it."""
    import shutil

    from flows.evaluate import run_evaluate
    from flows.explain import run_explain

    root = tmp_path_factory.mktemp("explained_project") / "project"
    shutil.copytree(tiny_project, root, ignore=shutil.ignore_patterns(".work"))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        params = tiny_params(root)
        result = run_explain(params)
        run_evaluate(params)
    finally:
        os.chdir(cwd)
    return root, result


@pytest.fixture
def explained(explained_project, tmp_path, monkeypatch):
    """A private copy of the explained tiny project (``explained_project``) as the working directory: (its folder,
    explain's result dict of the run that made it)."""
    import copy
    import shutil

    source, result = explained_project
    root = tmp_path / "project"
    shutil.copytree(source, root, ignore=shutil.ignore_patterns(".work"))
    monkeypatch.chdir(root)
    return root, copy.deepcopy(result)


def pytest_collection_modifyitems(config, items):
    """Files with end-to-end tests (marked ``slow``) first, each file's tests kept together and in order: with two
    worker processes (``make test``) the long files start early and the many short ones fill the end, instead of one
    worker running a long file alone at the end."""
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
