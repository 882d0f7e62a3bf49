"""Prefect flows, one per pipeline stage, and the ``xai-audit`` CLI.

Importing this package sets offline, no-telemetry defaults before Prefect or ultralytics are imported; a value
already in the environment wins (e.g. ``PREFECT_API_URL`` to run against a server instead of ephemerally).
"""
import os

for _key, _value in {
    "DO_NOT_TRACK": "1",                                   # Prefect client telemetry off
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",           # Prefect server telemetry off
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",  # slow CI machines start the ephemeral API slowly
    "DVC_NO_ANALYTICS": "1",                               # DVC telemetry off
    "YOLO_OFFLINE": "1",                                   # ultralytics: never download
    "YOLO_AUTOINSTALL": "0",
}.items():
    os.environ.setdefault(_key, _value)
