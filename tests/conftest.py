"""Shared fixtures. Tests make all their data themselves; nothing is downloaded."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

import flows  # noqa: F401  (offline / no-telemetry defaults before Prefect is imported)

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect API (own SQLite DB) for every test that runs a flow."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


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
