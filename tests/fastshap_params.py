"""Params for the models_fastshap stage's grid-network tests (tests/test_fastshap_grid_stage.py,
tests/test_fastshap_grid_detector_stage.py): the demo detector (and classifier, where given), every stage path under
a test's folder, one network section of ``fastshap``."""
from __future__ import annotations

from pathlib import Path

from tasks.params import Params, parse_params
from tests.conftest import REPO

DEMO = REPO / "weights/demo"


def grid_stage_params(root: Path, section: str, weights, detector=DEMO / "detector.pt", classifier=None, jobs=(),
                      **net) -> Params:
    """Params whose ``fastshap.<section>`` is ``net`` with ``weights`` (a file, or None: train), the demo detector
    (``detector``: its weights file) and ``classifier`` (a saved classifier's weights file, or None: none)."""
    infer = {"detectors": [{"id": "demo-yolo", "kind": "yolo", "weights": str(detector), "imgsz": 320,
                            "conf": 0.25, "iou": 0.5}], "pose": None,
             "classifier": None if classifier is None else {"id": "demo-scene", "kind": "saved",
                                                            "weights": str(classifier)}}
    spec = {**net, "weights": None if weights is None else str(weights)}
    return parse_params({"infer": infer, "explain": {"jobs": list(jobs), "cache_dir": str(root / "store")},
                         "fastshap": {"out_dir": str(root / "models/fastshap"),
                                      "metrics": str(root / "metrics/fastshap.json"),
                                      "cache_dir": str(root / "cache"), section: spec}}, check_files=False)
