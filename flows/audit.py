"""The whole audit as one Prefect flow: the stage flows ``dvc repro`` runs, chained as subflows, with a progress
bar over the stages. ``serve`` runs it on a schedule against a Prefect server (started here when none is set)."""
from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

from prefect import flow, get_run_logger

STAGES = ("pull", "models", "rexl", "fastshap", "infer", "parts", "explain", "evaluate", "guide", "report")


def _run_stage(name: str, params_file: str) -> dict:
    if name == "pull":
        from flows.pull import run_pull
        return run_pull(params_file)
    if name == "models":
        from flows.keypoints import run_keypoints
        from flows.models import MODELS, run_models, run_train_data
        return {"train_data": run_train_data(params_file), "models": run_models(params_file, tuple(MODELS)),
                "keypoints": run_keypoints(params_file)}
    if name == "rexl":
        from flows.rexl import run_rexl
        return run_rexl(params_file)
    if name == "fastshap":
        from flows.fastshap import run_fastshap
        return run_fastshap(params_file)
    if name == "infer":
        from flows.infer import run_infer
        return run_infer(params_file)
    if name == "parts":
        from flows.parts import run_parts
        return run_parts(params_file)
    if name == "explain":
        from flows.explain import run_explain
        return run_explain(params_file)
    if name == "evaluate":
        from flows.evaluate import run_evaluate
        return run_evaluate(params_file)
    if name == "guide":
        from flows.guide import run_guide
        return run_guide(params_file)
    from flows.report import run_report
    return run_report(params_file)


@flow(name="audit", log_prints=True)
def audit_flow(params_file: str = "params.yaml", stages: list[str] | None = None) -> dict:
    """Run the pipeline's stages in order (all by default) as subflows; returns each stage's result."""
    from rich.progress import Progress

    from tasks.explain_jobs import check_jobs
    from tasks.params import ParamsError, load_params

    logger = get_run_logger()
    # fail early, naming the key / job option at fault (files the models stages rewrite are checked by explain)
    check_jobs(load_params(params_file), params_file, before_stages=True)
    chosen = list(stages or STAGES)
    unknown = [s for s in chosen if s not in STAGES]
    if unknown:
        raise ParamsError(f"unknown stage(s) {unknown}; stages are {list(STAGES)}")
    results = {}
    with Progress(disable=not sys.stderr.isatty()) as bar:
        task = bar.add_task("audit", total=len(chosen))
        for name in [s for s in STAGES if s in chosen]:
            bar.update(task, description=f"audit: {name}")
            started = time.perf_counter()
            results[name] = _run_stage(name, params_file)
            logger.info("audit: %s done in %.1f s", name, time.perf_counter() - started)
            bar.advance(task)
    return results


# ---------------------------------------------------------------------------------------------------- serve
def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def start_server(port: int = 4200, timeout: float = 180.0) -> subprocess.Popen:
    """``prefect server start`` (SQLite under PREFECT_HOME) in a child process; returns once its API answers."""
    api = f"http://127.0.0.1:{port}/api"
    proc = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                             "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"prefect server start exited with code {proc.returncode}")
        if _healthy(api):
            return proc
        time.sleep(1.0)
    proc.terminate()
    raise RuntimeError(f"the Prefect server on port {port} did not answer within {timeout:.0f} s")


def _stop(proc: subprocess.Popen, timeout: float) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def serve(params_file: str, cron: str | None, interval: float | None, stages: list[str] | None,
          name: str = "xai-audit", port: int = 4200) -> None:
    """Serve the audit flow as a deployment on a schedule (cron or an interval in seconds), one run at a time.
    Schedules only fire against a real server: uses PREFECT_API_URL when set, else starts one (and stops it on
    exit). The Prefect runner lives in a child process so that Ctrl-C / SIGTERM always stop both cleanly."""
    import json
    import signal

    from tasks.explain_jobs import check_jobs
    from tasks.params import load_params

    # a bad params.yaml (a key, an explain job's method or option) fails now, not at the first scheduled run
    check_jobs(load_params(params_file, check_files=False), params_file, before_stages=True)

    def _interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)
    server = None
    env = dict(os.environ)
    if not env.get("PREFECT_API_URL"):
        server = start_server(port)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
    spec = {"params_file": str(Path(params_file).resolve()), "stages": stages, "name": name, "cron": cron,
            "interval": interval}
    runner = subprocess.Popen([sys.executable, "-m", "flows.audit", json.dumps(spec)], env=env)
    try:
        runner.wait()
    except KeyboardInterrupt:
        pass
    finally:
        _stop(runner, 30)
        if server is not None:
            _stop(server, 30)


def _serve_here(spec: dict) -> None:
    """The child process of :func:`serve`: register the deployment and poll for its scheduled runs."""
    audit_flow.serve(name=spec["name"], cron=spec["cron"], interval=spec["interval"], limit=1,
                     parameters={"params_file": spec["params_file"], "stages": spec["stages"]})


if __name__ == "__main__":
    import json

    _serve_here(json.loads(sys.argv[1]))
