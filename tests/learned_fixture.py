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
from explainers.perturb import Perturbation, make_perturbation
from tests.rexl_fixture import SHA, tiny_policy, with_fingerprint

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


def learned_kwargs(cls, scorer, players: int | None = None,
                   perturbation: str | Perturbation = "constant") -> dict:
    """The trained-file keyword of ``cls`` ({} for a method that is not learned); gives ``scorer`` the fingerprint
    the file is for. ``players``: the test's region count (FastSHAP's network has one output per player)."""
    if not cls.needs_trained_weights:
        return {}
    with_fingerprint(scorer)
    name = perturbation.describe() if isinstance(perturbation, Perturbation) else perturbation
    if cls.trained_file_option == "policy":
        return {"policy": tiny_policy(name if isinstance(perturbation, str) else "constant")}
    if players is None:
        raise ValueError(f"{cls.name} plays a fixed number of players: give the test's region count")
    return {"weights": tiny_fastshap(players, name)}
