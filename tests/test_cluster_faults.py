"""Faults on a real Dask cluster (issue 23, part 3): a `dask scheduler` and two `dask worker` processes started from
this venv's `dask` CLI on localhost, the explain stage sent to them through prefect-dask (``explain.runner.address``).

- A worker is SIGKILLed while it holds a shard (after it finished one, so the kill is mid-run): the run completes
  on the survivor (the scheduler re-runs the lost task there) with rows identical to a threads run.
- The flow process itself is SIGKILLed after some shards are done: a re-run computes only what is missing (no
  explanation of a finished shard is computed again) and its rows equal an uninterrupted run's.

Rows are compared sorted by (job, image_id, target_id); timings are not columns (``tasks.timings``). Workers are
started with ``--no-nanny`` so that a killed worker stays dead (a nanny would restart it), in the project folder
(the stage's paths are relative to it, as on a cluster whose workers see the repository at the same path)."""
from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

from flows.explain import run_explain

import pytest

from explainers import registry
from tasks.stages import ExplainOutputs
from tasks.timings import read_shard_timings
from tests.conftest import VENV_BIN, tiny_params

DASK = shutil.which("dask", path=VENV_BIN) or shutil.which("dask")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(DASK is None, reason="the dask CLI (distributed) is not installed")]

# Two cheap jobs (a body-part game on the detector, RISE on the classifier: both scorers), two images per shard: six
# shards, enough for a kill to land mid-run.
EXPLAIN = {"shard_size": 2, "jobs": [{"method": "occlusion", "targets": "persons", "regions": "parts"},
                                     {"method": "rise", "targets": "classes", "regions": "none", "budget": 16}]}
TIMEOUT = 120.0                      # seconds any wait below may take before the test fails naming what it waited for


def sorted_rows(out_dir: str | Path = "data/explain") -> list[dict]:
    table = ExplainOutputs(Path(out_dir), Path("metrics/explain.json")).read("explanations")
    return sorted(table.to_pylist(), key=lambda r: (r["job"], r["image_id"], r["target_id"]))


def done_shards(out_dir: str | Path = "data/explain") -> set[str]:
    folder = Path(out_dir) / "_done"
    return {p.name for p in folder.iterdir()} if folder.is_dir() else set()


def wait_for(what: str, check, timeout: float = TIMEOUT, every: float = 0.02):
    """Poll ``check()`` until it returns something truthy (returned); AssertionError naming ``what`` on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def counting_explainers():
    """Record the seed of every explanation computed through the explainer registry (in this process). A seed is a
    function of (seed, image, target, job) (``tasks.explain.explanation_seed``) and stored in each row's ``seed``
    column, so it tells which explanation was computed, whatever the resume design (done shards or a cache)."""
    seeds: list[int] = []
    lock = threading.Lock()
    with pytest.MonkeyPatch.context() as mp:       # its own: undoing the test's would undo the project's chdir
        for name, cls in list(registry.METHODS.items()):
            def explain(self, *args, _cls=cls, **kwargs):
                bound = inspect.signature(_cls.explain).bind(self, *args, **kwargs)
                with lock:
                    seeds.append(bound.arguments.get("seed"))
                return _cls.explain(self, *args, **kwargs)
            mp.setitem(registry.METHODS, name, type(cls.__name__, (cls,), {"explain": explain}))
        yield seeds


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def _env(root: Path) -> dict[str, str]:
    """The environment of the processes started here: this venv first, this test's Prefect API, one BLAS thread."""
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ, PATH=VENV_BIN + os.pathsep + os.environ.get("PATH", ""), OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    if PREFECT_API_URL.value():
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()
    return env


def _address(scheduler_file: Path) -> str | None:
    """The address in the scheduler's file, or None while it is missing or half written."""
    try:
        return json.loads(scheduler_file.read_text()).get("address")
    except (FileNotFoundError, json.JSONDecodeError):
        return None


@contextmanager
def dask_cluster(root: Path, logs: Path, n_workers: int = 2):
    """`dask scheduler` on an ephemeral localhost port and ``n_workers`` `dask worker --nthreads 1 --no-nanny`
    processes named 0..n-1 started in ``root``; yields (address, {name: Popen}). Everything is SIGKILLed on exit."""
    logs.mkdir(parents=True, exist_ok=True)
    env, procs = _env(root), []
    scheduler_file = logs / "scheduler.json"

    def start(name: str, *args: str) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as log:
            proc = subprocess.Popen([DASK, *args], cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        procs.append(proc)
        return proc

    try:
        start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
              "--scheduler-file", str(scheduler_file))
        address = wait_for("the scheduler's address file", lambda: _address(scheduler_file))
        workers = {str(i): start(f"worker-{i}", "worker", address, "--name", str(i), "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--local-directory", str(logs / f"worker-{i}"))
                   for i in range(n_workers)}
        yield address, workers
    finally:
        for proc in procs:
            _kill_group(proc)


@pytest.fixture(scope="module")
def reference(tiny_project, tmp_path_factory):
    """An uninterrupted threads run of the tiny project (one image per shard): its sorted rows, its shard count and
    the seeds of the explanations it computed."""
    root = tmp_path_factory.mktemp("reference") / "project"
    shutil.copytree(tiny_project, root, ignore=shutil.ignore_patterns(".work"))
    cwd = os.getcwd()
    os.chdir(root)
    try:
        with counting_explainers() as seeds:
            result = run_explain(tiny_params(root, explain=EXPLAIN))
        rows = sorted_rows()
    finally:
        os.chdir(cwd)
    assert result["errors"] == 0 and result["shards"] >= 6 and rows
    return {"rows": rows, "shards": result["shards"], "seeds": list(seeds)}


def test_a_worker_killed_mid_run_leaves_the_run_to_the_survivor_with_identical_rows(project, reference, tmp_path):
    from distributed import Client

    with dask_cluster(project, tmp_path / "cluster") as (address, workers), \
            Client(address, timeout="60s") as client:
        client.wait_for_workers(len(workers), timeout=60)
        addr_of = {str(w["name"]): a for a, w in client.scheduler_info()["workers"].items()}
        victim, survivor = workers["1"], workers["0"]
        params = tiny_params(project, explain={**EXPLAIN, "runner": {"kind": "dask", "address": address}})
        killed: dict = {}

        def shards_of(pid: int) -> set[str]:
            return {s for s, t in read_shard_timings("data/explain").items() if t["pid"] == pid}

        def kill_the_victim_mid_run():
            """Once worker 1 has finished a shard and holds another (the scheduler's view, not a sleep), SIGKILL it
            and record what was done at that moment."""
            try:
                wait_for("worker 1 to finish a shard and hold another", lambda: shards_of(victim.pid) and
                         client.processing([addr_of["1"]]).get(addr_of["1"]))
                victim.send_signal(signal.SIGKILL)
                victim.wait(timeout=30)
                killed.update(done=done_shards(), by_victim=shards_of(victim.pid))
            except BaseException as exc:     # re-raised by the test's thread
                killed["error"] = exc

        watcher = threading.Thread(target=kill_the_victim_mid_run, daemon=True)
        watcher.start()
        result = run_explain(params)
        watcher.join(timeout=TIMEOUT)
        if "error" in killed:
            raise killed["error"]
        assert victim.returncode == -signal.SIGKILL and survivor.poll() is None
        wait_for("the scheduler to drop the killed worker", lambda: list(client.scheduler_info()["workers"]) == [
            addr_of["0"]])

    assert result["errors"] == 0 and result["shards"] == reference["shards"]
    assert len(done_shards()) == reference["shards"]
    assert sorted_rows() == reference["rows"]
    # Killed mid-run: it had finished shards and others were not done yet; every shard not done at the kill was then
    # run by the survivor. (Dask also re-runs the killed worker's finished tasks whose results lived in its memory:
    # such a shard rewrites the same files, so its final timing may name either worker.)
    assert killed["by_victim"] and killed["by_victim"] <= killed["done"] and len(killed["done"]) < reference["shards"]
    assert shards_of(victim.pid) <= killed["by_victim"]
    after = {s: t["pid"] for s, t in read_shard_timings("data/explain").items() if s not in killed["done"]}
    assert after and set(after.values()) == {survivor.pid}


def test_a_flow_process_killed_mid_run_resumes_computing_only_what_is_missing(project, reference, tmp_path):
    params = tiny_params(project, explain=EXPLAIN)
    with open(tmp_path / "flow.log", "wb") as log:
        flow = subprocess.Popen([shutil.which("xai-audit", path=VENV_BIN) or "xai-audit", "--params", str(params),
                                 "explain"], cwd=project, env=_env(project), stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        k = 2
        wait_for(f"{k} finished shards (flow log: {tmp_path / 'flow.log'})",
                 lambda: len(done_shards()) >= k or flow.poll() is not None)
        assert flow.poll() is None, f"the flow ended before it could be killed: {(tmp_path / 'flow.log').read_text()}"
    finally:
        _kill_group(flow)
    assert flow.returncode == -signal.SIGKILL
    done = done_shards()
    kept = sorted_rows()                          # what the killed run left that a reader takes
    assert k <= len(done) < reference["shards"] and kept

    with counting_explainers() as seeds:
        resumed = run_explain(params)
    assert resumed["errors"] == 0 and sorted_rows() == reference["rows"]
    computed, kept_seeds = Counter(seeds), {r["seed"] for r in kept}
    missing = Counter(s for s in reference["seeds"] if s not in kept_seeds)
    # None the killed run finished is computed again, none twice, each one computed is one it had not finished:
    # fewer than from scratch. With done markers alone, `computed == missing`; the result store
    # (tasks.result_store) can also hold the groups of a shard killed between storing them and its done marker,
    # which the re-run then reuses, so `<=`.
    assert computed and not kept_seeds & set(computed)
    assert computed <= missing and computed.total() < len(reference["seeds"])
