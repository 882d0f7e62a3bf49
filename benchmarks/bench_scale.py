"""The whole pipeline at dataset scale: pull -> infer -> parts -> explain -> evaluate on N synthetic images, for
several N, recording per stage the peak RSS of the flow process and of the workers, the orchestration overhead and
the seconds per image (issue 23, part 2: flat memory and cheap orchestration).

    python benchmarks/bench_scale.py                      # 1000 5000 20000 images
    python benchmarks/bench_scale.py 1000 5000 --explain-runner dask
    python benchmarks/bench_scale.py --one 1000 --work /tmp/scale-1000     # one size in this process (internal)

Each size runs in a fresh subprocess (``--one``) that starts one Prefect API server, and each stage in a fresh
process of its own against that server (``--stage``), as ``dvc repro`` runs each stage's command, so a stage's peak
RSS is its own; results go to ``benchmarks/results/scale.json`` (merged by size with what is there) and are printed.

**Settings.** The generator's settings are the project's ``params.yaml`` ones (``pull.synthetic``), only
``n_images`` changes; the shard sizes are params.yaml's too. Models: real YOLO inference over 20k images on a shared
2-core CPU takes too long, so the audited detector is :func:`cheap_detector`, a ``kind: callable`` detector (six
fixed person-shaped boxes per image scored by the contrast inside them: a few array operations per image, no
network); the pose model and the classifier are off (``infer.pose: null``, ``infer.classifier: null``), so parts
use ground-truth keypoints for GT persons and the template for detections. The explain job is one cheap job,
``occlusion`` over body ``parts`` of the GT persons (a forward per part); evaluate runs its causal metrics over
``evaluate.causal_split`` (params.yaml) and no sanity check (``evaluate.sanity.targets: 0``; a callable model has no
parameters to randomise). Explain runs on threads by default; ``--explain-runner dask`` runs it on a LocalCluster
of worker processes through prefect-dask (``explain.runner``), whose RSS is then sampled separately.

**Measured, per stage** (a Prefect flow run each):

- ``wall_s``: the flow call's wall time; ``s_per_image``: wall / N.
- ``task_s``: the summed run time of the stage's task runs and ``busy_s`` the time at least one task ran (the union
  of their [start, end] intervals), both from the Prefect API; ``overhead_s = wall_s - busy_s`` is the time the
  stage spent orchestrating (planning, submitting, waiting on the API, collecting shards, metrics) with no task
  running, and ``overhead_frac = overhead_s / wall_s`` the target's number (<= 5 % at 20k).
- ``flow_rss_peak_mb``: the flow process's peak resident set during the stage (sampled every 20 ms by a thread;
  ``ru_maxrss`` of the whole process is reported too). Target: the largest stage peak at 20k images <= 1.3x the
  one at 1k.
- ``worker_rss_peak_mb``: the largest resident set of a child process other than the Prefect API server during
  the stage - a Dask worker with the dask runner; null with threads (the workers are threads of the flow process,
  counted in its RSS).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results" / "scale.json"
STAGES = ("pull", "infer", "parts", "explain", "evaluate")


# ---------------------------------------------------------------------------------------------------- the model
def cheap_detector(*, device: str = "cpu"):
    """A ``kind: callable`` detector for scale runs: six fixed person-shaped boxes per image (two rows of three),
    each scored by the sigmoid of the luma contrast between the box and the whole image; labels: person. Costs a
    few tensor reductions per image, so the benchmark measures the pipeline, not a network."""
    import torch

    from detection.models.blackbox import CallableDetector

    def fn(images: torch.Tensor) -> list[dict]:
        _, _, h, w = images.shape
        bw, bh = w / 6, h / 2.2
        boxes = torch.tensor([[x0, y0, x0 + bw, y0 + bh] for y0 in (0.05 * h, 0.5 * h)
                              for x0 in (0.1 * w, 0.42 * w, 0.74 * w)])
        luma = images.mean(1)                                               # [B, H, W]
        out = []
        for img in luma:
            inside = torch.stack([img[int(b[1]):int(b[3]), int(b[0]):int(b[2])].mean() for b in boxes])
            scores = torch.sigmoid(8 * (img.mean() - inside))               # darker than the scene: a figure
            out.append({"boxes": boxes.clone(), "scores": scores, "labels": torch.zeros(len(boxes), dtype=torch.long)})
        return out

    return CallableDetector(fn, ["person", "car"])


def bench_params(n_images: int, image_size: tuple[int, int] | None = None) -> dict:
    """params.yaml of one scale run: the project's params with N images (of ``image_size`` = (width, height) pixels
    when given), the cheap detector and one cheap job."""
    import yaml

    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["pull"]["synthetic"]["n_images"] = n_images
    if image_size is not None:
        params["pull"]["synthetic"]["width"], params["pull"]["synthetic"]["height"] = image_size
    params["infer"]["detectors"] = [{"id": "cheap", "kind": "callable", "entrypoint": "bench_scale:cheap_detector",
                                     "conf": 0.5}]
    params["infer"]["pose"] = None
    params["infer"]["classifier"] = None
    params["explain"]["jobs"] = [{"method": "occlusion", "targets": "persons", "regions": "parts"}]
    params["explain"]["detector"] = None
    params["evaluate"]["sanity"]["targets"] = 0
    params.pop("guide", None)
    return params


# ---------------------------------------------------------------------------------------------------- sampling
class RssSampler:
    """Peak RSS (MiB) of this process and of its Dask worker processes, sampled by a thread every ``period`` s;
    :meth:`reset` starts a new stage's peaks."""

    def __init__(self, period: float = 0.02):
        import psutil

        self.proc, self.period = psutil.Process(), period
        self.flow = self.worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _workers(self):
        """RSS of the child processes other than the Prefect API server (uvicorn): Dask's worker processes (spawned
        by multiprocessing, so their command line does not name dask) and multiprocessing's small helpers."""
        for child in self.proc.children(recursive=True):
            try:
                if not any("uvicorn" in part or "prefect" in part for part in child.cmdline()):
                    yield child.memory_info().rss
            except Exception:  # noqa: BLE001 - a child that exited between listing and reading
                continue

    def _run(self):
        while not self._stop.is_set():
            self.flow = max(self.flow, self.proc.memory_info().rss)
            self.worker = max([self.worker, *self._workers()])
            time.sleep(self.period)

    def reset(self) -> tuple[float, float | None]:
        """The peaks since the last reset (MiB; worker None when no worker process was seen), then start over."""
        flow, worker = self.flow / 2**20, (self.worker / 2**20) or None
        self.flow = self.worker = 0
        return flow, worker

    def stop(self):
        self._stop.set()
        self._thread.join()


def _task_times(flow_name: str, since: float) -> dict:
    """Summed task run time and the union of task intervals (s) of the newest run of flow ``flow_name``."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=[flow_name])),
                                     sort=FlowRunSort.START_TIME_DESC, limit=1)
        if not runs:
            return {"tasks": 0, "task_s": 0.0, "busy_s": 0.0}
        tasks, offset = [], 0
        while True:                                       # the API pages task runs (200 at most a call)
            page = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[runs[0].id])),
                                         limit=200, offset=offset)
            tasks += page
            offset += len(page)
            if len(page) < 200:
                break
    spans = sorted((t.start_time.timestamp(), t.end_time.timestamp()) for t in tasks
                   if t.start_time is not None and t.end_time is not None)
    busy, end = 0.0, float("-inf")
    for a, b in spans:                                    # union of the intervals
        if b > end:
            busy += b - max(a, end)
            end = b
    return {"tasks": len(tasks), "task_s": round(sum(t.total_run_time.total_seconds() for t in tasks), 2),
            "busy_s": round(busy, 2)}


# ---------------------------------------------------------------------------------------------------- one size
RUNS = {"pull": ("flows.pull", "run_pull"), "infer": ("flows.infer", "run_infer"),
        "parts": ("flows.parts", "run_parts"), "explain": ("flows.explain", "run_explain"),
        "evaluate": ("flows.evaluate", "run_evaluate")}


def run_stage(stage: str, work: Path) -> dict:
    """Run one stage's flow in this process (a fresh one, as ``dvc repro`` runs each stage's command) on the
    params.yaml in ``work``, against the Prefect API in ``PREFECT_API_URL``; returns its wall time and this
    process's / its workers' peak RSS."""
    import importlib

    os.chdir(work)
    module, name = RUNS[stage]
    run = getattr(importlib.import_module(module), name)
    sampler = RssSampler()
    sampler.reset()                                   # the peak of the stage's run, after the imports
    t0 = time.perf_counter()
    run("params.yaml")
    wall = time.perf_counter() - t0
    flow_peak, worker_peak = sampler.reset()
    sampler.stop()
    return {"wall_s": wall, "flow_rss_peak_mb": round(flow_peak, 1),
            "worker_rss_peak_mb": None if worker_peak is None else round(worker_peak, 1),
            "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def _stage_process(stage: str, work: Path, env: dict) -> dict:
    """``run_stage`` in a fresh Python process (its stdout's ``STAGE`` line); raises SystemExit with the log's tail
    when it fails."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", stage, "--work", str(work)]
    log = work / f"{stage}.log"
    with open(log, "w") as err:
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=err, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("STAGE ")]
    if done.returncode or not lines:
        sys.stderr.write(log.read_text()[-5000:])
        raise SystemExit(f"stage {stage} failed (exit {done.returncode}); log: {log}")
    return json.loads(lines[-1][len("STAGE "):])


def run_one(n_images: int, work: Path, explain_runner: str, stages: tuple[str, ...] = STAGES,
            image_size: tuple[int, int] | None = None) -> dict:
    """Run the five stages (or ``stages``, on the earlier stages' outputs already in ``work``) on ``n_images``
    images in ``work`` (the project root of the run) and measure them. Each stage runs in its own fresh process, as
    ``dvc repro`` runs them, against one Prefect API server that this process starts (its task runs give the busy
    time)."""
    import yaml

    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    params = bench_params(n_images, image_size)
    if explain_runner == "dask":
        params["explain"]["runner"] = {"kind": "dask", "workers": 2, "address": None}
    Path("params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    size = [params["pull"]["synthetic"]["width"], params["pull"]["synthetic"]["height"]]
    out = {"n_images": n_images, "image_size": size, "explain_runner": explain_runner, "stages": {},
           "stages_run": list(stages),
           "process": "one fresh process per stage (as dvc repro)"}
    with prefect_test_harness(server_startup_timeout=180):
        env = {**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value(),
               "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
        for stage in stages:
            started = time.time()
            measured = _stage_process(stage, work, env)
            wall = measured.pop("wall_s")
            times = _task_times(stage, started)
            overhead = wall - times["busy_s"]
            out["stages"][stage] = {"wall_s": round(wall, 2), "s_per_image": round(wall / n_images, 5), **times,
                                    "overhead_s": round(overhead, 2), "overhead_frac": round(overhead / wall, 4),
                                    **measured}
            print(stage, json.dumps(out["stages"][stage]), flush=True)
    out["total"] = _total(out["stages"], n_images)
    timings = work / "metrics" / "timings.json"
    if timings.is_file():
        out["stage_timings"] = json.loads(timings.read_text())
    return out


def _total(stages: dict, n_images: int) -> dict:
    """The whole pipeline's figures from its stages': summed wall and overhead, the largest peak RSS."""
    st = stages.values()
    wall = sum(s["wall_s"] for s in st)
    overhead = sum(s["overhead_s"] for s in st)
    return {"wall_s": round(wall, 2), "s_per_image": round(wall / n_images, 5), "overhead_s": round(overhead, 2),
            "overhead_frac": round(overhead / wall, 4), "flow_rss_peak_mb": max(s["flow_rss_peak_mb"] for s in st),
            "ru_maxrss_mb": max(s["ru_maxrss_mb"] for s in st)}


def _merged(before: dict | None, run: dict) -> dict:
    """A size's result after ``run``: with ``--stages`` a subset (later stages re-run on the earlier ones' outputs),
    the stages it ran replace those of the size's earlier result (``stages_run`` lists when each was measured)."""
    if (before is None or set(run["stages_run"]) == set(STAGES)
            or [before.get(k) for k in ("n_images", "image_size")] != [run[k] for k in ("n_images", "image_size")]):
        return run
    stages = {**before["stages"], **run["stages"]}
    return {**run, "stages": {s: stages[s] for s in STAGES if s in stages},
            "stages_run": [*before.get("stages_run", []), *run["stages_run"]],
            "total": _total(stages, run["n_images"])}


def _ratio(results: dict, small: int, large: int) -> dict:
    a, b = results[str(small)], results[str(large)]
    return {"sizes": [small, large],
            "flow_rss_growth": round(b["total"]["flow_rss_peak_mb"] / a["total"]["flow_rss_peak_mb"], 3),
            "flow_rss_growth_per_stage": {s: round(b["stages"][s]["flow_rss_peak_mb"] /
                                                   a["stages"][s]["flow_rss_peak_mb"], 3)
                                          for s in STAGES if s in a["stages"] and s in b["stages"]},
            "overhead_frac_large": b["total"]["overhead_frac"]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sizes", nargs="*", type=int, default=[1000, 5000, 20000])
    parser.add_argument("--one", type=int, help="run one size in this process (used by the parent run)")
    parser.add_argument("--stage", choices=STAGES, help="run one stage in this process (used by --one)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/xai-audit-scale"),
                        help="scratch folder; size N runs in <work>/n<N>")
    parser.add_argument("--explain-runner", choices=["threads", "dask"], default="threads")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--image-size", type=lambda v: tuple(int(x) for x in v.split("x")), metavar="WxH",
                        help="the synthetic images' width x height (default: params.yaml's); smaller images make "
                             "the pixel work cheaper, not the rows, tasks or files the benchmark is about")
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES),
                        help="run only these stages, on the earlier ones' outputs in the work folder; their "
                             "figures replace those of the size's earlier result")
    args = parser.parse_args(argv)
    if args.stage:
        print("STAGE " + json.dumps(run_stage(args.stage, args.work)), flush=True)
        return
    if args.one:
        print("RESULT " + json.dumps(run_one(args.one, args.work, args.explain_runner, tuple(args.stages),
                                             args.image_size)), flush=True)
        return
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    results.setdefault("sizes", {})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(HERE), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for n in args.sizes:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--one", str(n), "--work", str(args.work / f"n{n}"),
               "--explain-runner", args.explain_runner, "--stages", *args.stages,
               *(["--image-size", "x".join(map(str, args.image_size))] if args.image_size else [])]
        log = args.work / f"n{n}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        print("$", " ".join(cmd), f"2> {log}", flush=True)
        lines = []
        with open(log, "w") as err, subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=err,
                                                      text=True) as proc:
            for line in proc.stdout:                  # the stage lines as they come, the result at the end
                if line.split(" ", 1)[0] in STAGES:
                    print(f"  n={n}", line.rstrip(), flush=True)
                elif line.startswith("RESULT "):
                    lines.append(line)
        if proc.returncode or not lines:
            sys.stderr.write(log.read_text()[-5000:])
            raise SystemExit(f"size {n} failed (exit {proc.returncode}); log: {log}")
        one = json.loads(lines[-1][len("RESULT "):])
        results["sizes"][str(n)] = _merged(results["sizes"].get(str(n)), one)
        print(json.dumps({"n_images": n, **one["total"]}), flush=True)
        sizes = sorted(int(k) for k in results["sizes"])
        if len(sizes) > 1:
            results["growth"] = _ratio(results["sizes"], sizes[0], sizes[-1])
        results["settings"] = {"detector": "bench_scale:cheap_detector (callable, 6 fixed boxes)",
                               "jobs": ["occlusion@parts (persons)"], "pose": None, "classifier": None,
                               "explain_runner": args.explain_runner, "cpus": os.cpu_count()}
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    print(json.dumps(results.get("growth", {}), indent=2))


if __name__ == "__main__":
    if str(HERE) not in sys.path:                 # the callable entrypoint 'bench_scale:cheap_detector'
        sys.path.insert(0, str(HERE))
    main()
