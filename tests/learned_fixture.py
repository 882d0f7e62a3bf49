"""Trained files for the tests that iterate over every method (tests/test_capabilities.py, tests/test_methods.py,
tests/test_explainers_awkward.py): each learned explainer (``needs_trained_weights``) gets what its
``trained_file_option`` names -- RExL the tiny trained policy of tests/rexl_fixture.py, FastSHAP
(``explainers.fastshap``) a small untrained network for as many players as the test's regions, with a stated
held-out check -- tied to the fingerprint the test's scorer is given (:func:`with_fingerprint`). An untrained network
keeps the contract (efficiency, dummies, shapes, budgets, the guard), which is what these tests check; whether a
trained one learns its game is tests/test_fastshap.py's."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from explainers.fastshap import FastShapCheckpoint, FastShapNet
from explainers.fastshap_grid import FastShapGridCheckpoint, FastShapGridNet
from explainers.fastshap_grid_detector import FastShapGridDetectorCheckpoint, FastShapGridDetectorNet
from explainers.perturb import Perturbation, make_perturbation
from explainers.registry import METHODS
from tests.rexl_fixture import SHA, tiny_policy, with_fingerprint

# Every method the method-wide tests run on their hand-built models: all but those reading a model's internal feature
# maps (``needs_feature_maps``: a PyTorch YOLO's detection head, which no hand-built model has), whose contract is
# tested on the demo detector instead (tests/test_fastshap_grid_detector.py)
TOY_MODEL_METHODS = [name for name in sorted(METHODS) if not METHODS[name].needs_feature_maps]

HELDOUT = {"persons": 2, "median_rel_l2": 0.5, "p90_rel_l2": 0.9, "top_part_agreement": 0.5,
           "uniform_split_median_rel_l2": 0.8}


@functools.lru_cache(maxsize=16)
def tiny_fastshap(players: int, perturbation: str = "constant", sha: str = SHA) -> FastShapCheckpoint:
    """A FastShapParts weights file (seeded random network, width 4) for ``players`` players named ``p0`` ...,
    perturbation ``perturbation`` (a ``describe()`` or a registered name), scorers whose fingerprint is ``sha``.
    Callers must not mutate it (shared)."""
    torch.manual_seed(0)
    net = FastShapNet(players, width=4, hidden=8)
    described = perturbation if "(" in perturbation else make_perturbation(perturbation).describe()
    return FastShapCheckpoint(sha, "test", tuple(f"p{i}" for i in range(players)), described, net.state_dict(),
                              crop_size=(16, 8), width=4, hidden=8, training={"fixture": "tests/learned_fixture.py"},
                              heldout=dict(HELDOUT))


def fastshap_file(folder: Path, players: int, perturbation: str = "constant", sha: str = SHA) -> Path:
    """:func:`tiny_fastshap` saved to ``folder``."""
    return tiny_fastshap(players, perturbation, sha).save(Path(folder) / f"fastshap_{players}_{sha[:12]}.pt")


GRID_HELDOUT = {"scenes": 2, "targets": 4, "deletion_auc_median": 0.3, "insertion_auc_median": 0.9,
                "rise_deletion_auc_median": 0.35, "rise_insertion_auc_median": 0.9, "rise_budget": 250,
                "coalition_r2": 0.5, "shapley_median_rel_l2": 0.8, "shapley_budget": 4000}


@functools.lru_cache(maxsize=32)
def tiny_fastshap_grid(classes: int, image_size: tuple[int, int], perturbation: str = "constant",
                       sha: str = SHA) -> FastShapGridCheckpoint:
    """A FastShapGrid weights file (seeded random network, width 4, a 2 x 2 grid) for ``classes`` classes of images
    ``image_size`` (H, W), perturbation ``perturbation``, scorers whose fingerprint is ``sha``. Shared: not to be
    mutated."""
    torch.manual_seed(0)
    net = FastShapGridNet(classes, (2, 2), width=4, hidden=8, cell=(4, 4))
    described = perturbation if "(" in perturbation else make_perturbation(perturbation).describe()
    return FastShapGridCheckpoint(sha, classes, tuple(image_size), (2, 2), described, net.state_dict(),
                                  net_size=(8, 8), width=4, hidden=8,
                                  training={"fixture": "tests/learned_fixture.py"}, heldout=dict(GRID_HELDOUT))


DETECTOR_GRID_HELDOUT = {"pedestrians": 3, "deletion_auc_median": 0.03, "drise_deletion_auc_median": 0.027,
                         "insertion_auc_median": 0.58, "drise_insertion_auc_median": 0.59, "drise_budget": 1000,
                         "coalition_r2": 0.8}


def tiny_fastshap_grid_detector(channels: int = 6, grid: int = 2, layers: tuple[int, ...] = (0,),
                                perturbation: str = "constant", sha: str = SHA) -> FastShapGridDetectorCheckpoint:
    """A FastShapGridDetector weights file (seeded random network, width 4) reading ``channels`` state channels of
    the head maps ``layers`` on a ``grid`` x ``grid`` grid, for detectors whose fingerprint is ``sha``: a file to
    check alone (a detector whose head gives other channels is refused by the explainer's guard)."""
    torch.manual_seed(0)
    net = FastShapGridDetectorNet(channels, grid, width=4)
    described = perturbation if "(" in perturbation else make_perturbation(perturbation).describe()
    return FastShapGridDetectorCheckpoint(sha, grid, tuple(layers), channels, described, net.state_dict(), width=4,
                                          training={"fixture": "tests/learned_fixture.py"},
                                          heldout=dict(DETECTOR_GRID_HELDOUT))


def learned_kwargs(cls, scorer, players: int | None = None,
                   perturbation: str | Perturbation = "constant", image_size: tuple[int, int] | None = None) -> dict:
    """The trained-file keyword of ``cls`` ({} for a method that is not learned); gives ``scorer`` the fingerprint
    the file is for. ``players``: the test's region count (FastSHAP's network has one output per player);
    ``image_size``: the test's image (H, W) (FastShapGrid's network plays at one size; a scorer without
    ``targets`` is given all its targets as its classes)."""
    if not cls.needs_trained_weights:
        return {}
    with_fingerprint(scorer)
    name = perturbation.describe() if isinstance(perturbation, Perturbation) else perturbation
    if cls.trained_file_option == "policy":
        return {"policy": tiny_policy(name if isinstance(perturbation, str) else "constant")}
    if cls.needs_classes:
        if image_size is None:
            raise ValueError(f"{cls.name} plays at one image size: give the test's image_size")
        if getattr(scorer, "targets", None) is None:
            scorer.targets = list(range(int(scorer.num_targets)))
        classes = max(1, int(scorer.num_targets))
        return {"weights": tiny_fastshap_grid(classes, tuple(int(s) for s in image_size), name)}
    if players is None:
        raise ValueError(f"{cls.name} plays a fixed number of players: give the test's region count")
    return {"weights": tiny_fastshap(players, name)}
