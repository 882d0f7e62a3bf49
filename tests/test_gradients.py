"""Gradient baselines (explainers/gradients.py) and the scorers' differentiable path (detection/scorers_grad.py):
IG's completeness on a small network, Input×Gradient of a linear model, Grad-CAM on the layer of the quadrant a
model sees, the same scores with and without the graph, cost counted in forward-equivalents, and the
"needs gradients" error for a black box at explain time and at job-check time."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from detection.models.blackbox import CallableDetector
from detection.models.classifier import ImageClassifier
from detection.scorers import ClassifierScorer, DRiseScorer
from detection.scorers_grad import NoGradientsError
from explainers.gradients import GradCam, InputXGradient, IntegratedGradients, NeedsGradientsError


class SmallNet(nn.Module):
    """conv -> ReLU -> conv -> global mean -> linear: a small nonlinear CNN with a 4 x 4 feature map at 16 x 16."""

    def __init__(self, classes: int = 3, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def small_classifier(net: nn.Module | None = None, multi_label: bool = False) -> ImageClassifier:
    return ImageClassifier(net or SmallNet(), ["a", "b", "c"], multi_label=multi_label, mean=(0, 0, 0),
                           std=(1, 1, 1), device="cpu", amp=False)


def image(seed: int = 0, size: int = 16) -> torch.Tensor:
    return torch.rand(3, size, size, generator=torch.Generator().manual_seed(seed))


def test_integrated_gradients_are_complete_on_a_small_network():
    """Sum of attributions = f(x) - f(baseline) within the integration error (Sundararajan et al.'s axiom), for each
    of the scorer's targets; and the error shrinks with more steps."""
    scorer = ClassifierScorer(small_classifier(), [0, 2])
    x = image()
    baseline = x.mean((1, 2), keepdim=True).expand_as(x)
    gap = scorer(x[None]) - scorer(baseline[None])                           # [1, T]
    exp = IntegratedGradients(scorer, steps=64).explain(x)
    assert exp.saliency.shape == (2, 16, 16) and exp.relevance is None
    err64 = (exp.saliency.sum((1, 2)) - gap[0]).abs()
    assert err64.max() < 1e-3 * max(1.0, float(gap.abs().max())) + 1e-5, (exp.saliency.sum((1, 2)), gap)
    assert exp.n_forward == 3 * 64 * 2                          # forward + backward (2) per image, per target
    coarse = IntegratedGradients(scorer, steps=2).explain(x)
    assert coarse.n_forward == 12
    # a wrong baseline (zeros) breaks the identity with the mean-colour gap
    zeros = IntegratedGradients(scorer, steps=64, perturbation="constant").explain(x)
    gap0 = scorer(x[None]) - scorer(torch.zeros(1, 3, 16, 16))
    torch.testing.assert_close(zeros.saliency.sum((1, 2)), gap0[0], atol=1e-3, rtol=1e-3)


def test_a_budget_sets_the_integration_steps():
    scorer = ClassifierScorer(small_classifier(), [1])
    exp = IntegratedGradients(scorer).explain(image(), budget=30)
    assert exp.n_forward == 30 and exp.options["budget"] == 30           # 10 steps x (forward + backward)
    from explainers.base import BudgetError

    with pytest.raises(BudgetError, match="integrated_gradients .* at least 6 forwards"):
        IntegratedGradients(scorer).explain(image(), budget=5)


def test_input_x_gradient_of_a_linear_model_is_its_terms():
    """f(x) = sum_i w_i x_i: Input x Gradient gives w_i x_i exactly, summed over channels."""
    class Linear:
        device = torch.device("cpu")
        chunk_size = 4
        num_targets = 1

        def __init__(self):
            self.w = torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(1))

        def __call__(self, images):
            return (images * self.w).sum((1, 2, 3))[:, None]

    scorer, x = Linear(), image(size=8)
    exp = InputXGradient(scorer).explain(x)
    torch.testing.assert_close(exp.saliency[0], (x * scorer.w).sum(0))
    assert exp.n_forward == 3


class ColourNet(nn.Module):
    """Class 0 = how much red (R - G) there is, class 1 = how much green (G - R), through a 4 x 4 feature map."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 2, 4, stride=4), nn.ReLU())
        with torch.no_grad():
            w = torch.zeros(2, 3, 4, 4)
            w[0, 0], w[0, 1], w[1, 1], w[1, 0] = 1 / 16, -1 / 16, 1 / 16, -1 / 16
            self.features[0].weight.copy_(w)
            self.features[0].bias.zero_()

    def forward(self, x):
        return self.features(x).mean((2, 3)) * 4


def test_grad_cam_lights_where_each_class_is_and_relevance_summarises():
    """Red in the top-left quadrant, green in the bottom-right: Grad-CAM of 'red' is the top-left, of 'green' the
    bottom-right; relevance over the quadrants is the mean saliency in each (regions only summarise)."""
    scorer = ClassifierScorer(small_classifier(ColourNet()), [0, 1])
    x = torch.full((3, 16, 16), 0.5)
    x[:, :8, :8] = torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1)
    x[:, 8:, 8:] = torch.tensor([0.1, 0.9, 0.5]).view(3, 1, 1)
    regions = torch.zeros(4, 16, 16, dtype=torch.bool)
    for i, (r, c) in enumerate([(0, 0), (0, 8), (8, 0), (8, 8)]):
        regions[i, r:r + 8, c:c + 8] = True
    exp = GradCam(scorer).explain(x, regions)
    assert exp.relevance.argmax(1).tolist() == [0, 3]
    red, green = exp.saliency
    assert red[:8, :8].mean() > 5 * red[8:, 8:].mean() and green[8:, 8:].mean() > 5 * green[:8, :8].mean()
    assert exp.n_forward == 1 + 3 * 2                         # the probe for the default layer + fwd/bwd per target
    named = GradCam(scorer, layer="features.1").explain(x)
    torch.testing.assert_close(named.saliency, exp.saliency)


def test_the_differentiable_path_gives_the_scores_of_the_plain_one():
    clf = small_classifier(multi_label=True)
    scorer = ClassifierScorer(clf, [0, 1, 2])
    batch = torch.stack([image(0), image(1)])
    torch.testing.assert_close(scorer.differentiable(batch.requires_grad_()), scorer(batch.detach()))


# ----------------------------------------------------------------------------------------------- black boxes
def _black_box_scorer() -> DRiseScorer:
    det = CallableDetector(lambda images: [{"boxes": [[2.0, 2.0, 10.0, 12.0]], "scores": [0.9], "labels": [0]}
                                           for _ in images], ["person"])
    return DRiseScorer.for_detections(det, det.detect(torch.rand(1, 3, 16, 16))[0])


@pytest.mark.parametrize("cls", [IntegratedGradients, InputXGradient, GradCam])
def test_a_black_box_gets_a_needs_gradients_error_at_explain_time(cls):
    scorer = _black_box_scorer()
    with pytest.raises(NeedsGradientsError, match=f"{cls.name} needs gradients: CallableDetector is a black box"):
        cls(scorer).explain(image())
    with pytest.raises(NoGradientsError, match="needs gradients"):
        scorer.differentiable(torch.rand(1, 3, 16, 16))


def test_a_scorer_that_detaches_its_scores_is_refused():
    class Detached:
        device = torch.device("cpu")
        chunk_size = 4
        num_targets = 1

        def __call__(self, images):
            with torch.no_grad():
                return images.mean((1, 2, 3))[:, None]

    with pytest.raises(NeedsGradientsError, match="without an autograd graph"):
        InputXGradient(Detached()).explain(image())


@pytest.mark.parametrize("kind", ["callable", "onnx"])
def test_jobs_refuse_a_gradient_method_on_a_black_box_detector(kind):
    from tasks.explain_jobs import check_jobs
    from tasks.params import ParamsError, parse_params

    spec = {"id": "bb", "kind": kind, **({"entrypoint": "m:f"} if kind == "callable" else {"weights": "m.onnx"})}
    data = {"infer": {"detectors": [spec]},
            "explain": {"jobs": [{"method": "integrated_gradients", "targets": "persons", "regions": "none"}]}}
    with pytest.raises(ParamsError, match=r"explain\.jobs\[0\]: integrated_gradients needs gradients"):
        check_jobs(parse_params(data))
    ok = {"explain": {"jobs": [{"method": "integrated_gradients", "targets": "persons", "regions": "none"}]}}
    check_jobs(parse_params(ok))


# ----------------------------------------------------------------------------------------------- real adapters
def test_yolo_d_rise_scores_with_gradients_match_and_every_method_runs():
    """A random-init YOLO (yolov8n.yaml): the differentiable D-RISE similarity equals the scorer's, and IG,
    Input x Gradient and Grad-CAM (its Detect head's three input maps, the letterbox undone) give finite maps."""
    from detection.models.yolo import YoloDetector

    torch.manual_seed(0)
    yolo = YoloDetector("yolov8n.yaml", nc=2, imgsz=96, conf=0.0, device="cpu", batch_size=4)
    x = torch.rand(3, 72, 96, generator=torch.Generator().manual_seed(0))
    scorer = DRiseScorer.for_detections(yolo, yolo.detect(x[None])[0], index=range(2))
    batch = torch.stack([x, x.flip(-1)])
    torch.testing.assert_close(scorer.differentiable(batch.clone().requires_grad_()), scorer(batch), atol=1e-5,
                               rtol=1e-4)
    assert scorer.gradients_unavailable() is None
    for cls, kw in ((IntegratedGradients, {"steps": 4}), (InputXGradient, {}), (GradCam, {})):
        exp = cls(scorer, **kw).explain(x)
        assert exp.saliency.shape == (2, 72, 96) and torch.isfinite(exp.saliency).all(), cls.name
        assert exp.saliency.abs().sum() > 0, cls.name
    assert GradCam(scorer).explain(x).n_forward == 3 * 2 * 3                  # 2 targets x 3 layers


def test_gradients_after_a_black_box_forward_of_the_same_shape():
    """The Detect head caches its anchor grid per input shape; built under inference mode by a black-box forward
    (detect, D-RISE) it used to break the gradient path's backward of the same shape."""
    from detection.models.yolo import YoloDetector

    torch.manual_seed(0)
    yolo = YoloDetector("yolov8n.yaml", nc=2, imgsz=96, conf=0.0, device="cpu", batch_size=4)
    x = torch.rand(3, 72, 96, generator=torch.Generator().manual_seed(1))
    scorer = DRiseScorer.for_detections(yolo, yolo.detect(x[None])[0], index=range(1))
    scorer(x[None])                                         # same shape as the gradient forward below
    exp = InputXGradient(scorer).explain(x)
    assert torch.isfinite(exp.saliency).all() and exp.saliency.abs().sum() > 0
    scorer(x[None])                                         # and the black-box path still runs after it
    torch.testing.assert_close(scorer.differentiable(x[None].clone().requires_grad_()), scorer(x[None]), atol=1e-5,
                               rtol=1e-4)


def test_grad_cam_on_the_torchscript_demo_classifier_runs_its_eager_copy(tmp_path):
    """A loaded TorchScript module cannot be hooked: the demo SceneNet is rebuilt eagerly with the same weights."""
    from detection.models.scene_classifier import SceneNet, load_classifier, save_classifier

    torch.manual_seed(0)
    clf = ImageClassifier(SceneNet(2, width=4).eval(), ["a", "b"], multi_label=True, mean=(0, 0, 0),
                          std=(1, 1, 1), device="cpu")
    loaded = load_classifier(save_classifier(clf, tmp_path / "clf.pt"), device="cpu")
    scorer = ClassifierScorer(loaded, [0, 1])
    found = scorer.cam_layers(64, 64)
    batch = torch.rand(2, 3, 64, 64)
    torch.testing.assert_close(scorer.differentiable(batch, network=found.network), scorer(batch), atol=1e-5,
                               rtol=1e-4)
    exp = GradCam(scorer).explain(batch[0])
    assert exp.saliency.shape == (2, 64, 64) and torch.isfinite(exp.saliency).all()
