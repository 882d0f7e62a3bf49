"""The prepared GPU check (issue 23, part 5): on whatever machine it runs, build a small project from the shipped demo
weights (``weights/demo``, no training), run the explain stage with threads and with the Dask runner (one worker per
GPU), check each scorer's float16 autocast against float32, and measure raw forward vs scorer throughput,
explanations per second and each method's net overhead. ``benchmarks/gpu_check.sh`` installs and calls it.

Without CUDA (or with ``--small``) it runs in *CPU-small* mode: 4 images, tiny budgets, one Dask worker; the output
and the JSON say so (``mode``), and the numbers are then no GPU numbers. ``tests/test_gpu_check.py`` runs it so.

What is measured, and how:

- ``amp``: per scorer (``DRiseScorer`` on the demo detector, ``ClassifierScorer`` on the demo classifier, as the
  explain stage builds them): the scorer's own one-chunk check (``amp_kept``: float16 kept, i.e. its first chunk moved
  by <= ``tolerance``), and the largest |float16 - float32| score difference over *every* chunk of a batch of
  RISE-masked images (``max_drift``, ``within_tolerance``). CPU: not applicable (the adapters autocast on CUDA only).
- ``throughput``: images / s of the network alone on pre-processed input (``raw``: letterboxed for the detector,
  resized and normalised for the classifier) and of the scorer on [0, 1] images (``scorer``: pre-processing,
  decoding, D-RISE similarity included), per batch size; CUDA synchronised, after warm-up, median of repeats; in a
  worker thread, as the explain tasks run.
- ``runs``: the explain stage's wall time, cold (no stored output, no result store), with ``threads`` (one thread:
  per-job seconds are not contended) and ``dask`` (a LocalCluster, one single-threaded worker per GPU; CPU: one
  worker); ``rows_identical`` compares their rows sorted by (job, image, target); float16, non-deterministic kernels
  and thread-dependent CPU kernels may make them differ by a little, so the largest differences of saliency and
  relevance are given too, per job (``by_job``).
- ``methods``: per explain job from the threads run: explanations, explainer seconds (the shards' timings),
  forwards (shared forwards divided among the targets sharing them), explanations / s, and ``net_overhead`` =
  1 - forwards / (scorer images per s) / explainer seconds: the share of the method's time not spent in scorer
  forwards at the scorer's measured speed (gradient methods also run backward passes, so theirs includes those).

    python benchmarks/gpu_check.py [--small] [--out PATH] [--scratch .work/gpu_check] [--project DIR] [--split val]

Writes JSON to ``--out``, else ``$OUT/gpu_check.json`` when ``$OUT`` is set, else
``benchmarks/results/gpu_check.json``; prints a summary. Raises SystemExit naming the step that failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "weights/demo"

# Sizes per mode. budget: forwards per explanation of the budgeted methods; batches: throughput batch sizes.
SIZES = {
    "gpu": {"n_images": 48, "budget": 256, "shapley_budget": 48, "ig_steps": 32, "chunk_size": 64, "shard_size": 8,
            "batches": [16, 64, 256], "repeats": 20, "amp_images": 256},
    "cpu-small": {"n_images": 4, "budget": 16, "shapley_budget": 8, "ig_steps": 4, "chunk_size": 16, "shard_size": 4,
                  "batches": [16], "repeats": 3, "amp_images": 16},
}


def jobs(s: dict, split: str | None = None) -> list[dict]:
    """The explain jobs measured: body-part games and pixel methods on the detector, RISE on the classifier, one
    gradient method; ``split``: every job on that split's images only."""
    return [{**job, "split": split} for job in _jobs(s)] if split else _jobs(s)


def _jobs(s: dict) -> list[dict]:
    return [{"method": "bayes_shapley", "targets": "persons", "regions": "parts", "budget": s["shapley_budget"]},
            {"method": "kernel_shap", "targets": "persons", "regions": "parts", "budget": s["shapley_budget"]},
            {"method": "occlusion", "targets": "persons", "regions": "parts"},
            {"method": "drise", "targets": "persons", "regions": "none", "budget": s["budget"],
             "options": {"grid": 8, "center": True}},
            {"method": "integrated_gradients", "targets": "persons", "regions": "none",
             "options": {"steps": s["ig_steps"]}},
            {"method": "rise", "targets": "classes", "regions": "none", "budget": s["budget"],
             "options": {"center": True}}]


def environment() -> dict:
    cuda = torch.cuda.is_available()
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cuda_available": cuda, "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
            if cuda else [], "cpu_count": os.cpu_count(), "host": platform.node()}


def write_params(root: Path, s: dict, runner: dict, built: bool = False, split: str | None = None) -> Path:
    """params.yaml of the scratch project: the repository's params with the demo weights by absolute path, a small
    synthetic dataset and the measured jobs; ``built``: keep the project's own params.yaml, set only its explain
    jobs, sizes and runner. ``split``: the jobs explain that split's images only."""
    path = root / "params.yaml"
    if built:
        params = yaml.safe_load(path.read_text())
    else:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        for name in ("pose", "detector", "classifier", "keypoints"):
            params["models"][name]["weights"] = str(DEMO / f"{name}.pt")
        for name in ("pose", "detector"):
            params["models"][name]["arch"] = str(REPO / params["models"][name]["arch"])
        params["pull"]["synthetic"]["n_images"] = s["n_images"]
    params.setdefault("explain", {}).update(jobs=jobs(s, split), chunk_size=s["chunk_size"], shard_size=s["shard_size"],
                                            runner=runner)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def build_project(root: Path, s: dict) -> Path:
    """pull -> models (copies of the shipped weights) -> keypoints -> infer -> parts in ``root`` (the working
    directory)."""
    from flows.infer import run_infer
    from flows.keypoints import run_keypoints
    from flows.models import run_models
    from flows.parts import run_parts
    from flows.pull import run_pull

    params = write_params(root, s, {"kind": "threads", "workers": 1})
    for step in (run_pull, run_models, run_keypoints, run_infer, run_parts):
        step(params)
    return params


# ---------------------------------------------------------------------------------------------------- scorers
def _scorers(params, device: str):
    """(name, scorer, model, images [N, 3, H, W] on device) for the detector and the classifier, built as the explain
    stage builds them, on the project's first images, with targets = the images' GT persons / the classes."""
    from tasks import stages
    from tasks.model_cache import classifier_model, classifier_scorer, detection_scorer, load_image

    images = stages.pull(params).read("images").to_pylist()[:4]
    batch = torch.stack([load_image(r, "gpu_check", device, []) for r in images])
    annotations = stages.pull(params).read("annotations").to_pylist()
    persons = [a for a in annotations if a["category"] == "person" and not a["iscrowd"]][:8]
    if not persons:
        raise SystemExit("gpu_check: the small project has no person to explain (raise n_images)")
    det = detection_scorer(params, device, [{"bbox": a["bbox"]} for a in persons])
    clf_model = classifier_model(params.infer.classifier.model_dump_json(), device, params.explain.chunk_size)
    clf = classifier_scorer(params, device, [{"category": c} for c in clf_model.class_names])
    return [("detector", det, det.model, batch), ("classifier", clf, clf.model, batch)]


def _masked(images: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` RISE-style perturbations of ``images`` (bilinear upsampled 8x8 keep-masks, p = 0.5), cycled."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    H, W = images.shape[-2:]
    masks = (torch.rand(n, 1, 8, 8, generator=g) < 0.5).float().to(images.device)
    masks = torch.nn.functional.interpolate(masks, size=(H, W), mode="bilinear", align_corners=False)
    return images[torch.arange(n, device=images.device) % len(images)] * masks


def amp_check(scorers, s: dict, cuda: bool) -> dict:
    """Per scorer: its own float16 check (kept or fallen back) and the largest drift over every chunk of
    ``amp_images`` perturbed images, against its tolerance."""
    out = {}
    for name, scorer, model, images in scorers:
        if not cuda:
            out[name] = {"applicable": False, "reason": "no CUDA: the adapters autocast to float16 on CUDA only",
                         "tolerance": scorer.amp_tolerance}
            continue
        x = _masked(images, s["amp_images"])
        scorer(x[:scorer.chunk_size])                      # the scorer's own one-chunk check
        kept = bool(model.amp)
        model.amp = True
        half = scorer(x)
        model.amp = False
        full = scorer(x)
        model.amp = kept
        drift = float((half - full).abs().max())
        out[name] = {"applicable": True, "amp_kept": kept, "tolerance": scorer.amp_tolerance,
                     "max_drift": drift, "within_tolerance": drift <= scorer.amp_tolerance, "images": len(x)}
    return out


def _rate(fn, n_images: int, repeats: int, cuda: bool) -> float:
    """Images per second of ``fn()`` (median of ``repeats`` timed calls after two warm-ups)."""
    times = []
    for i in range(repeats + 2):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        if i >= 2:
            times.append(time.perf_counter() - t)
    return n_images / statistics.median(times)


def _raw_forward(name: str, model, x: torch.Tensor):
    """The network alone on pre-processed input, in the adapter's precision: a zero-argument callable."""
    from detection.models.letterbox import letterbox

    if name == "detector":
        pre, _ = letterbox(x.float(), model.imgsz, model.stride)
    else:
        pre = model.preprocess(x)

    @torch.inference_mode()
    def forward():
        with torch.autocast(model.device.type, dtype=torch.float16, enabled=bool(model.amp)):
            return model.model(pre)
    return forward


def throughput(scorers, s: dict, cuda: bool) -> dict:
    """Raw network vs scorer images / s per batch size (the scorer's chunk size set to the batch)."""
    out = {}
    for name, scorer, model, images in scorers:
        rows = []
        for b in s["batches"]:
            x = _masked(images, b, seed=1)
            chunk = scorer.chunk_size
            scorer.chunk_size = b
            raw = _rate(_raw_forward(name, model, x), b, s["repeats"], cuda)
            scored = _rate(lambda x=x, scorer=scorer: scorer(x), b, s["repeats"], cuda)
            scorer.chunk_size = chunk
            rows.append({"batch": b, "raw_images_per_s": round(raw, 1), "scorer_images_per_s": round(scored, 1),
                         "scorer_over_raw": round(scored / raw, 3)})
        out[name] = {"amp": bool(model.amp), "batches": rows}
    return out


# ---------------------------------------------------------------------------------------------------- explain
def _sorted_rows(params) -> list[dict]:
    from tasks import stages

    rows = stages.explain(params).read("explanations").to_pylist()
    return sorted(rows, key=lambda r: (r["job"], r["image_id"], r["target_id"]))


def _max_diff(a: list[dict], b: list[dict], column: str) -> float | None:
    """Largest |a - b| over a numeric list column of two row lists with the same keys (None: none to compare)."""
    import numpy as np

    diffs = [float(np.max(np.abs(np.asarray(x[column], float) - np.asarray(y[column], float))))
             for x, y in zip(a, b) if x[column] is not None and y[column] is not None and len(x[column])]
    return max(diffs) if diffs else None


def share_prefect_api() -> str:
    """Export this process's Prefect API URL to the processes it starts (the Dask workers): the configured one, else
    the temporary server this process's flows use (started here if not yet). A worker without PREFECT_API_URL starts
    a temporary server of its own at its first task, which would count in the Dask run's wall time."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if not url:
        from prefect.server.api.server import SubprocessASGIServer

        server = SubprocessASGIServer()            # the process's temporary API (a singleton)
        server.start(timeout=120)
        url = server.api_url
    os.environ["PREFECT_API_URL"] = url
    return url


def cold(root: Path, params) -> None:
    """Remove the explain output and the explain result store (``tasks.result_store``, where this version has one) so
    that a run computes every explanation. Raises SystemExit rather than clear a store outside ``root``."""
    shutil.rmtree(params.explain.out_dir, ignore_errors=True)
    try:
        from tasks.result_store import cache_dir_of
    except ImportError:                        # no result store: the explain output was all there was to reuse
        return
    store = cache_dir_of(params)
    if store is None:
        return
    if not Path(store).resolve().is_relative_to(root.resolve()):
        raise SystemExit(f"gpu_check: explain.cache_dir {store} is outside the project {root}: not clearing it; "
                         "use a project whose result store is its own (or null)")
    shutil.rmtree(Path(store) / "explain", ignore_errors=True)


def explain_runs(root: Path, s: dict, cuda: bool, built: bool, split: str | None) -> tuple[dict, object]:
    """The explain stage with one thread, then with Dask (one worker per GPU; CPU: one); returns the runs' record
    and the threads run's params (its outputs are the per-method source)."""
    from flows.explain import run_explain

    from tasks.params import load_params

    runs, rows = {}, {}
    for kind, runner in (("dask", {"kind": "dask", **({} if cuda else {"workers": 1})}),
                         ("threads", {"kind": "threads", "workers": 1})):
        params_file = write_params(root, s, runner, built, split)
        params = load_params(params_file)
        cold(root, params)                     # the runner is not in any key: without this the second run reuses
        started = time.perf_counter()
        result = run_explain(params_file)
        runs[kind] = {"runner": runner, "wall_seconds": round(time.perf_counter() - started, 2),
                      "shards": result["shards"], "errors": result["errors"],
                      "explanations": int(sum(result["explanations"].values()))}
        rows[kind] = _sorted_rows(params)
    keys = [[(r["job"], r["image_id"], r["target_id"]) for r in rows[k]] for k in ("threads", "dask")]
    same_keys = keys[0] == keys[1]
    runs["rows_identical"] = rows["threads"] == rows["dask"]
    runs["same_keys"] = same_keys
    runs["max_abs_diff"] = {c: _max_diff(rows["threads"], rows["dask"], c) if same_keys else None
                            for c in ("saliency", "relevance")}
    by_job = {}
    for job in sorted({r["job"] for r in rows["threads"]}) if same_keys else []:
        mine = [[r for r in rows[k] if r["job"] == job] for k in ("threads", "dask")]
        by_job[job] = {"identical": mine[0] == mine[1],
                       **{c: _max_diff(*mine, c) for c in ("saliency", "relevance")}}
    runs["by_job"] = by_job
    return runs, params


def per_method(params, scorer_rate: dict[str, float]) -> dict:
    """Per job of the threads run: explanations / s and the net overhead over the scorer's forward time."""
    from tasks import stages
    from tasks.timings import read_shard_timings

    outputs = stages.explain(params)
    table = outputs.read("explanations").to_pylist()
    seconds: dict[str, float] = {}
    for t in read_shard_timings(outputs.out_dir).values():
        for job, sec in t["explainer_seconds"].items():
            seconds[job] = seconds.get(job, 0.0) + sec
    out = {}
    for job in sorted({r["job"] for r in table}):
        mine = [r for r in table if r["job"] == job]
        forwards = sum(r["n_forward"] / r["shared_by"] for r in mine)
        model = "classifier" if mine[0]["kind"] == "classes" else "detector"
        sec = seconds.get(job, 0.0)
        forward_sec = forwards / scorer_rate[model]
        out[job] = {"explanations": len(mine), "explainer_seconds": round(sec, 3), "forwards": round(forwards),
                    "explanations_per_s": round(len(mine) / sec, 2) if sec else None,
                    "scorer": model, "forward_seconds_at_scorer_rate": round(forward_sec, 3),
                    "net_overhead": round(1 - forward_sec / sec, 3) if sec else None,
                    # False: the method ran faster than its forwards at the measured scorer rate allow (the rate
                    # measurement is off, e.g. a loaded machine): its net_overhead means nothing
                    "consistent": bool(sec) and forward_sec <= 1.05 * sec}
    return out


# ---------------------------------------------------------------------------------------------------- main
def output_path(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"]) / "gpu_check.json"
    return REPO / "benchmarks/results/gpu_check.json"


def summary(result: dict) -> str:
    lines = [f"gpu_check: mode {result['mode']} ({result['mode_reason']}); torch {result['environment']['torch']}, "
             f"GPUs {result['environment']['gpus'] or 'none'}"]
    for name, a in result["amp"].items():
        lines.append(f"  amp {name}: " + (f"kept={a['amp_kept']} max drift {a['max_drift']:.2e} (tolerance "
                                           f"{a['tolerance']}, within={a['within_tolerance']})"
                                           if a["applicable"] else f"n/a ({a['reason']})"))
    for name, t in result["throughput"].items():
        for b in t["batches"]:
            lines.append(f"  {name} batch {b['batch']}: raw {b['raw_images_per_s']:.0f} img/s, scorer "
                         f"{b['scorer_images_per_s']:.0f} img/s ({b['scorer_over_raw']:.2f} of raw)")
    runs = result["runs"]
    lines.append(f"  explain: threads {runs['threads']['wall_seconds']} s, dask {runs['dask']['wall_seconds']} s, "
                 f"{runs['threads']['explanations']} explanations; rows identical: {runs['rows_identical']} "
                 f"(max |diff| {runs['max_abs_diff']})")
    for job, m in result["methods"].items():
        lines.append(f"  {job:24s} {m['explanations_per_s']} expl/s, {m['forwards']} forwards, net overhead "
                     f"{m['net_overhead']}" + ("" if m["consistent"] else " (INCONSISTENT: scorer rate too low)"))
    lines.append(f"  total {result['seconds_total']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU-small sizes even with a GPU")
    parser.add_argument("--out", help="JSON path (default: $OUT/gpu_check.json, else benchmarks/results/)")
    parser.add_argument("--scratch", default=str(REPO / ".work/gpu_check"), help="scratch project folder (wiped)")
    parser.add_argument("--project", help="an already built project folder (pull..parts done) to use instead of "
                                          "building one in --scratch (its explain outputs are replaced)")
    parser.add_argument("--split", help="explain only this split's images (e.g. val), to keep a CPU run short")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    env = environment()
    cuda = env["cuda_available"] and not args.small
    mode = "gpu" if cuda else "cpu-small"
    reason = ("CUDA available" if cuda else "--small" if env["cuda_available"] else
              "no CUDA device: CPU-small mode, these are no GPU numbers")
    print(f"gpu_check: {mode} ({reason})", flush=True)
    s = SIZES[mode]
    root = Path(args.project or args.scratch).resolve()
    if not args.project:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
    cwd, api = os.getcwd(), os.environ.get("PREFECT_API_URL")
    os.chdir(root)
    steps = {}
    try:
        t = time.perf_counter()
        params_file = (write_params(root, s, {"kind": "threads", "workers": 1}, built=True) if args.project
                       else build_project(root, s))
        steps["build_project"] = round(time.perf_counter() - t, 2)
        from tasks.params import load_params

        device = "cuda:0" if cuda else "cpu"
        t = time.perf_counter()
        # In a worker thread, as the explain stage's tasks run: on the 2-core VM under load the main thread's
        # OpenMP team made the same CPU forward about 10x slower than a pool thread did.
        with ThreadPoolExecutor(1) as pool:
            scorers = _scorers(load_params(params_file), device)
            amp = pool.submit(amp_check, scorers, s, cuda).result()
            rates = pool.submit(throughput, scorers, s, cuda).result()
        steps["amp_and_throughput"] = round(time.perf_counter() - t, 2)
        share_prefect_api()
        runs, params = explain_runs(root, s, cuda, bool(args.project), args.split)
        at_chunk = {name: min(t["batches"], key=lambda b: abs(b["batch"] - s["chunk_size"]))["scorer_images_per_s"]
                    for name, t in rates.items()}          # the scorer's speed at the explain stage's chunk size
        methods = per_method(params, at_chunk)
    finally:
        os.chdir(cwd)
        if api is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = api
    result = {"mode": mode, "mode_reason": reason, "environment": env, "sizes": s, "split": args.split,
              "steps_seconds": steps,
              "amp": amp, "throughput": rates, "runs": runs, "methods": methods,
              "seconds_total": round(time.perf_counter() - started, 1)}
    out = output_path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result), flush=True)
    print(f"gpu_check: wrote {out}", flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
