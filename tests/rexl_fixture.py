"""A tiny trained RExL policy for tests that iterate over every method (tests/test_capabilities.py,
tests/test_explainers_awkward.py) and for the pipeline tests of tests/test_rexl_stage.py: a 2 x 2 grid, a cheap
fixed-CNN state, a few hundred MaskablePPO steps (tasks.rexl_train.train_policy, as the stage trains) on a toy scorer
that only sees the left half of the image. Trained once per process (a few seconds) and kept in memory."""
from __future__ import annotations

import functools
from pathlib import Path

import torch

from explainers.rexl import PolicyCheckpoint

GRID = 2
SHA = "tiny-rexl-test-scorer"          # the weights fingerprint the policy is trained for (weights_sha256)
FEATURES = {"kind": "fixed", "size": 16, "width": 4, "pool": 1}


class LeftHalf:
    """Score = mean brightness of the image's left half (one target); ``weights_sha256``: what the guard checks."""

    device = torch.device("cpu")
    chunk_size = 64
    num_targets = 1
    weights_sha256 = SHA

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :, :, : images.shape[-1] // 2].mean((1, 2, 3))[:, None]


@functools.lru_cache(maxsize=4)
def tiny_policy(perturbation: str = "constant", sha: str = SHA) -> PolicyCheckpoint:
    """The trained checkpoint (deletion, ``perturbation``'s substrate, no conditioning) for scorers whose
    ``weights_sha256`` is ``sha``. Callers must not mutate it (shared)."""
    from tasks.rexl_env import Episode
    from tasks.rexl_train import train_policy

    g = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 12, 12, generator=g) for _ in range(4)]
    scorer = LeftHalf()
    scorer.weights_sha256 = sha
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ckpt, _ = train_policy(scorer, [Episode(x, 0, torch.zeros(0)) for x in images], grid=GRID,
                               perturbation=perturbation, features=dict(FEATURES), steps=64, n_envs=4, seed=0,
                               hidden=(16,), batch_size=16, training={"fixture": "tests/rexl_fixture.py"})
    finally:
        torch.set_num_threads(threads)
    return ckpt


def policy_file(folder: Path, perturbation: str = "constant", sha: str = SHA) -> Path:
    """:func:`tiny_policy` saved to ``folder/tiny_<perturbation>.pt``."""
    return tiny_policy(perturbation, sha).save(Path(folder) / f"tiny_{perturbation}_{sha[:12]}.pt")


def with_fingerprint(scorer, sha: str = SHA):
    """``scorer`` with ``weights_sha256`` = ``sha`` (what the policy's guard compares), returned for chaining."""
    scorer.weights_sha256 = sha
    return scorer
