"""Structured attention graphs (explainers/sag.py): the beam search finds exactly the minimal sufficient sets of a
hand-built AND / OR game, the exact table agrees, the diverse roots and the deletion graph follow their rules, every
set is scored once, and the result flattens to Parquet rows."""
from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest
import torch

from explainers.sag import diverse_roots, exact_minimal_sufficient, image_sag, structured_attention_graph


class Counting:
    """A game over M players from a function of the shown set; counts the coalitions it scores."""

    def __init__(self, fn, M: int):
        self.fn, self.M, self.calls, self.seen = fn, M, 0, []

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.seen += [tuple(row.nonzero()[:, 0].tolist()) for row in z]
        return torch.tensor([[self.fn(set(row.nonzero()[:, 0].tolist()))] for row in z], dtype=torch.float32)

    def table(self) -> torch.Tensor:
        return torch.tensor([self.fn({i for i in range(self.M) if m >> i & 1}) for m in range(2 ** self.M)])


def and_or(S: set) -> float:
    """(head AND torso) OR (left leg AND right leg AND left arm) OR box; region 5 is a distractor."""
    return 1.0 if {0, 1} <= S or {2, 3, 6} <= S or 4 in S else 0.05 * (5 in S)


def test_the_beam_search_finds_exactly_the_minimal_sets_of_an_and_or_game():
    game = Counting(and_or, 7)
    truth = exact_minimal_sufficient(game.table(), 0.9)
    assert truth == {frozenset({0, 1}), frozenset({2, 3, 6}), frozenset({4})}
    importance = torch.tensor([0.3, 0.3, 0.1, 0.1, 0.5, 0.0, 0.1])  # e.g. Shapley values: distractor last
    result = structured_attention_graph(game, 7, importance)
    assert result.root_sets() == truth
    assert len(game.seen) == len(set(game.seen)) == result.n_forward          # each set scored once
    assert result.full_score == 1.0 and result.empty_score == 0.0
    # diverse roots: all three (pairwise disjoint), smallest first
    assert [result.roots[i][0] for i in result.diverse] == [(4,), (0, 1), (2, 3, 6)]
    # AND / OR: removing any region of a root drops below 40 % -> no edges
    assert result.edges == []


def test_a_misleading_heuristic_still_gives_minimal_sets():
    """Importance that ranks the distractor first: the roots are still sufficient and minimal (pruned)."""
    game = Counting(and_or, 7)
    result = structured_attention_graph(game, 7, torch.tensor([0.0, 0.1, 0.0, 0.0, 0.0, 1.0, 0.0]))
    truth = exact_minimal_sufficient(game.table(), 0.9)
    assert result.root_sets() <= truth and frozenset({4}) in result.root_sets()


def test_the_deletion_graph_descends_to_the_keep_fraction():
    """Additive game w = (0.5, 0.3, 0.2): the only sufficient set is all three; one-region deletions while the
    score stays >= 0.4."""
    w = [0.5, 0.3, 0.2]
    game = Counting(lambda S: sum(w[i] for i in S), 3)
    result = structured_attention_graph(game, 3, torch.tensor(w))
    assert result.root_sets() == {frozenset({0, 1, 2})}
    got = {(e.parent, e.child, e.removed, round(e.drop, 6)) for e in result.edges}
    assert got == {((0, 1, 2), (0, 1), 2, 0.2), ((0, 1, 2), (0, 2), 1, 0.3), ((0, 1, 2), (1, 2), 0, 0.5),
                   ((0, 1), (0,), 1, 0.3), ((0, 2), (0,), 2, 0.2)}
    rows = result.rows(["head", "torso", "legs"], image_id="i1", target_id="t1")
    table = pa.Table.from_pylist(rows)
    assert table.num_rows == 1 + 5 and set(table.column("element").to_pylist()) == {"root", "edge"}
    root = rows[0]
    assert root["parts"] == ["head", "torso", "legs"] and root["image_id"] == "i1" and root["diverse"]


def test_diverse_roots_share_at_most_one_region():
    roots = [((0, 1, 2), 1.0), ((0, 1), 0.95), ((1, 2), 0.97), ((3,), 0.92), ((0, 3), 0.99)]
    kept = diverse_roots(roots, k=3, overlap=1)
    assert kept == [3, 4, 2]                  # smallest first, then by score; (0, 3) shares one region with (3,)
    for a, b in itertools.combinations(kept, 2):
        assert len(set(roots[a][0]) & set(roots[b][0])) <= 1


def test_bad_input_is_refused():
    game = Counting(lambda S: 0.0, 3)
    with pytest.raises(ValueError, match="not above the empty score"):
        structured_attention_graph(game, 3, torch.ones(3))
    with pytest.raises(ValueError, match="one value per region"):
        structured_attention_graph(Counting(and_or, 7), 7, torch.ones(3))
    with pytest.raises(ValueError, match="2\\^M"):
        exact_minimal_sufficient(torch.ones(6))


def test_image_sag_plays_the_region_game_of_an_image():
    """A scorer that needs the head and one leg shown (an AND over stick-figure parts): the one root is {head, leg}."""
    from tests.image_models import QuadrantModel, stick_figure

    image, _ = stick_figure()

    class HeadAndLeg(QuadrantModel):
        def __call__(self, images):
            head, leg = images[:, :, 8:16, 28:36].mean((1, 2, 3)), images[:, :, 40:60, 33:37].mean((1, 2, 3))
            return (head * (1 - leg))[:, None]             # the head bright AND the leg dark, as in the image

    parts = torch.zeros(3, 64, 64, dtype=torch.bool)
    parts[0, 8:16, 28:36] = True
    parts[1, 40:60, 33:37] = True
    parts[2, 16:40, 26:38] = True
    result = image_sag(HeadAndLeg(), image, parts, torch.tensor([1.0, 0.5, 0.1]), perturbation="mean")
    assert result.root_sets() == {frozenset({0, 1})}
    with pytest.raises(ValueError, match="no pixel"):
        image_sag(HeadAndLeg(), image, torch.zeros(2, 64, 64), torch.ones(2))


def test_an_empty_set_that_keeps_the_score_is_the_one_root():
    """A score that hidden parts barely move: v(none) >= 0.9 v(all), so the empty set is the minimal sufficient set
    (the table agrees); no search is run."""
    game = Counting(lambda S: 0.95 + 0.05 * (0 in S), 3)
    result = structured_attention_graph(game, 3, torch.ones(3))
    assert result.root_sets() == exact_minimal_sufficient(game.table()) == {frozenset()}
    assert result.search_forward == 2


def test_pruning_drops_the_least_important_region_first():
    from explainers.sag import _Memo, _prune

    # {0, 2} and {1, 2} are both sufficient; region 1 is the least important, so pruning {0, 1, 2} keeps {0, 2}.
    game = Counting(lambda S: 1.0 if {0, 2} <= S or {1, 2} <= S else 0.0, 3)
    importance = np.array([0.9, 0.1, 0.5])
    rank = np.empty(3, dtype=np.int64)
    rank[np.argsort(-importance, kind="stable")] = np.arange(3)
    assert _prune((0, 1, 2), _Memo(game, 3, 0), 0.9, rank) == (0, 2)


def monotone_game(rng: np.random.Generator, M: int):
    """A random monotone game (adding a region never lowers the score): a logistic of non-negative main effects
    and pairwise interactions, or an OR of a few ANDs over random region sets plus small non-negative weights."""
    if rng.random() < 0.5:
        a, c = rng.exponential(1.0, M), rng.normal(-3.0, 1.0)
        b = np.triu(rng.exponential(0.3, (M, M)) * (rng.random((M, M)) < 0.3), 1)

        def fn(S: set) -> float:
            z = np.isin(np.arange(M), list(S)).astype(float)
            return float(1 / (1 + np.exp(-(c + z @ a + z @ b @ z))))
    else:
        ands = [set(rng.choice(M, int(rng.integers(1, 5)), replace=False).tolist()) for _ in range(rng.integers(2, 6))]
        w, e = rng.uniform(0.5, 1.0, len(ands)), rng.uniform(0.0, 0.05, M)

        def fn(S: set) -> float:
            return max(wj * (A <= S) for wj, A in zip(w, ands)) + sum(e[i] for i in S)
    return fn


def test_monotone_inference_finds_the_papers_roots_on_monotone_games_with_fewer_forwards():
    """On a monotone game a superset of a sufficient set is sufficient, so taking it as such without a forward
    (``infer``, the default) changes nothing the paper's search (every child scored, ``infer=False``) finds: the
    same roots, in the same order, the same diverse roots and graph, for no more forwards (fewer in total)."""
    rng = np.random.default_rng(7)
    spent, paper_spent, games = 0, 0, 0
    while games < 40:
        M = int(rng.integers(5, 10))
        fn = monotone_game(rng, M)
        table = Counting(fn, M).table()
        if not (table[-1] > table[0] > 0) or table[0] >= 0.9 * table[-1]:
            continue
        importance = torch.from_numpy(rng.normal(size=M))     # any order: the inference must not depend on it
        new, paper = Counting(fn, M), Counting(fn, M)
        ours = structured_attention_graph(new, M, importance)
        theirs = structured_attention_graph(paper, M, importance, infer=False)
        assert ours.roots == theirs.roots and ours.diverse == theirs.diverse
        assert [(e.parent, e.child) for e in ours.edges] == [(e.parent, e.child) for e in theirs.edges]
        assert ours.root_sets() <= exact_minimal_sufficient(table, 0.9)          # monotone: 1-minimal is minimal
        assert ours.search_forward <= theirs.search_forward
        assert len(new.seen) == len(set(new.seen)) == ours.n_forward              # each set scored once
        spent, paper_spent, games = spent + ours.search_forward, paper_spent + theirs.search_forward, games + 1
    assert spent < 0.9 * paper_spent


def test_a_child_containing_a_sufficient_set_is_never_scored():
    """{0} alone is sufficient: every later child contains it, so no set but the full one that strictly contains
    {0} is ever scored, and {0} is the root it prunes to."""
    def fn(S: set) -> float:
        return 1.0 if 0 in S else 0.1 * len(S)
    game = Counting(fn, 6)
    result = structured_attention_graph(game, 6, torch.tensor([1.0, 0.5, 0.4, 0.3, 0.2, 0.1]))
    assert frozenset({0}) in result.root_sets()
    assert [s for s in game.seen if 0 in s and len(s) > 1] == [tuple(range(6))]


def test_roots_are_sufficient_and_one_minimal_on_a_game_that_is_not_monotone():
    """Random scores (far from monotone): whatever the inference takes for granted, every root it returns is scored
    sufficient and none of its single removals is, by the game's table."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        M = 7
        values = rng.random(2 ** M)
        values[-1] = 1.0
        values[0] = 0.0
        game = Counting(lambda S, v=values: float(v[sum(1 << i for i in S)]), M)
        result = structured_attention_graph(game, M, torch.from_numpy(rng.normal(size=M)))
        assert result.roots
        for root, score in result.roots:
            mask = sum(1 << i for i in root)
            assert score == pytest.approx(values[mask]) and values[mask] >= 0.9
            assert all(values[mask & ~(1 << i)] < 0.9 for i in root)
        assert len(game.seen) == len(set(game.seen)) == result.n_forward


def test_the_search_pays_for_no_coalition_the_heuristic_scored():
    """Sag on a game (``sag_of_game``): every coalition is scored once across the BayesShapley heuristic (empty and
    full included) and every target's search, and the forwards are counted exactly: the heuristic's plus each
    graph's ``n_forward`` = the game's rows, within the budget."""
    from explainers.sag import sag_of_game

    rows: list[tuple[int, ...]] = []

    def game(z: torch.Tensor) -> torch.Tensor:
        rows.extend(tuple(r.nonzero()[:, 0].tolist()) for r in z)
        return torch.tensor([[and_or(set(r.nonzero()[:, 0].tolist())), 0.2 + 0.1 * float(r[:3].sum())]
                             for r in z])

    est, graphs = sag_of_game(game, 7, budget=200, rng=np.random.default_rng(0))
    assert len(rows) == len(set(rows)) <= 200
    heuristic = len(rows) - sum(g.n_forward for g in graphs)
    assert heuristic == 64 and () in rows[:heuristic] and tuple(range(7)) in rows[:heuristic]
    assert all(g.search_forward <= g.n_forward for g in graphs)
    assert graphs[0].root_sets() == exact_minimal_sufficient(Counting(and_or, 7).table(), 0.9)
    assert est.phi.shape == (2, 7)


# ----------------------------------------------------------------------------------------------- the explain job
class StripeGame:
    """An image of ones, hidden with a constant 0 (``perturbation=Constant(0.0)``), over M vertical stripes: the mean
    of channel 0 over stripe r is exactly its coalition value z_r, and the scores are ``fn`` of the shown set (one
    column per function). Counts the images it scores."""

    device = torch.device("cpu")
    chunk_size = 64

    def __init__(self, M: int, *fns, W: int = 14):
        col = torch.div(torch.arange(W) * M, W, rounding_mode="floor")
        self.masks = (col.view(1, 1, W) == torch.arange(M).view(-1, 1, 1)).expand(M, 8, W).clone()
        flat = self.masks.reshape(M, -1).float()
        self.weights = (flat / flat.sum(1, keepdim=True)).T
        self.fns, self.num_targets, self.images = fns, len(fns), 0

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        self.images += images.shape[0]
        z = (images[:, 0].reshape(images.shape[0], -1) @ self.weights) > 0.5
        return torch.tensor([[fn(set(row.nonzero()[:, 0].tolist())) for fn in self.fns] for row in z])


def test_the_sag_job_finds_each_targets_minimal_sets_with_bayes_shapley_relevance():
    from explainers import BayesShapley
    from explainers.perturb import Constant
    from explainers.registry import METHODS
    from explainers.sag import COMPLETE, Sag

    assert METHODS["sag"] is Sag
    additive = [0.5, 0.3, 0.2, 0.0, 0.0, 0.0, 0.0]
    scorer = StripeGame(7, and_or, lambda S: sum(additive[i] for i in S))
    exp = Sag(scorer, perturbation=Constant(0.0)).explain(torch.ones(3, 8, 14), scorer.masks, budget=400, seed=3)
    assert exp.n_forward == scorer.images <= 400
    assert [g.status for g in exp.graphs] == [COMPLETE, COMPLETE]
    assert exp.graphs[0].root_sets() == exact_minimal_sufficient(Counting(and_or, 7).table(), 0.9)
    assert exp.graphs[1].root_sets() == {frozenset({0, 1, 2})}
    # relevance: BayesShapley's values on the same budget share and seed, efficiency exact
    plain = BayesShapley(StripeGame(7, and_or, lambda S: sum(additive[i] for i in S)), perturbation=Constant(0.0))
    ref = plain.explain(torch.ones(3, 8, 14), scorer.masks, budget=64, seed=3)
    torch.testing.assert_close(exp.relevance, ref.relevance)
    torch.testing.assert_close(exp.relevance.sum(1), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)
    # what the heuristic scored is not paid for again: the search adds fewer forwards than sets it looked at
    assert sum(g.n_forward for g in exp.graphs) == exp.n_forward - ref.n_forward
    assert exp.options["importance_budget"] == 64 and exp.method == "sag"


def test_a_budget_that_runs_out_keeps_the_minimal_sets_found_and_says_so():
    from explainers.perturb import Constant
    from explainers.sag import BUDGET, Sag

    scorer = StripeGame(7, and_or)
    exp = Sag(scorer, perturbation=Constant(0.0), importance_budget=16).explain(
        torch.ones(3, 8, 14), scorer.masks, budget=30, seed=0)
    graph = exp.graphs[0]
    assert exp.n_forward <= 30 and graph.status == BUDGET
    assert graph.root_sets() <= exact_minimal_sufficient(Counting(and_or, 7).table(), 0.9)
    rows = graph.rows([f"p{i}" for i in range(7)], summary=True, target_id="t")
    assert rows[0]["element"] == "target" and rows[0]["status"] == "budget" and rows[0]["parts"][-1] == "p6"


def test_regions_without_a_pixel_keep_their_columns_in_the_graph():
    from explainers.perturb import Constant
    from explainers.sag import Sag

    scorer = StripeGame(3, lambda S: 1.0 if {0, 2} <= S else 0.0)
    gappy = torch.cat([scorer.masks[:1], torch.zeros_like(scorer.masks[:1]), scorer.masks[1:]])   # column 1 empty
    exp = Sag(scorer, perturbation=Constant(0.0)).explain(torch.ones(3, 8, 14), gappy, budget=64)
    assert exp.relevance.shape == (1, 4) and exp.relevance[0, 1] == 0
    assert exp.graphs[0].root_sets() == {frozenset({0, 3})}          # players 0 and 2 are columns 0 and 3


def test_flat_scores_and_bad_options():
    from explainers.perturb import Constant
    from explainers.sag import FLAT, Sag

    scorer = StripeGame(3, lambda S: 0.5)
    exp = Sag(scorer, perturbation=Constant(0.0)).explain(torch.ones(3, 8, 14), scorer.masks, budget=64)
    assert exp.graphs[0].status == FLAT and exp.graphs[0].roots == []
    assert [r["element"] for r in exp.graphs[0].rows(["a", "b", "c"], summary=True)] == ["target"]
    with pytest.raises(ValueError, match="importance_budget >= 4"):
        Sag(scorer, importance_budget=2)
    with pytest.raises(ValueError, match="threshold and keep"):
        Sag(scorer, threshold=1.5)


def test_a_non_positive_full_score_is_flat_not_searched():
    """Logits: v(none) = -3 < v(all) = -0.5 < 0, so 0.9 · v(all) = -0.45 lies above v(all) and no set could be
    sufficient: the job says 'flat' without a search (a finished search with no root would claim 'complete'); the
    plain function refuses it."""
    from explainers.perturb import Constant
    from explainers.sag import FLAT, Sag

    def logit(S: set) -> float:
        return -3.0 + 2.5 * len(S) / 3

    scorer = StripeGame(3, logit)
    exp = Sag(scorer, perturbation=Constant(0.0)).explain(torch.ones(3, 8, 14), scorer.masks, budget=64)
    graph = exp.graphs[0]
    assert graph.status == FLAT and graph.roots == [] and graph.edges == []
    assert graph.full_score == pytest.approx(-0.5) and graph.empty_score == pytest.approx(-3.0)
    assert graph.search_forward == graph.n_forward <= 2                    # the full and empty scores only
    game = Counting(logit, 3)
    with pytest.raises(ValueError, match="not positive"):
        structured_attention_graph(game, 3, torch.ones(3))
    assert game.calls == 1                                                 # full and empty, one batch, no search


def test_subset_tests_keep_regions_past_bit_62():
    """Bitmasks of 70 regions: region 65 must not vanish (int64 shifts would drop it and call {65} a subset of all)."""
    from explainers.sag import _bitmasks, _Memo

    masks = _bitmasks([(65,), (0, 1), (1, 65)], 70)
    assert masks[0] != 0 and masks[0] & masks[1] == 0 and masks[0] & masks[2] == masks[0]
    memo = _Memo(lambda z: z[:, 65:66].float(), 70, 0)            # sufficient exactly when region 65 is shown
    memo([(65,)])
    assert memo.covered([(0, 1), (1, 65)], 0.9).tolist() == [False, True]
