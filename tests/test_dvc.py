"""DVC: a dataset version travels through a local remote, the pull stage fetches it, and `dvc repro` caches."""
import hashlib
import json
import shutil
import subprocess
from pathlib import Path

from flows.pull import run_pull

import pytest
import yaml

from detection.datasets.tables import DatasetTables
from tasks.params import read_yaml
from tasks.stage_deps import is_code_dep
from tests.conftest import REPO
from tests.helpers import write_coco

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd: Path, env: dict) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed in {cwd}:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout + proc.stderr


def digest(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def registry(tmp_path, tool_env):
    """A git + DVC data registry with a COCO dataset pushed to a local-directory remote, tagged v1."""
    repo, remote = tmp_path / "registry", tmp_path / "remote"
    repo.mkdir()
    run(["git", "init", "-q", "-b", "main"], repo, tool_env)
    run(["dvc", "init", "-q"], repo, tool_env)
    write_coco(repo / "datasets" / "coco")
    run(["dvc", "add", "-q", "datasets/coco"], repo, tool_env)
    run(["dvc", "remote", "add", "-d", "local", str(remote)], repo, tool_env)
    run(["dvc", "push", "-q"], repo, tool_env)
    run(["git", "add", "-A"], repo, tool_env)
    run(["git", "commit", "-q", "-m", "dataset v1"], repo, tool_env)
    run(["git", "tag", "v1"], repo, tool_env)
    return repo


def test_remote_round_trip_add_push_clone_pull(registry, tmp_path, tool_env):
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(registry), str(clone)], tmp_path, tool_env)
    assert not (clone / "datasets" / "coco").exists()           # git holds only the .dvc pointer
    run(["dvc", "pull", "-q"], clone, tool_env)
    assert digest(clone / "datasets" / "coco") == digest(registry / "datasets" / "coco")


def test_pull_stage_fetches_a_dataset_version_from_a_dvc_repo(registry, prefect_server, in_tmp):
    shutil.rmtree(registry / ".dvc" / "cache")                  # the data must come from the remote
    params = in_tmp / "params.yaml"
    params.write_text(yaml.safe_dump({"pull": {
        "source": "coco", "coco": {"annotations": "annotations.json", "images_dir": "images"},
        "dvc": {"url": str(registry), "path": "datasets/coco", "rev": "v1"}}}))
    stats = run_pull(params)
    assert stats["images"] == 3 and stats["persons_with_keypoints"] == 3
    tables = DatasetTables.read(in_tmp / "data" / "pulled")
    for row in tables.images.to_pylist():
        assert row["uri"].startswith("data/pulled/source/images/") and (in_tmp / row["uri"]).is_file()


def copy_project(project: Path, tool_env: dict, n_images: int = 12) -> Path:
    """This project's git files (no outputs, no dvc.lock) in a fresh git repository, with n_images synthetic images."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (REPO / name).is_file() and not name.startswith(("data/pulled", "metrics/")) and name != "dvc.lock":
            (project / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, project / name)
    params = read_yaml(project / "params.yaml")            # YAML 1.2, as DVC reads it
    params["pull"]["synthetic"]["n_images"] = n_images
    (project / "params.yaml").write_text(yaml.safe_dump(params))
    run(["git", "init", "-q", "-b", "main"], project, tool_env)
    run(["git", "add", "-A"], project, tool_env)
    run(["git", "commit", "-q", "-m", "copy"], project, tool_env)
    return project


def with_prefect_api(env: dict) -> dict:
    """``env`` with this session's Prefect API (``prefect_server``): the stage's ``xai-audit`` process then uses it
    instead of starting a temporary server of its own (tens of seconds on the 2-core CI machine)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    return {**env, "PREFECT_API_URL": url} if url else env


def test_dvc_repro_pull_runs_once(tmp_path, tool_env, prefect_server):
    """`dvc repro pull` on a copy of this project: generates the dataset, then a second run does nothing."""
    project = copy_project(tmp_path / "project", tool_env)
    tool_env = with_prefect_api(tool_env)

    run(["dvc", "repro", "pull"], project, tool_env)
    tables = DatasetTables.read(project / "data" / "pulled")
    assert tables.images.num_rows == 12 and tables.annotations.num_rows > 0
    assert "didn't change" in run(["dvc", "repro", "pull"], project, tool_env)
    metrics = run(["dvc", "metrics", "show"], project, tool_env)
    assert "metrics/pull.json" in metrics


def _status(project: Path, tool_env: dict) -> set[str]:
    """Stages `dvc status` lists as changed."""
    out = run(["dvc", "status", "--json"], project, tool_env)
    return set(json.loads(out[out.index("{"):]))


def test_touching_an_imported_module_makes_its_stages_stale(tmp_path, tool_env):
    """dvc.yaml's code deps are the stages' imports: after a change to detection/datasets/imageio.py (to_batch, which
    every model input goes through) `dvc status` lists infer, explain and evaluate, not only the data stages; a
    change to a module no stage imports lists none. Outputs are stand-ins recorded by `dvc commit` (nothing runs)."""
    project = copy_project(tmp_path / "project", tool_env)
    stages = read_yaml(project / "dvc.yaml")["stages"]
    for stage in stages.values():
        paths = [d for d in stage.get("deps", []) if not is_code_dep(d)]
        paths += [next(iter(o)) if isinstance(o, dict) else o
                  for key in ("outs", "metrics", "plots") for o in stage.get(key, [])]
        for path in map(project.joinpath, paths):
            if not path.exists():
                target = path if path.suffix else path / "stand-in"
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(f"stand-in for {path.name}\n")
    run(["dvc", "commit", "-f", "-q"], project, tool_env)
    assert _status(project, tool_env) == set(), "not up to date right after dvc commit"

    module = project / "detection" / "datasets" / "imageio.py"
    module.write_text(module.read_text() + "\n# changed\n")
    stale = _status(project, tool_env)
    assert {"infer", "explain", "evaluate"} <= stale, f"dvc status lists only {sorted(stale)}"
    assert stale == {name for name, stage in stages.items() if "detection/datasets/imageio.py" in stage["deps"]}

    run(["dvc", "commit", "-f", "-q"], project, tool_env)
    for unused in ("flows/single.py", "flows/audit.py"):          # the CLI's one-image explain, the serve flow
        path = project / unused
        path.write_text(path.read_text() + "\n# changed\n")
    assert _status(project, tool_env) == set(), "stages stale after touching a module no stage imports"
