"""Which device each task runs on: the Dask runner starts one single-threaded worker per GPU (flows.runner) and
``tasks.model_cache.task_device`` pins worker i to cuda:i. Tested on the CPU with torch.cuda reporting GPUs."""
import os

from flows.runner import task_runner

import pytest
import torch

from tasks.model_cache import task_device
from tasks.params import Params, RunnerParams


@pytest.fixture
def gpus(monkeypatch):
    """torch.cuda says there are ``n`` GPUs."""
    def set_gpus(n: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
    return set_gpus


class _Worker:
    def __init__(self, name):
        self.name = name


def test_dask_runner_starts_one_worker_per_gpu_else_the_configured_number(gpus, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    gpus(4)
    kw = task_runner(Params(workers=3), RunnerParams(kind="dask")).cluster_kwargs
    assert (kw["n_workers"], kw["threads_per_worker"], kw["processes"]) == (4, 1, True)
    assert kw["env"]["OMP_NUM_THREADS"] == "4"                        # the CPU cores shared between the workers
    assert task_runner(Params(workers=3), RunnerParams(kind="dask", workers=2)).cluster_kwargs["n_workers"] == 2
    gpus(0)
    kw = task_runner(Params(workers=3), RunnerParams(kind="dask")).cluster_kwargs
    assert kw["n_workers"] == 3 and kw["env"]["OMP_NUM_THREADS"] == "5"
    address = task_runner(Params(), RunnerParams(kind="dask", address="tcp://10.0.0.1:8786"))
    assert address.address == "tcp://10.0.0.1:8786" and not address.cluster_kwargs


def test_each_dask_worker_is_pinned_to_its_own_gpu(gpus, monkeypatch):
    import distributed

    gpus(2)
    seen = {}
    for name in (0, 1, 2, 3, "1"):
        monkeypatch.setattr(distributed, "get_worker", lambda name=name: _Worker(name))
        seen[name] = task_device("auto")
    assert seen == {0: "cuda:0", 1: "cuda:1", 2: "cuda:0", 3: "cuda:1", "1": "cuda:1"}   # more workers: round robin
    monkeypatch.setattr(distributed, "get_worker", lambda: _Worker("scheduler-given-name"))
    assert task_device("auto") == "cuda:0"
    monkeypatch.undo()
    gpus(2)
    assert task_device("auto") == "cuda:0"                            # not in a Dask worker (threads runner)
    assert task_device("cuda:1") == "cuda:1" and task_device("cpu") == "cpu"    # an explicit device wins
    gpus(0)
    assert task_device("auto") == "cpu"


def test_the_workers_of_a_local_cluster_land_on_distinct_gpus(gpus):
    """A real LocalCluster (in-process, so the fake GPUs apply) as flows.runner configures it: its workers' names
    give every worker its own GPU."""
    from distributed import Client, LocalCluster

    gpus(2)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        workers = sorted(client.scheduler_info()["workers"])
        devices = [client.submit(task_device, "auto", workers=[w], pure=False).result(timeout=60) for w in workers]
    assert sorted(devices) == ["cuda:0", "cuda:1"]
