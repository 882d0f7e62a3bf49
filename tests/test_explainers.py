"""Explainers: exact answers on games with known Shapley values, convergence, efficiency, localisation on hand-built
models, determinism, budgets, and the metrics."""
import itertools
import math

import numpy as np
import pytest
import torch

from detection.models.blackbox import CallableDetector
from detection.scorers import DRiseScorer
from explainers import (METHODS, BayesShapley, BetaShapley, BudgetError, DeCam, DRise, ExactShapley, KernelShap, Lime,
                        Occlusion, PermutationShapley, Rise, bayes_shapley, beta_shapley, box_masks, deletion_insertion,
                        energy_pointing_game, exact_shapley, grid_regions, kernel_shap, permutation_shapley,
                        pointing_game, relative_error)
from explainers.base import paint
from explainers.bayesian_shapley import pair_covariance, pair_design, shapley_covariance
from explainers.game import RegionGame
from explainers.perturb import Compositor, Constant
from explainers.rise import RiseMasks, WeightedMaskSum, rise_masks
from explainers.shapley import complement_pairs, constrained_solve, odd_interaction_fit, symmetric_pinv_solve

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


def test_exact_enumeration_matches_closed_forms():
    assert torch.allclose(exact_shapley(additive, M).phi[0], A, atol=1e-6)
    est = exact_shapley(interacting, M)
    assert torch.allclose(est.phi[0], CLOSED_FORM, atol=1e-6)
    assert est.n_forward == 2 ** M


@pytest.mark.parametrize("estimator", [bayes_shapley, kernel_shap, permutation_shapley, beta_shapley])
def test_estimators_converge_and_keep_efficiency(estimator):
    errors = []
    for budget in (64, 256, 1000):
        runs = [estimator(interacting, M, budget, np.random.default_rng(s)) for s in range(5)]
        errors.append(np.median([relative_error(r.phi[0], CLOSED_FORM).item() for r in runs]))
        for r in runs:
            assert r.n_forward <= budget
            assert torch.allclose(r.phi.sum(1), r.full - r.empty, atol=1e-6)       # efficiency
    assert errors[2] < errors[0] and errors[2] < 0.1, errors
    on_additive = estimator(additive, M, 64, np.random.default_rng(0)).phi[0]
    if estimator in (kernel_shap, permutation_shapley):     # exact on additive games
        assert torch.allclose(on_additive, A, atol=1e-6)
    elif estimator is bayes_shapley:                 # its prior lends third-order terms a little of the main effects
        assert relative_error(on_additive, A) < 0.01


def test_third_order_terms_remove_the_error_three_way_interactions_leave_in_linear_kernel_shap():
    """The AND of players 0-2 is a third-order term: the classic (order 1) paired fit cannot place it, order 3 can."""
    def median_error(order, budget):
        return np.median([relative_error(kernel_shap(interacting, M, budget, np.random.default_rng(s), order=order)
                                         .phi[0], CLOSED_FORM).item() for s in range(5)])
    assert median_error(3, 256) < 0.6 * median_error(1, 256)
    assert median_error(3, 512) < 0.3 * median_error(1, 512)
    assert median_error(3, 512) < 0.01


def test_bayes_covariances_equal_sums_over_the_odd_fourier_terms():
    """The closed forms (by number of agreeing players) against the explicit sums over every odd subset S:
    Cov(d(a), d(b)) = sum_S v_|S| chi_S(a) chi_S(b), Cov(phi_i, d(a)) = sum_{S ni i} v_|S| / |S| chi_S(a)."""
    n, decay = 6, 0.2
    a = torch.from_numpy(2.0 * np.random.default_rng(0).integers(0, 2, (9, n)) - 1)
    subsets = [S for k in range(1, n + 1, 2) for S in itertools.combinations(range(n), k)]
    chi = torch.stack([a[:, list(S)].prod(1) for S in subsets], 1)                          # [9, subsets]
    var = torch.tensor([decay ** ((len(S) - 1) / 2) for S in subsets], dtype=torch.float64)
    member = torch.tensor([[i in S for S in subsets] for i in range(n)], dtype=torch.float64)
    size = torch.tensor([len(S) for S in subsets], dtype=torch.float64)
    assert torch.allclose(pair_covariance(a, a, decay), (chi * var) @ chi.T)
    assert torch.allclose(shapley_covariance(a, decay), (chi * var / size) @ member.T)


def test_bayes_design_spends_the_budget_on_distinct_pairs_and_beats_sampled_pairs():
    Z = pair_design(M, 40)
    assert Z.shape == (40, M) and len(np.unique(Z, axis=0)) == 40
    assert (Z[:, -1] == 0).all() and (Z.sum(1) > 0).all()      # one side of each pair, never (none, all)

    def median_error(estimator, budget):
        return np.median([relative_error(estimator(interacting, M, budget, np.random.default_rng(s)).phi[0],
                                         CLOSED_FORM).item() for s in range(5)])
    for budget in (128, 256):                           # same forwards, under half of KernelSHAP's error
        assert median_error(bayes_shapley, budget) < 0.5 * median_error(kernel_shap, budget), budget
    assert median_error(bayes_shapley, 300) < 1e-3       # the game's odd part has order <= 3: pinned down
    assert torch.allclose(bayes_shapley(interacting, M, 2 ** M, np.random.default_rng(0)).phi[0], CLOSED_FORM,
                          atol=1e-6)


def test_bayes_shapley_for_many_players_designs_from_a_pool_that_favours_no_player():
    """Above 13 players the pairs come from a fixed pool; a pool cut after sorting once left player 0 in almost no
    candidate, and additive games of 19 and 20 players came out 36 % and 42 % wrong."""
    n = 20
    a = torch.tensor(np.random.default_rng(0).normal(size=n))
    est = bayes_shapley(lambda z: (z.double() @ a)[:, None], n, 256, np.random.default_rng(1))
    assert relative_error(est.phi[0], a) < 0.01
    assert 0.3 < pair_design(n, 100)[:, :-1].mean(0).min()      # every player in a fair share of the chosen pairs


def test_complement_pairs_finds_each_pair_once():
    Z = np.array([[0, 1, 1], [1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 0, 1]], np.float32)
    i, j = complement_pairs(Z)
    assert sorted(zip(i.tolist(), j.tolist())) == [(0, 1), (2, 4)]


def test_players_the_sampled_pairs_cannot_tell_apart_get_an_even_finite_split():
    """Players 0 and 1 are in or out together in every sampled pair: their own terms are not identified, and the
    solve must return the least-norm split (an LU solve returned +-3e11 on such a pedestrian once)."""
    rows = [[1, 1, 0, 0, 0], [0, 0, 1, 0, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 1], [1, 1, 1, 0, 0]]
    Z = np.array([r for r in rows for r in (r, [1 - x for x in r])], np.float32)
    Y = torch.from_numpy(Z @ np.array([0.3, 0.1, 0.2, -0.1, 0.05]))[:, None].double()
    phi = odd_interaction_fit(Z, Y, np.full(len(Z), 1 / len(Z)), torch.zeros(1, dtype=torch.float64),
                              torch.tensor([0.55], dtype=torch.float64), ridge=0.1)[0]
    assert torch.isfinite(phi).all() and phi.abs().max() < 1
    assert phi[0] == pytest.approx(phi[1]) and phi[0] + phi[1] == pytest.approx(0.4)
    assert phi.sum() == pytest.approx(0.55)


def test_constrained_solve_takes_the_cholesky_path_only_where_it_equals_the_least_norm_solve():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(12, 9, generator=g, dtype=torch.float64)
    ridge = torch.diag(torch.cat([torch.zeros(4), torch.full((5,), 0.1)])).double()
    b, total, target = (torch.randn(9, 2, generator=g, dtype=torch.float64),
                        torch.rand(9, generator=g, dtype=torch.float64), torch.tensor([0.3, -1.0]).double())

    def least_norm(gram):
        kkt = torch.zeros(10, 10, dtype=torch.float64)
        kkt[:9, :9], kkt[:9, 9], kkt[9, :9] = gram, total, total
        return symmetric_pinv_solve(kkt, torch.cat([b, target[None]]))[:9]
    near = X.clone()
    near[:, 1] = X[:, 0] + 1e-7 * X[:, 1]         # players 0 and 1 all but indistinguishable: least-norm split
    for gram in (X.T @ X + ridge, near.T @ near + ridge):   # positive definite (the Cholesky path); near-singular
        solution = constrained_solve(gram, b, total, target, 4)
        torch.testing.assert_close(solution, least_norm(gram), rtol=1e-7, atol=1e-9)
        torch.testing.assert_close(total @ solution, target)


def test_kernel_shap_is_exact_when_the_budget_covers_every_coalition():
    est = kernel_shap(interacting, M, 2 ** M, np.random.default_rng(0))
    assert torch.allclose(est.phi[0], CLOSED_FORM, atol=1e-6)


# ----------------------------------------------------------------------------------------------- image models
class QuadrantModel:
    """Sees only the top-left quadrant: score = its mean brightness."""
    num_targets = 1
    device = torch.device("cpu")
    chunk_size = 16

    def __call__(self, images):
        h, w = images.shape[-2:]
        return images[:, :, :h // 2, :w // 2].mean((1, 2, 3))[:, None]


def _textured(h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, h, w, generator=g) * 0.5 + 0.5


@pytest.mark.parametrize("method", [Rise(QuadrantModel(), perturbation="constant"),
                                    Occlusion(QuadrantModel(), window=8, stride=4, perturbation="constant"),
                                    DeCam(QuadrantModel(), grid=4, sparsity=0.3, perturbation="constant")])
def test_pixel_methods_localise_the_quadrant_the_model_sees(method):
    image = _textured()
    exp = method.explain(image, budget=400, seed=0)
    quadrant = torch.zeros(1, 32, 32, dtype=torch.bool)
    quadrant[:, :16, :16] = True
    centred = exp.saliency - exp.saliency.mean()                # RISE maps carry a constant offset
    assert energy_pointing_game(centred, quadrant)[0] > 0.6      # chance: 0.25
    assert pointing_game(exp.saliency, quadrant, tolerance=2)[0] == 1.0     # NaN (undefined) is truthy


@pytest.mark.parametrize("grid, height, width", [(8, 60, 80), (16, 48, 64), (7, 50, 45), (5, 32, 32)])
def test_rise_masks_equal_upsampling_the_whole_grid_and_cropping(grid, height, width):
    """The separable two-matmul masks are RISE's reference construction (upsample to (grid + 1) cells, crop)."""
    n = 6
    ch, cw = math.ceil(height / grid), math.ceil(width / grid)
    g = torch.Generator().manual_seed(5)
    cells = (torch.rand(n, 1, grid, grid, generator=g) < 0.5).float()
    big = torch.nn.functional.interpolate(cells, size=((grid + 1) * ch, (grid + 1) * cw), mode="bilinear",
                                          align_corners=False)[:, 0]
    dy, dx = torch.randint(0, ch, (n,), generator=g), torch.randint(0, cw, (n,), generator=g)
    reference = torch.stack([big[i, dy[i]:dy[i] + height, dx[i]:dx[i] + width] for i in range(n)])
    masks = rise_masks(n, grid, 0.5, height, width, torch.Generator().manual_seed(5), torch.device("cpu"))
    torch.testing.assert_close(masks, reference, rtol=0, atol=1e-5)


def test_compositor_blends_image_and_baseline_chunk_after_chunk():
    g = torch.Generator().manual_seed(0)
    image, baseline = torch.rand(3, 12, 10, generator=g), torch.rand(3, 12, 10, generator=g)
    composite = Compositor(image, baseline)
    for n in (4, 4, 3, 6):                            # a smaller last chunk, then a larger one (the buffer grows)
        masks = torch.rand(n, 12, 10, generator=g)
        out = composite(masks)
        assert out.shape == (n, 3, 12, 10)
        expected = baseline[None] * (1 - masks[:, None]) + image[None] * masks[:, None]
        assert torch.allclose(out, expected, atol=1e-6)


@pytest.mark.parametrize("grid, height, width", [(8, 32, 48), (5, 21, 17)])
def test_weighted_mask_sum_at_grid_resolution_equals_summing_the_full_size_masks(grid, height, width):
    """RISE keeps sum_i w_i M_i per row offset at grid resolution and expands it once: the same as summing the
    masks themselves (several chunks, so row offsets repeat within and across them)."""
    g = torch.Generator().manual_seed(1)
    sampler = RiseMasks(grid, 0.5, height, width, torch.device("cpu"))
    weighted = WeightedMaskSum(sampler, 3)
    expected = torch.zeros(3, height, width, dtype=torch.float64)
    for n in (16, 16, 7):
        masks, dy, right = sampler.draw(n, g)
        weights = torch.randn(n, 3, generator=g)
        weighted.add(weights, dy, right)
        expected += torch.einsum("nk,nhw->khw", weights.double(), masks.double())
    torch.testing.assert_close(weighted.total().double(), expected, rtol=0, atol=1e-4)


def test_region_game_masks_show_each_region_at_its_coalition_value():
    """Disjoint soft regions: a pixel is shown at outside + sum_r z_r f_r (no clamp needed); overlapping regions are
    clamped to [0, 1]; the mask buffer is reused chunk after chunk, growing when a chunk is larger."""
    g = torch.Generator().manual_seed(2)
    soft = torch.zeros(3, 6, 5)
    soft[0, :2], soft[1, 2:4], soft[2, 4:, :3] = 0.7, 1.0, 0.4                  # disjoint, partly soft
    overlapping = torch.cat([soft, torch.ones(1, 6, 5)])                          # a region covering everything
    image = torch.rand(3, 6, 5, generator=g)
    for regions in (soft, overlapping):
        game = RegionGame(lambda x: x[:, :1, 0, 0], image, regions, Constant(0.0), chunk_size=4)
        assert game.overlapping == (regions is overlapping)
        flat = regions.reshape(regions.shape[0], -1)
        for n in (2, 4, 3):
            z = torch.rand(n, regions.shape[0], generator=g)
            expected = ((1 - flat.sum(0)).clamp(0, 1) + z @ flat).clamp(0, 1).view(n, 6, 5)
            torch.testing.assert_close(game.masks(z), expected)
            scores = game(z)
            torch.testing.assert_close(scores[:, 0], image[0, 0, 0] * expected[:, 0, 0])


def test_centred_rise_is_plain_rise_minus_the_mean_score_times_coverage():
    image = _textured()
    plain = Rise(QuadrantModel(), perturbation="constant").explain(image, budget=64, seed=3)
    centred = Rise(QuadrantModel(), perturbation="constant", center=True).explain(image, budget=64, seed=3)
    masks = torch.cat([rise_masks(16, 8, 0.5, 32, 32, g, torch.device("cpu"))
                       for g in [torch.Generator().manual_seed(3)] for _ in range(4)])
    model = QuadrantModel()
    scores = model(image * masks[:, None])[:, 0]
    expected = ((scores - scores.mean())[:, None, None] * masks).sum(0) / (64 * 0.5)
    torch.testing.assert_close(centred.saliency[0], expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain.saliency, centred.saliency)
    quadrant = torch.zeros(1, 32, 32, dtype=torch.bool)
    quadrant[:, :16, :16] = True
    assert energy_pointing_game(centred.saliency, quadrant)[0] > 0.6   # no mean offset to subtract first


def _figure() -> tuple[torch.Tensor, tuple[int, int, int, int]]:
    """A dark stick figure on grey: head box (28, 8, 36, 16) of the 64 x 64 image."""
    img = torch.full((3, 64, 64), 0.5)
    img[:, 8:16, 28:36] = 1.0                      # head
    img[:, 16:40, 26:38] = 0.2                     # torso
    img[:, 40:60, 27:31] = 0.2                     # legs
    img[:, 40:60, 33:37] = 0.2
    return img, (28, 8, 36, 16)


def test_drise_localises_the_head_a_detector_depends_on():
    image, head = _figure()
    x1, y1, x2, y2 = head

    def detector(images):                          # one person box, scored only by how bright the head is
        s = images[:, :, y1:y2, x1:x2].mean((1, 2, 3)).clamp(0, 1).tolist()
        return [{"boxes": [[26, 8, 38, 60]], "scores": [v], "labels": [0]} for v in s]

    det = CallableDetector(detector, ["person"])
    scorer = DRiseScorer.for_detections(det, det.detect(image[None])[0])
    exp = DRise(scorer, grid=8).explain(image, budget=300, seed=0)
    head_mask = box_masks(torch.tensor([head], dtype=torch.float32), 64, 64)
    assert pointing_game(exp.saliency, head_mask, tolerance=4)[0] == 1.0
    body = box_masks(torch.tensor([[26, 8, 38, 60]], dtype=torch.float32), 64, 64)
    sal = exp.saliency - exp.saliency.min()
    assert (sal * head_mask).sum() / head_mask.sum() > 2 * (sal * (body & ~head_mask)).sum() / (body & ~head_mask).sum()


def _agrees_with_exact(relevance: torch.Tensor, exact: torch.Tensor, atol: float) -> bool:
    """The check the region methods must pass: the same top region as the exact Shapley values, the used regions
    in the same order above every unused one, and each value within ``atol`` of the exact one."""
    used = exact.abs() > 1e-9
    order = exact[used].argsort(descending=True)
    ranked = relevance[used][order]
    return bool(relevance.argmax() == exact.argmax() and (ranked[:-1] > ranked[1:]).all()
                and ranked[-1] > relevance[~used].max() and torch.allclose(relevance, exact, atol=atol))


def test_region_methods_rank_the_part_the_model_uses_first():
    image, _ = _figure()

    class HeadAndLegModel(QuadrantModel):          # additive over regions: head counts fully, the right leg half
        def __call__(self, images):
            head, right_leg = images[:, :, 8:16, 28:36], images[:, :, 40:60, 33:37]
            return (head.mean((1, 2, 3)) + 0.5 * right_leg.mean((1, 2, 3)))[:, None]

    parts = torch.zeros(4, 64, 64, dtype=torch.bool)
    parts[0, 16:40, 26:38] = True                  # torso (unused)
    parts[1, 40:60, 33:37] = True                  # right leg: used, half weight
    parts[2, 8:16, 28:36] = True                   # head: used, the most relevant (not region 0: ties go to 0)
    parts[3, 40:60, 27:31] = True                  # left leg (unused)
    # An additive game's Shapley value of a region is its own term: shown (image) minus hidden (constant 0).
    exact = torch.tensor([0.0, 0.5 * image[:, 40:60, 33:37].mean(), image[:, 8:16, 28:36].mean(), 0.0])
    assert exact.tolist() == pytest.approx([0.0, 0.1, 1.0, 0.0])
    # The check rejects what a broken method returns: zeros, a constant, the right values on the wrong regions.
    for wrong in (torch.zeros(4), torch.full((4,), 0.3), exact.roll(1), exact.flip(0), 0.5 * exact):
        assert not _agrees_with_exact(wrong, exact, atol=0.25), wrong
    for cls in (ExactShapley, BayesShapley, KernelShap, PermutationShapley, BetaShapley, Occlusion):
        exp = cls(HeadAndLegModel(), perturbation="constant").explain(image, parts, budget=64, seed=0)
        assert exp.relevance.shape == (1, 4), cls.name
        assert _agrees_with_exact(exp.relevance[0], exact, atol=1e-5), (cls.name, exp.relevance)
    # LIME's coefficients are the Shapley values of an additive game; its default ridge penalty shrinks them.
    exact_lime = Lime(HeadAndLegModel(), perturbation="constant", alpha=1e-6).explain(image, parts, budget=64, seed=0)
    assert _agrees_with_exact(exact_lime.relevance[0], exact, atol=1e-4), exact_lime.relevance
    lime = Lime(HeadAndLegModel(), perturbation="constant").explain(image, parts, budget=64, seed=0)
    assert _agrees_with_exact(lime.relevance[0], exact, atol=0.25), lime.relevance
    exact_exp = ExactShapley(HeadAndLegModel(), perturbation="constant").explain(image, parts)
    assert exact_exp.n_forward == 16
    assert torch.allclose(exact_exp.relevance.sum(1), exact_exp.full_score - exact_exp.empty_score, atol=1e-5)


class TwoTargetModel(QuadrantModel):
    num_targets = 2

    def __call__(self, images):
        h, w = images.shape[-2:]
        return torch.stack([images[:, :, :h // 2, :w // 2].mean((1, 2, 3)),
                            images[:, :, h // 2:, w // 2:].mean((1, 2, 3))], 1)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_budget_is_honoured_determinism_and_shared_targets(name):
    cls = METHODS[name]
    model = TwoTargetModel()
    image = _textured()
    regions = grid_regions(32, 32, 2, 3)                  # 6 regions
    budget = 64 if name == "exact_shapley" else 50
    kw = {"n_segments": 6} if name in ("lime",) else {}
    method = cls(model, **kw)
    a = method.explain(image, regions, budget=budget, seed=1)
    b = method.explain(image, regions, budget=budget, seed=1)
    assert torch.equal(a.saliency, b.saliency)
    assert a.saliency.shape == (2, 32, 32) and a.method == name and a.options["seed"] == 1
    exact_spend = {"exact_shapley": 64, "occlusion": 7, "permutation_shapley": 2 + 2 * 4 * 5}
    assert a.n_forward == exact_spend.get(name, budget)   # both targets from the same forwards
    if name in ("rise", "drise", "lime", "beta_shapley", "decam"):   # the others are exact on this additive game
        c = method.explain(image, regions, budget=budget, seed=2)
        assert not torch.equal(a.saliency, c.saliency)


def test_too_small_budgets_are_refused():
    model = QuadrantModel()
    regions = grid_regions(32, 32, 3, 3)
    with pytest.raises(BudgetError, match="2\\^9 = 512"):
        ExactShapley(model).explain(_textured(), regions, budget=100)
    with pytest.raises(BudgetError, match="at least 4 forwards"):
        BayesShapley(model).explain(_textured(), regions, budget=3)
    with pytest.raises(ValueError, match="decay must lie in \\(0, 1\\), got 1.5"):
        BayesShapley(model, decay=1.5)
    with pytest.raises(BudgetError, match="permutation"):
        PermutationShapley(model).explain(_textured(), regions, budget=10)
    with pytest.raises(BudgetError, match="positive"):
        Rise(model).explain(_textured(), budget=0)


def test_label_maps_and_painting():
    labels = torch.arange(4).repeat_interleave(8).view(1, 32).expand(32, 32)
    exp = Occlusion(QuadrantModel(), perturbation="constant").explain(_textured(), labels)
    assert exp.relevance.shape == (1, 4) and exp.n_forward == 5
    assert torch.equal(exp.saliency, paint(exp.relevance, (labels[None] == torch.arange(4).view(-1, 1, 1)).float()))


class SquareModel(QuadrantModel):
    """Not additive: the quadrant's mean brightness squared, and the whole image's mean."""
    num_targets = 2

    def __call__(self, images):
        return torch.stack([super().__call__(images)[:, 0] ** 2, images.mean((1, 2, 3))], 1)


@pytest.mark.parametrize("overlap", [False, True])
def test_region_occlusion_hides_exactly_one_region_per_forward(overlap):
    # soft regions (a partition, or one that overlaps and leaves pixels outside), five of them with chunks of 2: the
    # image and the hidden regions span several chunks
    g = torch.Generator().manual_seed(3)
    regions = torch.rand(5, 32, 32, generator=g)
    regions = regions * 1.3 if overlap else regions / regions.sum(0)
    image = _textured()
    model = SquareModel()
    model.chunk_size = 2
    exp = Occlusion(model, perturbation="constant").explain(image, regions)
    masks = [torch.ones(32, 32)]
    for r in range(5):
        rest = regions.sum(0) - regions[r]
        masks.append((rest + (1 - regions.sum(0)).clamp(0, 1)).clamp(0, 1))
    scores = model(torch.stack(masks)[:, None] * image)           # constant(0) baseline: image * mask
    torch.testing.assert_close(exp.relevance, (scores[0] - scores[1:]).T)
    assert exp.n_forward == 6


# ----------------------------------------------------------------------------------------------- metrics
def test_deletion_and_insertion_prefer_the_true_saliency():
    model, image = QuadrantModel(), _textured()
    good = torch.zeros(1, 32, 32)
    good[:, :16, :16] = 1 + torch.rand(16, 16)
    bad = torch.zeros(1, 32, 32)
    bad[:, 16:, 16:] = 1
    d_good = deletion_insertion(model, image, good, mode="deletion", substrate="constant", steps=16)
    d_bad = deletion_insertion(model, image, bad, mode="deletion", substrate="constant", steps=16)
    assert d_good.auc[0] < d_bad.auc[0] and d_good.n_forward == 17 and d_good.substrate == "constant(0.0)"
    i_good = deletion_insertion(model, image, good, mode="insertion", substrate="constant", steps=16)
    i_bad = deletion_insertion(model, image, bad, mode="insertion", substrate="constant", steps=16)
    assert i_good.auc[0] > i_bad.auc[0]
    assert torch.isclose(d_good.curves[0, 0], model(image[None])[0, 0])          # starts from the full image
    assert d_good.curves[0, -1] == 0                                                # ends on the substrate


def test_pointing_game_and_energy_pointing_game_by_hand():
    sal = torch.zeros(2, 40, 40)
    sal[0, 5, 5] = 1.0                 # peak 15 px left of the box's edge (x=20): a hit at 15 px tolerance
    sal[1, 5, 4] = 1.0                 # 16 px away: a miss
    masks = box_masks(torch.tensor([[20, 0, 30, 10], [20, 0, 30, 10]], dtype=torch.float32), 40, 40)
    assert pointing_game(sal, masks).tolist() == [True, False]
    sal = torch.zeros(1, 10, 10)
    sal[0, :5] = 1.0                   # 50 positive pixels, 20 of them in the box
    sal[0, 5:] = -3.0                  # negative saliency does not count
    box = box_masks(torch.tensor([[0, 3, 10, 7]], dtype=torch.float32), 10, 10)
    assert math.isclose(energy_pointing_game(sal, box)[0].item(), 20 / 50, abs_tol=1e-6)
    assert torch.isnan(energy_pointing_game(torch.zeros(1, 10, 10), box)[0])     # uninformative: undefined


def test_relative_error():
    assert relative_error(torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 2.0]]))[0] == 0
    assert math.isclose(relative_error(torch.tensor([[0.0, 0.0]]), torch.tensor([[3.0, 4.0]]))[0].item(), 1.0)
