"""Every method on hand-built models (explainers/registry.py's METHODS): pixel methods localise what the model sees,
region methods rank the parts it uses as the exact Shapley values do, budgets, determinism, shared targets, budgets
too small refused."""
import pytest
import torch

from explainers import (
    METHODS,
    BayesShapley,
    BudgetError,
    ContinuousCoalitionShapley,
    DeCam,
    ExactShapley,
    KernelShap,
    Lime,
    Occlusion,
    PermutationShapley,
    Rise,
    energy_pointing_game,
    grid_regions,
    pointing_game,
)
from tests.image_models import QuadrantModel, stick_figure, textured_image
from tests.learned_fixture import TOY_MODEL_METHODS, learned_kwargs
from tests.rexl_fixture import GRID as REXL_GRID


@pytest.mark.parametrize("method", [Rise(QuadrantModel(), perturbation="constant"),
                                    Occlusion(QuadrantModel(), window=8, stride=4, perturbation="constant"),
                                    DeCam(QuadrantModel(), grid=4, sparsity=0.3, perturbation="constant")])
def test_pixel_methods_localise_the_quadrant_the_model_sees(method):
    image = textured_image()
    exp = method.explain(image, budget=400, seed=0)
    quadrant = torch.zeros(1, 32, 32, dtype=torch.bool)
    quadrant[:, :16, :16] = True
    centred = exp.saliency - exp.saliency.mean()                # RISE maps carry a constant offset
    assert energy_pointing_game(centred, quadrant)[0] > 0.6      # chance: 0.25
    assert pointing_game(exp.saliency, quadrant, tolerance=2)[0] == 1.0     # NaN (undefined) is truthy


def _agrees_with_exact(relevance: torch.Tensor, exact: torch.Tensor, atol: float) -> bool:
    """The check the region methods must pass: the same top region as the exact Shapley values, the used regions
    in the same order above every unused one, and each value within ``atol`` of the exact one."""
    used = exact.abs() > 1e-9
    order = exact[used].argsort(descending=True)
    ranked = relevance[used][order]
    return bool(relevance.argmax() == exact.argmax() and (ranked[:-1] > ranked[1:]).all()
                and ranked[-1] > relevance[~used].max() and torch.allclose(relevance, exact, atol=atol))


def test_region_methods_rank_the_part_the_model_uses_first():
    image, _ = stick_figure()

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
    for cls in (ExactShapley, BayesShapley, KernelShap, PermutationShapley, ContinuousCoalitionShapley, Occlusion):
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


@pytest.mark.parametrize("name", TOY_MODEL_METHODS)
def test_budget_is_honoured_determinism_and_shared_targets(name):
    cls = METHODS[name]
    model = TwoTargetModel()
    image = textured_image()
    regions = grid_regions(32, 32, 2, 3)                  # 6 regions
    budget = 64 if name == "exact_shapley" else 50
    kw = {"n_segments": 6} if name in ("lime",) else {}
    kw.update(learned_kwargs(cls, model, players=6, image_size=(32, 32)))   # a learned one: a file for this model
    method = cls(model, **kw)
    a = method.explain(image, regions, budget=budget, seed=1)
    b = method.explain(image, regions, budget=budget, seed=1)
    assert torch.equal(a.saliency, b.saliency)
    assert a.saliency.shape == (2, 32, 32) and a.method == name and a.options["seed"] == 1
    exact_spend = {"exact_shapley": 64, "occlusion": 7, "permutation_shapley": 2 + 2 * 4 * 5,
                   # white-box: forward + backward = 3 forward-equivalents per image and target
                   "integrated_gradients": 3 * 2 * (50 // 6), "input_x_gradient": 3 * 2, "grad_cam": 3 * 2,
                   "igos_pp": 3 * 4 * 2 * 2,      # one iteration of 4 terms x 2 IG steps (what 50 buys) x 2 targets
                   "rexl": 2 + 2 * (REXL_GRID ** 2 - 1),   # v(start), v(end) and a forward per step and target
                   "fastshap": 2, "fastshap_grid": 2,      # v(all), v(none): the network explains the rest
                   "fastshap_grid_bayes": 2 ** 4}         # the fixture's 2 x 2 cells: every coalition, exact
    assert a.n_forward == exact_spend.get(name, budget)   # both targets from the same forwards
    # the others are exact on this additive game
    if name in ("rise", "drise", "lime", "continuous_coalition_shapley", "decam"):
        c = method.explain(image, regions, budget=budget, seed=2)
        assert not torch.equal(a.saliency, c.saliency)


def test_too_small_budgets_are_refused():
    model = QuadrantModel()
    regions = grid_regions(32, 32, 3, 3)
    with pytest.raises(BudgetError, match="2\\^9 = 512"):
        ExactShapley(model).explain(textured_image(), regions, budget=100)
    with pytest.raises(BudgetError, match="at least 4 forwards"):
        BayesShapley(model).explain(textured_image(), regions, budget=3)
    with pytest.raises(ValueError, match="decay must lie in \\(0, 1\\), got 1.5"):
        BayesShapley(model, decay=1.5)
    with pytest.raises(BudgetError, match="permutation"):
        PermutationShapley(model).explain(textured_image(), regions, budget=10)
    with pytest.raises(BudgetError, match="positive"):
        Rise(model).explain(textured_image(), budget=0)
