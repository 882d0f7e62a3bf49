"""Structured attention graphs (Shitole, Li, Kahng, Tadepalli & Fern, "One Explanation is Not Enough: Structured
Attention Graphs for Image Classification", NeurIPS 2021, https://arxiv.org/abs/2011.06733; reference code
viv92/structured-attention-graphs; reviewed in Li et al., "From Heatmaps to Structural Explanations of Image
Classifiers", 2021, https://arxiv.org/abs/2109.06365) over any region game: body parts of a pedestrian, grid cells,
superpixels.

* **Minimal sufficient explanations** (MSEs): sets of regions whose insertion into the baseline (everything else
  hidden) keeps ≥ ``threshold`` (0.9) of the full image's score. Found by beam search from the empty set: each state
  is expanded by its ``successors`` (15) best unused regions by an importance heuristic (the paper: the I-GOS map;
  here any per-region importance, e.g. BayesShapley values or the iGOS++ mask's mean per region); children that reach
  the threshold become roots after greedy pruning (drop the least important region while the rest stays sufficient,
  until no single region can go); the ``width`` (3) best of the others (score, then importance) form the next beam;
  the search stops after more than ``max_roots`` (10) roots or when no state is left.
* **What it costs** (this module's economy; the paper's search otherwise): a child that is a superset of a set
  already scored sufficient (a root found, a set met in pruning, a coalition the heuristic scored) is taken as
  sufficient without a forward - *monotone inference*, exact on a monotone game (adding regions never lowers the
  score), where the roots are then the paper's search's exactly; on a game that is not monotone such a child could
  have scored below the threshold and entered the beam, so the search can differ there, but every root it returns
  is still scored sufficient with no single removal sufficient. Pruning tries removals least important first and
  takes the first that keeps the set sufficient (the paper's choice), so it pays only for the removals it tries,
  and none for a removal already scored or inferred sufficient. On the body parts of 48 held-out pedestrians (7-11
  players, the D-RISE game) this cut the search from a median 253 forwards beyond the heuristic's (the budget
  binding for most) to 72 (max 180), at the same median set recall, 1.00 (benchmarks/README.md, "Structured
  attention graphs vs exact minimal sets").
* **Diverse roots**: up to ``diverse`` (3) roots, smallest and best first, any two sharing at most ``overlap`` (1)
  region.
* **The graph**: from each diverse root, delete one region at a time while the score stays ≥ ``keep`` (0.4) of the
  full score; an edge per deletion, carrying the score drop.

Every set is scored once (memoised) and every level of the search is one batch through the game
(``game(coalitions [N, M]) -> scores [N, T]``, e.g. :class:`explainers.game.RegionGame`); pruning scores one set
per call. The result (:class:`SagResult`) flattens to Parquet rows (:meth:`SagResult.rows`).
:func:`exact_minimal_sufficient` gives the ground truth from a full 2^M coalition table.

:class:`Sag` (``sag`` in :data:`explainers.registry.METHODS`) is the pipeline's explain job: one call estimates the
importance heuristic (BayesShapley values, :class:`~explainers.bayesian_shapley.BayesShapley`, on
``importance_budget`` of the forwards; every binary coalition it scores is remembered, so the search never pays for
it again), then builds each target's graph with the rest of the budget. Its relevance is those BayesShapley values
(so the explanation row is like any other job's); the graphs ride along in :class:`SagExplanation` and become the
explain stage's ``sag`` table (:meth:`SagResult.rows`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from explainers.base import Explanation, numpy_rng, paint, refuse_non_finite, region_set
from explainers.bayesian_shapley import DEFAULT_DECAY, BayesShapley, bayes_shapley
from explainers.game import RegionGame
from explainers.perturb import Perturbation, make_perturbation
from explainers.shapley import ShapleyEstimate

# SagResult.status: the search and the graph ran to their end; the budget ran out first (the roots found so far are
# minimal and sufficient, but more may exist, and the graph may be partial); the full score is not above the empty
# score, or not positive (e.g. a logit below 0: threshold × full would lie above full, so no set could be
# sufficient) - nothing to keep as a fraction: no search
COMPLETE, BUDGET, FLAT = "complete", "budget", "flat"


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
    status: str = COMPLETE                        # COMPLETE | BUDGET | FLAT (module constants)

    def root_sets(self) -> set[frozenset[int]]:
        return {frozenset(r) for r, _ in self.roots}

    def rows(self, names: Sequence[str] | None = None, *, summary: bool = False, **keys) -> list[dict]:
        """Flat rows for Parquet (the explain stage's ``sag`` table, ``detection.datasets.tables.SAG_SCHEMA``): one
        per root (``element`` 'root', ``parts`` its region names, ``score``, ``diverse``) and one per edge
        (``element`` 'edge', ``parts`` the parent's names, ``child``, ``removed``, ``score`` the parent's,
        ``child_score``, ``drop`` = parent − child score), each with ``full_score``, ``empty_score``, ``threshold``,
        ``keep``, ``status`` and the given ``keys`` (e.g. image_id, target_id, kind, job). Scores as fractions of the
        full score are ``share`` / ``child_share`` / ``drop_share`` (NaN when the full score is 0). ``summary``: a
        first row (``element`` 'target', ``parts`` every region, ``score`` the full score) that exists even when
        there is no root (budget spent, flat score), carrying ``n_forward`` / ``search_forward``. ``names``: region
        index -> name (default: the index as text)."""
        name = (lambda i: str(i)) if names is None else (lambda i: names[i])
        full = self.full_score if self.full_score != 0 else float("nan")
        base = {**keys, "full_score": self.full_score, "empty_score": self.empty_score, "threshold": self.threshold,
                "keep": self.keep, "status": self.status, "n_forward": self.n_forward,
                "search_forward": self.search_forward, "child": None, "removed": None, "child_score": None,
                "child_share": None, "drop": None, "drop_share": None}
        out = []
        if summary:
            M = len(names) if names is not None else 1 + max((i for r, _ in self.roots for i in r), default=-1)
            out.append({**base, "element": "target", "parts": [name(i) for i in range(M)], "size": M,
                        "score": self.full_score, "share": 1.0, "diverse": None})
        out += [{**base, "element": "root", "parts": [name(i) for i in r], "size": len(r), "score": s,
                 "share": s / full, "diverse": k in self.diverse} for k, (r, s) in enumerate(self.roots)]
        out += [{**base, "element": "edge", "parts": [name(i) for i in e.parent], "size": len(e.parent),
                 "score": e.parent_score, "share": e.parent_score / full, "diverse": None,
                 "child": [name(i) for i in e.child], "removed": name(e.removed), "child_score": e.child_score,
                 "child_share": e.child_score / full, "drop": e.drop, "drop_share": e.drop / full}
                for e in self.edges]
        return out

    def relabel(self, columns: Sequence[int]) -> SagResult:
        """The same graph with region i renamed ``columns[i]`` (players -> the caller's region columns)."""
        col = [int(c) for c in columns]

        def sets(r):
            return tuple(sorted(col[i] for i in r))
        return SagResult(self.full_score, self.empty_score, self.threshold, self.keep,
                         [(sets(r), s) for r, s in self.roots], list(self.diverse),
                         [SagEdge(sets(e.parent), sets(e.child), col[e.removed], e.parent_score, e.child_score)
                          for e in self.edges], self.n_forward, self.search_forward, self.status)


class _Exhausted(Exception):
    """The forwards left would not cover the next batch of sets (internal: becomes status BUDGET)."""


def _coalitions(sets: Sequence[tuple[int, ...]], M: int) -> torch.Tensor:
    """0/1 coalition rows [N, M] of region sets (tuples of indices)."""
    z = torch.zeros(len(sets), M)
    rows = torch.tensor([r for r, s in enumerate(sets) for _ in s], dtype=torch.long)
    cols = torch.tensor([i for s in sets for i in s], dtype=torch.long)
    z[rows, cols] = 1.0
    return z


def _bitmasks(sets: Sequence[tuple[int, ...]], M: int) -> np.ndarray:
    """Each set as a bitmask [N] (bit i = region i), for vectorised subset tests: int64 for M < 63, else Python
    integers (an object array: slower, but a region past bit 62 would otherwise shift out and vanish)."""
    z = _coalitions(sets, M).numpy().astype(bool)
    if M < 63:
        return (z.astype(np.int64) << np.arange(M, dtype=np.int64)).sum(1)
    bits = np.array([1 << i for i in range(M)], dtype=object)
    return np.array([int(bits[row].sum()) if row.any() else 0 for row in z], dtype=object)


class _Memo:
    """Scores of region sets, each evaluated once; a batch of new sets is one game call (counted in ``n_forward``).
    ``store``: set -> scores [T] of every target, shared between the memos of one image's targets (and pre-filled
    with what the importance heuristic scored); ``limit``: a callable giving the forwards left, or None (no limit):
    a batch larger than that raises :class:`_Exhausted` before any forward."""

    def __init__(self, game: Callable[[torch.Tensor], torch.Tensor], M: int, target: int, *,
                 store: dict[tuple[int, ...], np.ndarray] | None = None, limit: Callable[[], int] | None = None):
        self.game, self.M, self.target, self.limit = game, M, target, limit
        self.scores: dict[tuple[int, ...], np.ndarray] = {} if store is None else store
        self.n_forward = 0
        self._masks = np.zeros(0, dtype=np.int64 if M < 63 else object)   # bitmasks of the store's sets, in order
        self._values = np.zeros(0)                           # this target's score of each

    def __call__(self, sets: list[tuple[int, ...]]) -> list[float]:
        new = list(dict.fromkeys(s for s in sets if s not in self.scores))
        if new:
            if self.limit is not None and len(new) > self.limit():
                raise _Exhausted
            values = self.game(_coalitions(new, self.M)).float().cpu().numpy()
            self.n_forward += len(new)
            self.scores.update(zip(new, values))
        return [float(self.scores[s][self.target]) for s in sets]

    def covered(self, sets: list[tuple[int, ...]], need: float) -> np.ndarray:
        """For each set [N] (bool): not scored itself, but a superset of a scored set with score ≥ ``need`` -
        sufficient by monotone inference (exact on a monotone game: adding regions never lowers the score)."""
        if len(self._masks) < len(self.scores):             # the store only grows (dicts keep insertion order)
            added = list(self.scores)[len(self._masks):]
            self._masks = np.concatenate([self._masks, _bitmasks(added, self.M)])
            self._values = np.concatenate([self._values, [float(self.scores[s][self.target]) for s in added]])
        known = self._masks[self._values >= need]
        if not sets or not len(known):
            return np.zeros(len(sets), dtype=bool)
        masks = _bitmasks(sets, self.M)
        inside = ((masks[:, None] & known[None]) == known[None]).any(1)
        return inside & np.array([s not in self.scores for s in sets])


def _prune(root: tuple[int, ...], memo: _Memo, need: float, rank: np.ndarray, *, infer: bool = True
           ) -> tuple[int, ...]:
    """Greedy: drop the least important region whose removal keeps the set sufficient, until none can go (the
    paper's pruning). The removals are tried least important first and the first that keeps the set sufficient is
    taken, so a round costs only the removals tried up to it (one forward each, unless already scored or, with
    ``infer``, known sufficient as a superset of a scored sufficient set: no forward); the set it ends at is scored
    and no single removal of it is sufficient (its removals were all scored: an inferred one would have been taken).
    """
    current = root
    while len(current) > 1:
        for drop in sorted(current, key=lambda r: -rank[r]):           # least important first
            smaller = tuple(r for r in current if r != drop)
            if (infer and memo.covered([smaller], need)[0]) or memo([smaller])[0] >= need:
                current = smaller
                break
        else:
            break
    return current


def beam_search(memo: _Memo, M: int, importance: np.ndarray, need: float, *, width: int = 3, successors: int = 15,
                max_roots: int = 10, roots: list[tuple[int, ...]] | None = None, infer: bool = True
                ) -> list[tuple[int, ...]]:
    """Minimal sufficient sets (sorted tuples) by the beam search of the module docstring, appended to ``roots``
    (a new list by default) as they are found, so a caller that stops the search early keeps those found.

    ``infer``: a child (or a set tried in pruning) that is a superset of a set already scored sufficient is taken
    as sufficient without a forward (monotone inference). On a monotone game this is exact, so the roots are the
    paper's search's, found with fewer forwards (tests/test_sag.py checks it); on a game that is not monotone such a
    child would sometimes score below the threshold and could then have entered the beam. The sets the search
    returns are scored sufficient either way, and no single removal of them is sufficient."""
    order = np.argsort(-importance, kind="stable")                 # most important first
    rank = np.empty(M, dtype=np.int64)
    rank[order] = np.arange(M)                                      # 0 = most important
    beam: list[tuple[int, ...]] = [()]
    roots = [] if roots is None else roots
    while beam and len(roots) <= max_roots:
        children = []
        for state in beam:
            unused = [int(r) for r in order if r not in state][:successors]
            children += [tuple(sorted((*state, r))) for r in unused]
        children = list(dict.fromkeys(children))
        if not children:
            break
        covered = memo.covered(children, need) if infer else np.zeros(len(children), dtype=bool)
        scored = [c for c, cov in zip(children, covered) if not cov]
        scores = dict(zip(scored, memo(scored)))                        # one batch (already scored: free)
        sufficient = [c for c, cov in zip(children, covered) if cov or scores[c] >= need]
        for c in sufficient:
            root = _prune(c, memo, need, rank, infer=infer)
            if root not in roots:
                roots.append(root)
        rest = [(s, -sum(importance[list(c)]), c) for c, s in scores.items() if s < need]
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


def deletion_graph(memo: _Memo, roots: list[tuple[int, ...]], floor: float,
                   edges: list[SagEdge] | None = None) -> list[SagEdge]:
    """Edges of one-region deletions from ``roots`` while the child's score stays ≥ ``floor``; one batch per level,
    appended to ``edges`` (a new list by default) level by level."""
    edges = [] if edges is None else edges
    level, seen = list(dict.fromkeys(roots)), set(roots)
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


def _importance(importance: Sequence[float] | torch.Tensor | np.ndarray, M: int) -> np.ndarray:
    values = np.asarray(torch.as_tensor(importance, dtype=torch.float64).cpu(), dtype=np.float64).reshape(-1)
    if values.shape != (M,):
        raise ValueError(f"sag: importance must have one value per region ({M}), got {values.shape[0]}")
    return values


def _check_fractions(threshold: float, keep: float) -> None:
    if not (0 < threshold <= 1 and 0 < keep <= 1):
        raise ValueError(f"sag: threshold and keep must lie in (0, 1], got {threshold}, {keep}")


def _graph(memo: _Memo, M: int, importance: np.ndarray, *, threshold: float, keep: float, width: int,
           successors: int, max_roots: int, diverse: int, overlap: int, flat_error: bool, infer: bool = True
           ) -> SagResult:
    """One target's SAG on ``memo`` (see :func:`structured_attention_graph`). When the memo's limit stops it, the
    result keeps what was found (status BUDGET); a full score not above the empty one, or not positive (fractions of
    it are then not "keeping" it: for full < 0, threshold × full > full), raises ValueError (``flat_error``) or gives
    an empty result with status FLAT, without a search."""
    nan = float("nan")
    try:
        full, empty = memo([tuple(range(M)), ()])
    except _Exhausted:
        return SagResult(nan, nan, threshold, keep, [], [], [], memo.n_forward, memo.n_forward, BUDGET)
    if not (full > empty and full > 0):
        if flat_error and not full > empty:
            raise ValueError(f"sag: the full score {full:.4g} is not above the empty score {empty:.4g}: no region "
                             f"set can be told from none")
        if flat_error:
            raise ValueError(f"sag: the full score {full:.4g} is not positive: a fraction {threshold} of it is not a "
                             f"share of it (use a score > 0, e.g. a probability rather than a logit)")
        return SagResult(full, empty, threshold, keep, [], [], [], memo.n_forward, memo.n_forward, FLAT)
    status, roots = COMPLETE, []
    if empty >= threshold * full:              # nothing needs showing: the empty set is the one minimal set
        roots.append(())
    else:
        try:
            beam_search(memo, M, importance, threshold * full, width=width, successors=successors,
                        max_roots=max_roots, roots=roots, infer=infer)
        except _Exhausted:
            status = BUDGET
    search_forward = memo.n_forward
    scored = list(zip(roots, memo(roots)))      # every root is scored already: no forward
    kept = diverse_roots(scored, diverse, overlap)
    edges: list[SagEdge] = []
    try:
        deletion_graph(memo, [scored[i][0] for i in kept], keep * full, edges)
    except _Exhausted:
        status = BUDGET
    return SagResult(full, empty, threshold, keep, scored, kept, edges, memo.n_forward, search_forward, status)


def structured_attention_graph(game: Callable[[torch.Tensor], torch.Tensor], num_regions: int,
                               importance: Sequence[float] | torch.Tensor, *, target: int = 0,
                               threshold: float = 0.9, keep: float = 0.4, width: int = 3, successors: int = 15,
                               max_roots: int = 10, diverse: int = 3, overlap: int = 1,
                               infer: bool = True) -> SagResult:
    """The SAG of target ``target`` of ``game`` over ``num_regions`` regions, searched in the order of
    ``importance`` [M] (higher = more important). Spends 2 + (sets scored) game evaluations (``n_forward``; the
    graph's excluded: ``search_forward``). When the empty set already keeps ``threshold`` of the full score, it is
    the one minimal sufficient set (no search). ``infer``: monotone inference (:func:`beam_search`); False gives
    the paper's search exactly (every child scored).
    Raises ValueError for a threshold / keep outside (0, 1], importance of the wrong length, a full score ≤ the
    empty score (nothing to keep: every set would be "sufficient") or a full score ≤ 0 (threshold × full would lie
    above full: no set could be sufficient)."""
    M = int(num_regions)
    values = _importance(importance, M)
    _check_fractions(threshold, keep)
    return _graph(_Memo(game, M, target), M, values, threshold=threshold, keep=keep, width=width,
                  successors=successors, max_roots=max_roots, diverse=diverse, overlap=overlap, flat_error=True,
                  infer=infer)


@dataclass
class SagExplanation(Explanation):
    """An :class:`~explainers.base.Explanation` (relevance: the importance heuristic's BayesShapley values) with
    each target's structured attention graph, ``graphs[t]``, its regions numbered as relevance's columns."""

    graphs: list[SagResult] = field(default_factory=list)


class Sag(BayesShapley):
    """Structured attention graphs as an explainer (Shitole et al. 2021, https://arxiv.org/abs/2011.06733): per
    target, the minimal sufficient region sets found by beam search, the diverse ones and their one-region-deletion
    graph (module docstring), ranked by BayesShapley values estimated in the same call.

    Budget (forwards, default 320): ``importance_budget`` (64) of it goes to the BayesShapley values (exact when
    2^M fits), the rest to the searches and graphs of every target; every binary coalition is scored once, across
    the heuristic and all targets, and the search takes supersets of sets scored sufficient as sufficient without a
    forward (monotone inference, module docstring; always on here: ``structured_attention_graph(infer=False)`` runs
    the paper's search). When the budget runs out, a target's graph keeps the roots and edges found so far and says
    so (``status`` 'budget'). Relevance [T, R] and saliency are the BayesShapley values (efficiency exact),
    so evaluate and the report treat a ``sag`` job like any region method; ``explain`` returns a
    :class:`SagExplanation` with the graphs. A target whose full score is not above its empty score, or is ≤ 0
    (e.g. a negative logit), gets status 'flat' and no search. Options as :func:`structured_attention_graph` plus
    BayesShapley's ``decay``. Raises ValueError for an importance budget below 4, width / successors / max_roots /
    diverse below 1, overlap below 0 or threshold / keep outside (0, 1]; BudgetError for a budget below
    BayesShapley's minimum."""

    name = "sag"
    default_budget = 320

    def __init__(self, scorer, *, importance_budget: int = 64, threshold: float = 0.9, keep: float = 0.4,
                 width: int = 3, successors: int = 15, max_roots: int = 10, diverse: int = 3, overlap: int = 1,
                 **kw):
        super().__init__(scorer, **kw)
        _check_fractions(threshold, keep)
        counts = {"width": width, "successors": successors, "max_roots": max_roots, "diverse": diverse}
        low = {k: v for k, v in counts.items() if int(v) < 1}
        if low or int(overlap) < 0 or int(importance_budget) < 4:
            raise ValueError(f"sag: width, successors, max_roots and diverse must be >= 1, overlap >= 0 and "
                             f"importance_budget >= 4, got {counts}, overlap {overlap}, importance_budget "
                             f"{importance_budget}")
        self.importance_budget, self.threshold, self.keep = int(importance_budget), float(threshold), float(keep)
        self.search = {**{k: int(v) for k, v in counts.items()}, "overlap": int(overlap)}
        self._graphs: list[SagResult] = []

    def options(self):
        return {**super().options(), "importance_budget": self.importance_budget, "threshold": self.threshold,
                "keep": self.keep, **self.search}

    def explain(self, image: torch.Tensor, regions: torch.Tensor | None = None, *, budget: int | None = None,
                seed: int = 0) -> SagExplanation:
        """:meth:`Explainer.explain <explainers.base.Explainer.explain>`, plus the graphs (regions numbered as the
        columns of relevance: a region without a pixel is in none)."""
        image = torch.as_tensor(image)
        if regions is None and image.ndim == 3 and image.shape[0] == 3:
            refuse_non_finite(image)                  # before the superpixels, which would fail on it by other words
            regions = self.default_regions(image.to(self.device, torch.float32))
        self._graphs = []
        exp = super().explain(image, regions, budget=budget, seed=seed)
        columns = region_set(regions, image.shape[-2:], self.device).columns.tolist() if self._graphs else []
        return SagExplanation(**{f: getattr(exp, f) for f in Explanation.__dataclass_fields__},
                              graphs=[g.relabel(columns) for g in self._graphs])

    def _explain(self, image, regions, budget, generator):
        budget = self.default_budget if budget is None else budget
        game = RegionGame(self.score, image, regions, self.perturbation, self.chunk_size)
        est, self._graphs = sag_of_game(game, regions.shape[0], budget=budget, rng=numpy_rng(generator),
                                        importance_budget=self.importance_budget, device=self.device,
                                        decay=self.decay, threshold=self.threshold, keep=self.keep, **self.search)
        phi = est.phi.float().to(self.device)
        return paint(phi, regions), phi, {"full_score": est.full, "empty_score": est.empty}


def sag_of_game(game: Callable[[torch.Tensor], torch.Tensor], M: int, *, budget: int, rng: np.random.Generator,
                importance_budget: int = 64, device: str | torch.device = "cpu", decay: float = DEFAULT_DECAY,
                threshold: float = 0.9, keep: float = 0.4, width: int = 3, successors: int = 15,
                max_roots: int = 10, diverse: int = 3, overlap: int = 1, infer: bool = True
                ) -> tuple[ShapleyEstimate, list[SagResult]]:
    """What :class:`Sag` runs on a game (``game(coalitions [N, M]) -> scores [N, T]``): the BayesShapley estimate
    on ``min(importance_budget, budget)`` forwards (every binary coalition it scores remembered, the empty and full
    ones included, so no target's search pays for it again), then each target's graph on what is left of
    ``budget`` (forwards = game rows, counted here: never more than ``budget``). Options as
    :func:`structured_attention_graph`. Returns (the estimate, one SagResult per target, regions numbered as the
    game's players)."""
    store: dict[tuple[int, ...], np.ndarray] = {}
    spent = [0]

    def remembered(z: torch.Tensor) -> torch.Tensor:
        """The game, counting its rows and remembering the scores of binary coalitions (the heuristic's)."""
        scores = game(z)
        spent[0] += z.shape[0]
        zs, values = z.cpu().numpy(), scores.float().cpu().numpy()
        binary = ((zs == 0) | (zs == 1)).all(1)
        store.update((tuple(np.flatnonzero(row).tolist()), v) for row, v in zip(zs[binary], values[binary]))
        return scores

    est = bayes_shapley(remembered, M, min(importance_budget, budget), rng, device, decay)
    importance = est.phi.double().cpu().numpy()

    def left() -> int:
        return budget - spent[0]
    graphs = [_graph(_Memo(remembered, M, t, store=store, limit=left), M, importance[t], threshold=threshold,
                     keep=keep, flat_error=False, width=width, successors=successors, max_roots=max_roots,
                     diverse=diverse, overlap=overlap, infer=infer) for t in range(importance.shape[0])]
    return est, graphs


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


__all__ = ["BUDGET", "COMPLETE", "FLAT", "Sag", "SagEdge", "SagExplanation", "SagResult", "beam_search",
           "deletion_graph", "diverse_roots", "exact_minimal_sufficient", "image_sag", "structured_attention_graph"]
