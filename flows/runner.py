"""The task runner a stage's flow uses, from params: threads in this process, or Dask through prefect-dask."""
from __future__ import annotations

from prefect.task_runners import ThreadPoolTaskRunner

from tasks.params import Params, RunnerParams


def task_runner(params: Params, runner: RunnerParams):
    """Threads (``runner.workers`` or the top-level ``workers``), or Dask: the scheduler at ``runner.address``, or a
    LocalCluster of single-threaded worker processes - one per GPU when there are GPUs
    (``tasks.model_cache.task_device`` pins worker i to cuda:i), else ``runner.workers`` / ``workers`` of them. One
    task at a time per worker keeps one model per device."""
    if runner.kind == "threads":
        return ThreadPoolTaskRunner(max_workers=runner.workers or params.workers)
    import torch
    from prefect_dask import DaskTaskRunner

    if runner.address:
        return DaskTaskRunner(address=runner.address)
    n = runner.workers or torch.cuda.device_count() or params.workers
    threads = max(1, (__import__("os").cpu_count() or 1) // n)
    from prefect.settings import PREFECT_API_URL

    env = {"OMP_NUM_THREADS": str(threads)}
    if PREFECT_API_URL.value():          # else each worker starts its own temporary Prefect server (its task runs
        env["PREFECT_API_URL"] = PREFECT_API_URL.value()      # land in another database, ~35 s at its first task)
    return DaskTaskRunner(cluster_kwargs={"n_workers": n, "threads_per_worker": 1, "processes": True,
                                          "dashboard_address": None, "env": env})
