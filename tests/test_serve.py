"""`xai-audit serve`: a schedule fires against a real Prefect server (started by the command) and the scheduled
audit run produces its results."""
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, tiny_params

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_scheduled_run_fires_and_writes_the_report(explained, tmp_path):
    project, _ = explained                      # explain and evaluate done (the session's one run, copied)
    params = tiny_params(project)
    report = project / "report" / "audit.html"
    assert not report.exists()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update({"PREFECT_HOME": str(tmp_path / "prefect-home"), "PATH": VENV_BIN + os.pathsep + env["PATH"],
                "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2"})
    log = open(tmp_path / "serve.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "flows.cli", "--params", str(params), "serve", "--interval", "5",
                             "--stage", "report", "--port", str(free_port()), "--name", "test-audit"],
                            cwd=project, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while not report.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(2)
        output = Path(tmp_path / "serve.log").read_text()
        assert report.exists(), f"no scheduled run produced the report:\n{output[-3000:]}"
        assert "<h1>xai-audit" in report.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
    assert proc.returncode == 0                 # SIGTERM stops the runner and the server it started, cleanly
