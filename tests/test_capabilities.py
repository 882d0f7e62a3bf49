"""What a method declares it is (class attributes on the explainer), and the Scorer contract explain() checks.

The attributes replace the lists of method names that params validation, the CLI and the report kept; these tests
pin them to what the validation enforced before (regions for occlusion, LIME and the Shapley family; detections for
D-RISE), check that each attribute is true of the class (Shapley values are efficient, regions-only-summarise
methods report region means), and that a new method needs only its module and its registry line."""
from __future__ import annotations

import pytest
import torch

from detection.models.blackbox import CallableDetector
from detection.scorers import ClassifierScorer, DRiseScorer
from explainers import METHODS, Explainer, Scorer, ScorerError
from explainers.base import region_means
from explainers.perturb import Constant
from explainers.registry import RENAMED, method_names, unknown_method, without_detections
from tasks.explain_jobs import check_jobs
from tasks.params import ParamsError, parse_params
from tests.learned_fixture import (
    TOY_MODEL_METHODS,
    fastshap_file,
    learned_kwargs,
    tiny_fastshap_grid,
    tiny_fastshap_grid_detector,
)
from tests.rexl_fixture import policy_file

H = W = 12
SHAPLEY = {"exact_shapley", "kernel_shap", "bayes_shapley", "permutation_shapley", "continuous_coalition_shapley",
           "sag", "fastshap", "fastshap_bayes"}           # SAG's relevance: its heuristic's BayesShapley values
GRADIENTS = {"integrated_gradients", "input_x_gradient", "grad_cam", "igos_pp"}
CAPABILITIES = ("needs_regions", "accepts_regions", "needs_detections", "needs_classes", "needs_gradients",
                "needs_feature_maps",
                "needs_trained_weights", "shapley_values", "fixed_players", "per_target_regions")


def stripes(M: int) -> torch.Tensor:
    """M vertical stripes as a bool stack [M, H, W]."""
    col = torch.div(torch.arange(W) * M, W, rounding_mode="floor")
    return (col.view(1, 1, W) == torch.arange(M).view(-1, 1, 1)).expand(M, H, W).clone()


class StripeScorer:
    """Two targets of the stripes' mean brightness (channel 0): a sum, and a product of the first two (interacting)."""

    device = torch.device("cpu")
    chunk_size = 16
    num_targets = 2

    def __init__(self, M: int = 3):
        flat = stripes(M).reshape(M, -1).float()
        self.weights = (flat / flat.sum(1, keepdim=True)).T

    def __call__(self, images):
        z = images[:, 0].reshape(images.shape[0], -1) @ self.weights
        return torch.stack([z.sum(1), z[:, 0] * z[:, 1]], 1)


def ones() -> torch.Tensor:
    return torch.ones(3, H, W)


def build(cls, scorer, players: int | None = None, **kw):
    """``cls(scorer, **kw)``; a learned explainer (``needs_trained_weights``) gets a trained file of
    tests/learned_fixture.py (``players``: the regions' count for a fixed-player one) and the scorer the weights
    fingerprint that file was trained for."""
    return cls(scorer, **learned_kwargs(cls, scorer, players, kw.get("perturbation", "constant"), (H, W)), **kw)


# ----------------------------------------------------------------------------------------------- the declarations
def test_capabilities_say_what_the_validation_enforced():
    """Before the attributes: PIXEL_METHODS = (rise, drise, decam), every other method needed regions; drise (only)
    was rejected for classes. The gradient methods (explainers/gradients.py) are white-box pixel maps; RExL is the
    learned one (a trained policy), a pixel map whose regions only summarise it."""
    assert method_names(needs_detections=True) == ["drise", "fastshap_grid_detector"]
    assert method_names(needs_feature_maps=True) == ["fastshap_grid_detector"]     # a YOLO's head maps
    assert set(method_names(shapley_values=True)) == SHAPLEY
    assert set(method_names(needs_gradients=True)) == GRADIENTS
    assert method_names(needs_trained_weights=True) == ["rexl", "fastshap", "fastshap_bayes", "fastshap_grid",
                                                        "fastshap_grid_bayes", "fastshap_grid_detector"]
    assert method_names(needs_classes=True) == ["fastshap_grid", "fastshap_grid_bayes"]   # a classifier's classes
    assert method_names(fixed_players=True) == ["fastshap", "fastshap_bayes"]       # FastSHAP's trained players
    assert method_names(per_target_regions=True) == ["rexl", "fastshap"]           # each target's own regions
    for name in method_names(needs_trained_weights=True):
        assert METHODS[name].trained_file_option in ("policy", "weights") and METHODS[name].trained_file_hint
    pixel_maps = {"rise", "drise", "rexl", "fastshap_grid", "fastshap_grid_bayes",       # regions only summarise them
                  "fastshap_grid_detector"}
    assert set(method_names(needs_regions=True)) == set(METHODS) - pixel_maps - {"decam"} - GRADIENTS
    assert set(method_names(accepts_regions=False)) == pixel_maps | GRADIENTS
    for name, cls in METHODS.items():
        assert all(isinstance(getattr(cls, c), bool) for c in CAPABILITIES), name
        assert cls.accepts_regions or not cls.needs_regions, name       # needing regions implies playing on them
    with pytest.raises(AttributeError):
        method_names(needs_regionz=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_params_validation_reads_the_attributes(name, tmp_path, monkeypatch):
    cls = METHODS[name]
    monkeypatch.chdir(tmp_path)                  # no audited model here: a learned explainer's file is checked alone
    files = {"policy": lambda: policy_file(tmp_path),
             "weights": lambda: (tiny_fastshap_grid(4, (H, W)).save(tmp_path / "grid.pt") if cls.needs_classes else
                                 tiny_fastshap_grid_detector().save(tmp_path / "detector_grid.pt")
                                 if cls.needs_feature_maps else fastshap_file(tmp_path, 11))}
    options = {cls.trained_file_option: str(files[cls.trained_file_option]())} if cls.needs_trained_weights else {}
    for targets in ("persons", "classes"):
        for regions in ("none", "superpixels"):
            data = {"explain": {"jobs": [{"method": name, "targets": targets, "regions": regions,
                                          "options": options}]}}
            refused = (cls.needs_regions and regions == "none") or (cls.needs_detections and targets == "classes") \
                or cls.fixed_players or (cls.needs_classes and targets != "classes")
            if refused:
                with pytest.raises(ParamsError, match=rf"explain\.jobs\[0\]: {name} (needs regions|explains detect|"
                                                      rf"plays the body parts its trained file names|"
                                                      rf"explains classifier classes)"):
                    check_jobs(parse_params(data))
            else:
                check_jobs(parse_params(data))


@pytest.mark.parametrize("name", sorted(SHAPLEY))
def test_shapley_values_are_efficient(name):
    budget = 16 if name == "exact_shapley" else 12                     # 4 players: below 2^4, an estimate
    exp = build(METHODS[name], StripeScorer(4), 4, perturbation=Constant(0.0)).explain(ones(), stripes(4),
                                                                                        budget=budget)
    torch.testing.assert_close(exp.relevance.sum(1), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", TOY_MODEL_METHODS)
def test_regions_are_players_or_summaries_as_declared(name):
    """accepts_regions False: relevance is the mean saliency in each region; methods that need regions play on
    default regions without them, the others give pixel maps (relevance None)."""
    cls = METHODS[name]
    exp = build(cls, StripeScorer(), 3, perturbation=Constant(0.0)).explain(ones(), stripes(3), budget=40, seed=0)
    summary = region_means(exp.saliency, stripes(3).float())
    assert torch.allclose(exp.relevance, summary, atol=1e-5) or cls.accepts_regions, name
    plain = build(cls, StripeScorer(), 3, perturbation=Constant(0.0)).default_regions(ones())
    # occlusion: windows; a fixed-player method: only the players it was trained on, no default
    assert (plain is not None) == (cls.needs_regions and name != "occlusion" and not cls.fixed_players), name


def test_a_new_method_is_its_class_and_one_registry_line(monkeypatch):
    """What the validation needs of a method comes from its class: registered, it is checked like the others."""
    class Halves(Explainer):
        name = "halves"
        needs_regions = accepts_regions = True

        def _explain(self, image, regions, budget, generator):
            relevance = self.score(image[None]).T.expand(-1, regions.shape[0])
            return torch.einsum("tr,rhw->thw", relevance, regions), relevance, {}

    monkeypatch.setitem(METHODS, "halves", Halves)
    ok = {"explain": {"jobs": [{"method": "halves", "targets": "persons", "regions": "grid"}]}}
    assert check_jobs(parse_params(ok)).explain.jobs[0].method == "halves"
    with pytest.raises(ParamsError, match="halves needs regions"):
        check_jobs(parse_params({"explain": {"jobs": [{"method": "halves", "targets": "persons", "regions": "none"}]}}))
    assert "halves" in method_names(needs_regions=True)


# ----------------------------------------------------------------------------------------------- the rename
def test_beta_shapley_is_renamed_with_an_error_not_an_alias():
    assert "beta_shapley" not in METHODS and RENAMED["beta_shapley"][0] in METHODS
    assert "was renamed 'continuous_coalition_shapley'" in unknown_method("beta_shapley")
    assert "not an explainer" in unknown_method("shap")
    from flows.single import explain_file

    with pytest.raises(ValueError, match="--method: 'beta_shapley' was renamed 'continuous_coalition_shapley'"):
        explain_file("no-such-image.png", method="beta_shapley")


def test_classifier_counterpart_of_a_detection_method():
    assert without_detections("drise") == "rise" and without_detections("lime") == "lime"


def test_cli_help_lists_the_registry():
    import argparse

    from flows.cli import build_parser

    parser = build_parser()
    explain = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices["explain"]
    text = " ".join(explain.format_help().split())
    for name in METHODS:
        assert name in text
    assert "<methods>" not in text and "beta_shapley -> continuous_coalition_shapley" in text


# ----------------------------------------------------------------------------------------------- the Scorer contract
def test_pipeline_scorers_satisfy_the_protocol():
    class Classifier:
        device, num_classes, multi_label = torch.device("cpu"), 2, False

        def logits(self, images):
            return images.mean((2, 3))[:, :2]

    det = CallableDetector(lambda images: [{"boxes": [], "scores": [], "labels": []} for _ in images], ["person"])
    for scorer in (ClassifierScorer(Classifier()), DRiseScorer.for_detections(det, det.detect(ones()[None])[0]),
                   StripeScorer()):
        assert isinstance(scorer, Scorer), type(scorer).__name__


class Wrong(StripeScorer):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def __call__(self, images):
        return self.out(super().__call__(images))


@pytest.mark.parametrize("out, shape", [(lambda s: s[:, 0], r"\(\d+,\)"), (lambda s: s[:1], r"\(1, 2\)"),
                                        (lambda s: s[:, :1], r"\(\d+, 1\)"), (lambda s: s.tolist(), "a list")])
@pytest.mark.parametrize("name", ["rise", "kernel_shap"])
def test_scores_of_the_wrong_shape_name_the_scorer_and_the_shapes(name, out, shape):
    with pytest.raises(ScorerError, match=rf"{name}: scorer Wrong returned {shape} for images \(\d+, 3, {H}, {W}\); "
                                          r"a Scorer returns scores \[B, T\] = \[\d+, 2\]"):
        METHODS[name](Wrong(out)).explain(ones(), stripes(3), budget=8)


def test_a_method_returning_the_wrong_shapes_is_a_bug():
    class Flat(Explainer):
        name = "flat"

        def _explain(self, image, regions, budget, generator):
            return self.score(image[None])[0], None, {"full_score": torch.zeros(3)}

    with pytest.raises(AssertionError, match=r"flat returned saliency \(2,\), expected \(2, 12, 12\); full_score "
                                             r"\(3,\), expected \(2,\)"):
        Flat(StripeScorer()).explain(ones())
    with pytest.raises(AssertionError, match=r"relevance None, expected \(2, 3\)"):
        Flat(StripeScorer()).explain(ones(), stripes(3))


class OneTarget:
    """Target ``t`` of a scorer, alone (its fingerprint kept)."""

    def __init__(self, scorer, t: int):
        self.scorer, self.t = scorer, t
        self.device, self.chunk_size, self.num_targets = scorer.device, scorer.chunk_size, 1
        self.weights_sha256 = getattr(scorer, "weights_sha256", None)

    def __call__(self, images):
        return self.scorer(images)[:, self.t:self.t + 1]


@pytest.mark.parametrize("name", method_names(per_target_regions=True))
def test_per_target_regions_give_each_target_its_own_call(name):
    """Every method that takes regions [T, R, H, W]: target t's row is its one-target call on its own regions
    (a region without a pixel of that target: relevance 0), within the budget per target."""
    cls = METHODS[name]
    regions = torch.stack([stripes(3), stripes(3)])
    regions[1, 1] = False                                           # target 1 lacks the middle stripe
    scorer = StripeScorer()
    both = build(cls, scorer, 3, perturbation=Constant(0.0)).explain(ones() * 0.5, regions, budget=40, seed=0)
    assert both.relevance.shape == (2, 3) and both.saliency.shape == (2, H, W) and both.n_forward <= 2 * 40
    assert both.relevance[1, 1] == 0
    for t in range(2):
        one = build(cls, OneTarget(scorer, t), 3, perturbation=Constant(0.0)).explain(ones() * 0.5, regions[t],
                                                                                      budget=40, seed=0)
        torch.testing.assert_close(both.relevance[t], one.relevance[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(both.saliency[t], one.saliency[0], atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="hold 2 targets' players, the scorer has 3 targets"):
        build(cls, StripeScorer3(), 3, perturbation=Constant(0.0)).explain(ones(), regions, budget=40)


class StripeScorer3(StripeScorer):
    """StripeScorer with a third target (the first stripe alone)."""

    num_targets = 3

    def __call__(self, images):
        z = images[:, 0].reshape(images.shape[0], -1) @ self.weights
        return torch.cat([super().__call__(images), z[:, :1]], 1)


@pytest.mark.parametrize("name", sorted(set(TOY_MODEL_METHODS) - set(method_names(per_target_regions=True))))
def test_methods_without_per_target_regions_refuse_them(name):
    cls = METHODS[name]
    regions = torch.stack([stripes(3), stripes(3)])
    with pytest.raises(ValueError, match=r"which this method does not take|the 3 player masks \[3, H, W\] in"):
        build(cls, StripeScorer(), 3, perturbation=Constant(0.0)).explain(ones(), regions, budget=40)
