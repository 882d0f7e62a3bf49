"""Closed-form games for the Shapley estimators: ten players, an additive game and a multilinear one with pairwise
terms and a three-way AND, whose Shapley values are known exactly (``CLOSED_FORM``)."""
import numpy as np
import torch

M = 10
RNG = np.random.default_rng(0)
A = torch.tensor(RNG.normal(size=M))
B = torch.triu(torch.tensor(RNG.normal(size=(M, M))) * 0.5, 1)


def additive(z):
    return (z.double() @ A)[:, None]


def interacting(z):
    """Pairwise terms plus a three-way AND: multilinear, with Shapley values in closed form."""
    z = z.double()
    return (z @ A + ((z @ B) * z).sum(1) + 2 * z[:, 0] * z[:, 1] * z[:, 2])[:, None]


CLOSED_FORM = A + 0.5 * (B + B.T).sum(1)
CLOSED_FORM[:3] += 2 / 3
