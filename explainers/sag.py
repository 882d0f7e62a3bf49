"""Structured attention graphs (Shitole, Li, Kahng, Tadepalli & Fern, "One Explanation is Not Enough: Structured
Attention Graphs for Image Classification", NeurIPS 2021, https://arxiv.org/abs/2011.06733; reference code
viv92/structured-attention-graphs) over any region game: body parts of a pedestrian, grid cells, superpixels.

* **Minimal sufficient explanations** (MSEs): sets of regions whose insertion into the baseline (everything else
  hidden) keeps ≥ ``threshold`` (0.9) of the full image's score. Found by beam search from the empty set: each state
  is expanded by its ``successors`` (15) best unused regions by an importance heuristic (the paper: the I-GOS map;
  here any per-region importance, e.g. BayesShapley values or the iGOS++ mask's mean per region); children that reach
  the threshold become roots after greedy pruning (drop the least important region while the rest stays sufficient,
  until no single region can go); the ``width`` (3) best of the others (score, then importance) form the next beam;
  the search stops after more than ``max_roots`` (10) roots or when no state is left.
* **Diverse roots**: up to ``diverse`` (3) roots, smallest and best first, any two sharing at most ``overlap`` (1)
  region.
* **The graph**: from each diverse root, delete one region at a time while the score stays ≥ ``keep`` (0.4) of the
  full score; an edge per deletion, carrying the score drop.

Every set is scored once (memoised) and every level of the search is one batch through the game
(``game(coalitions [N, M]) -> scores [N, T]``, e.g. :class:`explainers.game.RegionGame`). The result
(:class:`SagResult`) flattens to Parquet rows (:meth:`SagResult.rows`). :func:`exact_minimal_sufficient` gives the
ground truth from a full 2^M coalition table.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from explainers.game import RegionGame
from explainers.perturb import Perturbation, make_perturbation


@dataclass
class SagEdge:
    parent: tuple[int, ...]      # region indices, sorted
    child: tuple[int, ...]
    removed: int
    parent_score: float
    child_score: float

    @property
    def drop(self) -> float:
        return self.parent_score - self.child_score


@dataclass
class SagResult:
    """One target's structured attention graph. Scores are the game's (the scorer's units); ``roots`` are every
    minimal sufficient set found (sorted, with their scores), ``diverse`` the indices of the kept roots,
    ``edges`` the one-region deletions from them down to ``keep`` × full."""

    full_score: float
    empty_score: float
    threshold: float                              # fraction of the full score a sufficient set keeps
    keep: float                                   # fraction of the full score the graph descends to
    roots: list[tuple[tuple[int, ...], float]]
    diverse: list[int]
    edges: list[SagEdge] = field(default_factory=list)
    n_forward: int = 0                            # every game evaluation (search, pruning, graph)
    search_forward: int = 0                       # those of the full / empty scores, the search and the pruning

    def root_sets(self) -> set[frozenset[int]]:
        return {frozenset(r) for r, _ in self.roots}

    def rows(self, names: Sequence[str] | None = None, **keys) -> list[dict]:
        """Flat rows for Parquet: one per root (``kind`` 'root', ``regions`` its names, ``score``, ``diverse``)
        and one per edge (``kind`` 'edge', ``regions`` the parent, ``child`` and ``removed`` names, ``score`` the
        parent's, ``child_score``, ``drop``), each with ``full_score``, ``threshold`` and the given ``keys`` (e.g.
        image_id, target_id, job). Scores as fractions of the full score are ``share`` / ``child_share``."""
        name = (lambda i: str(i)) if names is None else (lambda i: names[i])
        full = self.full_score if self.full_score != 0 else float("nan")
        base = {**keys, "full_score": self.full_score, "threshold": self.threshold, "n_forward": self.n_forward}
        out = [{**base, "kind": "root", "regions": [name(i) for i in r], "size": len(r), "score": s,
                "share": s / full, "diverse": k in self.diverse, "child": None, "removed": None,
                "child_score": None, "child_share": None, "drop": None} for k, (r, s) in enumerate(self.roots)]
        out += [{**base, "kind": "edge", "regions": [name(i) for i in e.parent], "size": len(e.parent),
                 "score": e.parent_score, "share": e.parent_score / full, "diverse": True,
                 "child": [name(i) for i in e.child], "removed": name(e.removed), "child_score": e.child_score,
                 "child_share": e.child_score / full, "drop": e.drop} for e in self.edges]
        return out


class _Memo:
    """Scores of region sets, each evaluated once; a batch of new sets is one game call (counted)."""

    def __init__(self, game: Callable[[torch.Tensor], torch.Tensor], M: int, target: int):
        self.game, self.M, self.target = game, M, target
        self.scores: dict[tuple[int, ...], float] = {}
        self.n_forward = 0

    def __call__(self, sets: list[tuple[int, ...]]) -> list[float]:
        new = list(dict.fromkeys(s for s in sets if s not in self.scores))
        if new:
            z = torch.zeros(len(new), self.M)
            for row, s in enumerate(new):
                z[row, list(s)] = 1.0
            values = self.game(z)[:, self.target].float().cpu().tolist()
            self.n_forward += len(new)
            self.scores.update(zip(new, values))
        return [self.scores[s] for s in sets]


def _prune(root: tuple[int, ...], memo: _Memo, need: float, rank: np.ndarray) -> tuple[int, ...]:
    """Greedy: drop the least important region whose removal keeps the set sufficient, until none can go. Each
    round scores every single removal in one batch."""
    current = root
    while len(current) > 1:
        smaller = [tuple(r for r in current if r != drop) for drop in current]
        scores = memo(smaller)
        ok = [(rank[drop], s) for drop, s, score in zip(current, smaller, scores) if score >= need]
        if not ok:
            break
        current = max(ok)[1]                       # the least important region (highest rank) goes first
    return current


def beam_search(memo: _Memo, M: int, importance: np.ndarray, need: float, *, width: int = 3, successors: int = 15,
                max_roots: int = 10) -> list[tuple[int, ...]]:
    """Minimal sufficient sets (sorted tuples) by the beam search of the module docstring."""
    order = np.argsort(-importance, kind="stable")                 # most important first
    rank = np.empty(M, dtype=np.int64)
    rank[order] = np.arange(M)                                      # 0 = most important
    beam: list[tuple[int, ...]] = [()]
    roots: list[tuple[int, ...]] = []
    while beam and len(roots) <= max_roots:
        children = []
        for state in beam:
            unused = [int(r) for r in order if r not in state][:successors]
            children += [tuple(sorted((*state, r))) for r in unused]
        children = list(dict.fromkeys(children))
        if not children:
            break
        scores = memo(children)
        sufficient = [c for c, s in zip(children, scores) if s >= need]
        for c in sufficient:
            root = _prune(c, memo, need, rank)
            if root not in roots:
                roots.append(root)
        rest = [(s, -sum(importance[list(c)]), c) for c, s in zip(children, scores) if s < need]
        rest.sort(key=lambda t: (-t[0], t[1], t[2]))
        beam = [c for _, _, c in rest[:width]]
    return roots


def diverse_roots(roots: list[tuple[tuple[int, ...], float]], k: int = 3, overlap: int = 1) -> list[int]:
    """Indices of up to ``k`` roots, smallest and highest-scoring first, any two sharing ≤ ``overlap`` regions."""
    order = sorted(range(len(roots)), key=lambda i: (len(roots[i][0]), -roots[i][1], roots[i][0]))
    kept: list[int] = []
    for i in order:
        if all(len(set(roots[i][0]) & set(roots[j][0])) <= overlap for j in kept):
            kept.append(i)
        if len(kept) == k:
            break
    return kept


def deletion_graph(memo: _Memo, roots: list[tuple[int, ...]], floor: float) -> list[SagEdge]:
    """Edges of one-region deletions from ``roots`` while the child's score stays ≥ ``floor``; one batch per level."""
    edges, level, seen = [], list(dict.fromkeys(roots)), set(roots)
    while level:
        pairs = [(p, tuple(r for r in p if r != drop), drop) for p in level if len(p) > 1 for drop in p]
        if not pairs:
            break
        child_scores = memo([c for _, c, _ in pairs])
        parent_scores = memo([p for p, _, _ in pairs])
        nxt = []
        for (p, c, drop), ps, cs in zip(pairs, parent_scores, child_scores):
            if cs >= floor:
                edges.append(SagEdge(p, c, drop, ps, cs))
                if c not in seen:
                    seen.add(c)
                    nxt.append(c)
        level = nxt
    return edges


def structured_attention_graph(game: Callable[[torch.Tensor], torch.Tensor], num_regions: int,
                               importance: Sequence[float] | torch.Tensor, *, target: int = 0,
                               threshold: float = 0.9, keep: float = 0.4, width: int = 3, successors: int = 15,
                               max_roots: int = 10, diverse: int = 3, overlap: int = 1) -> SagResult:
    """The SAG of target ``target`` of ``game`` over ``num_regions`` regions, searched in the order of
    ``importance`` [M] (higher = more important). Spends 2 + (sets scored) game evaluations (``n_forward``; the
    graph's excluded: ``search_forward``). When the empty set already keeps ``threshold`` of the full score, it is
    the one minimal sufficient set (no search).
    Raises ValueError for a threshold / keep outside (0, 1], importance of the wrong length, or a full score ≤ the
    empty score (nothing to keep: every set would be "sufficient")."""
    M = int(num_regions)
    importance = np.asarray(torch.as_tensor(importance, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if importance.shape != (M,):
        raise ValueError(f"sag: importance must have one value per region ({M}), got {importance.shape[0]}")
    if not (0 < threshold <= 1 and 0 < keep <= 1):
        raise ValueError(f"sag: threshold and keep must lie in (0, 1], got {threshold}, {keep}")
    memo = _Memo(game, M, target)
    full, empty = memo([tuple(range(M)), ()])
    if not full > empty:
        raise ValueError(f"sag: the full score {full:.4g} is not above the empty score {empty:.4g}: no region "
                         f"set can be told from none")
    if empty >= threshold * full:              # nothing needs showing: the empty set is the one minimal set
        roots = [()]
    else:
        roots = beam_search(memo, M, importance, threshold * full, width=width, successors=successors,
                            max_roots=max_roots)
    search_forward = memo.n_forward
    scored = [(r, s) for r, s in zip(roots, memo(roots))]
    kept = diverse_roots(scored, diverse, overlap)
    edges = deletion_graph(memo, [scored[i][0] for i in kept], keep * full)
    return SagResult(full, empty, threshold, keep, scored, kept, edges, memo.n_forward, search_forward)


def image_sag(scorer, image: torch.Tensor, regions: torch.Tensor, importance: Sequence[float] | torch.Tensor, *,
              target: int = 0, perturbation: str | Perturbation = "blur", chunk_size: int | None = None,
              **options) -> SagResult:
    """:func:`structured_attention_graph` of ``scorer`` (a :class:`~explainers.base.Scorer`) on ``image`` [3, H, W]
    over ``regions`` [R, H, W] (masks, each with a pixel), hidden regions replaced by ``perturbation``'s baseline
    (pixels outside every region always shown), batched through :class:`~explainers.game.RegionGame` in chunks of
    ``chunk_size`` (default: the scorer's). Raises ValueError for an empty region (it would be a phantom player)."""
    masks = torch.as_tensor(regions).to(image.device).float()
    if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(image.shape[-2:]):
        raise ValueError(f"image_sag: regions must be [R, H, W] masks of the image {tuple(image.shape[-2:])}, got "
                         f"{tuple(masks.shape)}")
    empty = (masks.flatten(1).amax(1) <= 0).nonzero()[:, 0].tolist()
    if empty:
        raise ValueError(f"image_sag: regions {empty} have no pixel")
    chunk = int(chunk_size or getattr(scorer, "chunk_size", 32))
    game = RegionGame(scorer, image, masks, make_perturbation(perturbation), chunk)
    with torch.inference_mode():
        return structured_attention_graph(game, masks.shape[0], importance, target=target, **options)


def exact_minimal_sufficient(values: torch.Tensor | np.ndarray, threshold: float = 0.9) -> set[frozenset[int]]:
    """Every minimal sufficient set of a game given as its full table ``values`` [2^M] (index = bitmask of the
    shown regions, bit i = region i): sets with v(S) ≥ threshold · v(all) none of whose proper subsets is
    sufficient. Vectorised over the table, M passes."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    M = int(round(np.log2(v.size)))
    if 2 ** M != v.size:
        raise ValueError(f"exact_minimal_sufficient: the table must have 2^M entries, got {v.size}")
    sufficient = v >= threshold * v[-1]
    idx = np.arange(v.size)
    some = sufficient.copy()                       # some subset of S (S included) is sufficient: sum over subsets
    for i in range(M):
        has = np.nonzero((idx >> i) & 1)[0]
        some[has] |= some[has ^ (1 << i)]
    below = np.zeros_like(sufficient)              # some proper subset is sufficient
    for i in range(M):
        has = np.nonzero((idx >> i) & 1)[0]
        below[has] |= some[has ^ (1 << i)]
    minimal = np.nonzero(sufficient & ~below)[0]
    return {frozenset(i for i in range(M) if (m >> i) & 1) for m in minimal}


__all__ = ["SagEdge", "SagResult", "beam_search", "deletion_graph", "diverse_roots", "exact_minimal_sufficient",
           "image_sag", "structured_attention_graph"]
