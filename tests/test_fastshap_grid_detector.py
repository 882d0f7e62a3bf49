"""FastShapGridDetector (issue 19, the detector variant of FastShapGrid): a network trained seconds on an additive
game learns it, efficiency holds exactly per detection, exactly 2 model forwards and 1 explainer forward whatever the
number of targets, the guard refuses another detector / perturbation / scorer, and the trainer's coalition cache
rows are reproduced by a resumed build."""
from __future__ import annotations

import pytest
import torch

from detection.scorers import DRiseScorer
from explainers.fastshap_grid_detector import (
    EXTRA_CHANNELS,
    FastShapGridDetector,
    FastShapGridDetectorCheckpoint,
    FastShapGridDetectorNet,
)
from explainers.rexl_detector import DetectorCellFeatures
from explainers.trained import weights_fingerprint
from tasks.fastshap_grid_detector_train import DetectorScene, fastshap_loss, predict, scene_rows
from tasks.fastshap_grid_train import fit, value_scale
from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def detector():
    from detection.models.yolo import YoloDetector

    return YoloDetector(REPO / "weights/demo/detector.pt", imgsz=320, device="cpu")


def untrained(scorer, grid: int = 5, layers=(0,), perturbation: str = "mean") -> FastShapGridDetectorCheckpoint:
    from explainers.perturb import make_perturbation

    perturbation = make_perturbation(perturbation).describe()
    channels = DetectorCellFeatures(scorer, layers, grid).channels + EXTRA_CHANNELS
    torch.manual_seed(0)
    net = FastShapGridDetectorNet(channels, grid, width=16)
    return FastShapGridDetectorCheckpoint(weights_fingerprint(scorer), grid, tuple(layers), channels,
                                          perturbation, net.state_dict(), width=16)


@pytest.mark.parametrize("targets", [1, 3])
def test_each_detections_map_sums_to_its_gap_in_two_model_forwards(detector, targets, monkeypatch):
    """Pedestrians of an odd-sized image: the maps' pixels sum to v(all) - v(none) of each exactly (float rounding),
    one image pass + one hidden pass of the detector (counted at the detector, not by the explainer) and one
    explainer forward for all of them, a map of the image's size."""
    from explainers.perturb import make_perturbation

    image = torch.rand(3, 237, 181, generator=torch.Generator().manual_seed(1))
    boxes = torch.tensor([[40.0, 30.0, 140.0, 220.0], [10.0, 20.0, 60.0, 120.0], [90.0, 100.0, 170.0, 230.0]])
    scorer = DRiseScorer(detector, boxes[:targets], torch.ones(targets, 1))
    ckpt = untrained(scorer, perturbation=make_perturbation("mean").describe())
    explainer = FastShapGridDetector(scorer, weights=ckpt)
    passes, real = [], detector._raw

    def spy(images, *args, **kwargs):                   # every network pass of the adapter goes through _raw
        passes.append(images.shape[0])
        return real(images, *args, **kwargs)

    monkeypatch.setattr(detector, "_raw", spy)
    exp = explainer.explain(image)
    assert sum(passes) == 2 and exp.n_forward == 2 and exp.n_explainer_forward == 1
    assert exp.saliency.shape == (targets, 237, 181)
    gap = exp.full_score - exp.empty_score
    assert torch.allclose(exp.saliency.double().sum((1, 2)), gap.double(), atol=1e-5)
    monkeypatch.undo()
    assert torch.allclose(exp.full_score, scorer(image[None])[0], atol=1e-6)        # v(all): the image's score


def test_no_target_costs_nothing_and_an_image_smaller_than_the_grid_is_refused(detector):
    """No detection: an empty map and no forward. An image with fewer pixels a side than the grid has cells without
    pixels, whose values a map cannot carry (it would not sum to the gap): refused before any forward."""
    none = DRiseScorer(detector, torch.zeros(0, 4), torch.zeros(0, 1))
    exp = FastShapGridDetector(none, weights=untrained(none)).explain(torch.rand(3, 60, 80))
    assert exp.saliency.shape == (0, 60, 80) and exp.n_forward == 0
    one = DRiseScorer(detector, torch.tensor([[1.0, 1.0, 5.0, 6.0]]), torch.ones(1, 1))
    explainer = FastShapGridDetector(one, weights=untrained(one, grid=5))
    with pytest.raises(ValueError, match=r"image 4 x 7 px has fewer pixels a side than the network's 5 x 5 cells"):
        explainer.explain(torch.rand(3, 4, 7))
    assert explainer.explain(torch.rand(3, 5, 7)).saliency.shape == (1, 5, 7)       # 5 px: one row per cell


def test_the_common_contract_on_the_demo_detector(detector):
    """What the method-wide tests check of every method on hand-built models, which cannot serve this one (it reads
    a YOLO head's maps: ``needs_feature_maps``): deterministic, the same maps for any seed, regions only summarise the
    map (relevance = its mean in each region; no default regions), one target's row is its one-target call, a budget
    below its 2 forwards is refused naming the method, regions per target and a NaN pixel are refused."""
    from explainers import BudgetError
    from explainers.base import region_means
    from explainers.regions import grid_regions

    image = torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(3))
    boxes = torch.tensor([[10.0, 5.0, 60.0, 90.0], [70.0, 20.0, 120.0, 95.0]])
    both = DRiseScorer(detector, boxes, torch.ones(2, 1))
    ckpt = untrained(both, grid=4)
    explainer = FastShapGridDetector(both, weights=ckpt)
    regions = grid_regions(96, 128, 2, 3)
    a, b = explainer.explain(image, regions, seed=1), explainer.explain(image, regions, seed=2)
    assert torch.equal(a.saliency, b.saliency) and a.method == "fastshap_grid_detector" and a.n_forward == 2
    torch.testing.assert_close(a.relevance, region_means(a.saliency, regions.float()), atol=1e-6, rtol=1e-5)
    assert explainer.default_regions(image) is None and a.options["seed"] == 1
    one = FastShapGridDetector(DRiseScorer(detector, boxes[1:], torch.ones(1, 1)), weights=ckpt).explain(image)
    torch.testing.assert_close(one.saliency[0], a.saliency[1], atol=1e-6, rtol=1e-5)
    with pytest.raises(BudgetError, match=r"fastshap_grid_detector.*at least 2 forwards"):
        explainer.explain(image, budget=1)
    with pytest.raises(ValueError, match=r"which this method does not take|player masks"):
        explainer.explain(image, torch.stack([regions, regions]))
    bad = image.clone()
    bad[0, 5, 7] = float("nan")
    with pytest.raises(ValueError, match=r"image has 1 non-finite values"):                 # not a map of NaNs
        explainer.explain(bad)


@pytest.mark.parametrize("size", [(9, 9), (9, 200), (241, 10)])
def test_a_constant_image_and_extreme_shapes_give_finite_efficient_maps(detector, size):
    """A flat grey image (nothing to see: its gap to the mean-colour image is 0) and images of one cell's pixel a side
    or of extreme aspect: finite maps that sum to each target's gap, one value per cell spread over its pixels."""
    from explainers.regions import grid_labels

    H, W = size
    boxes = torch.tensor([[0.0, 0.0, W / 2, H / 1.0], [W / 3, H / 4, W * 1.0, H * 0.9]])
    scorer = DRiseScorer(detector, boxes, torch.ones(2, 1))
    explainer = FastShapGridDetector(scorer, weights=untrained(scorer, grid=9))
    for image in (torch.full((3, H, W), 0.5), torch.rand(3, H, W, generator=torch.Generator().manual_seed(2))):
        exp = explainer.explain(image)
        assert torch.isfinite(exp.saliency).all() and exp.saliency.shape == (2, H, W)
        gap = (exp.full_score - exp.empty_score).double()
        assert torch.allclose(exp.saliency.double().sum((1, 2)), gap, atol=1e-5)
        labels = grid_labels(H, W, 9, 9)
        flat = labels.flatten().expand(2, -1)
        per_cell = torch.zeros(2, 81).scatter_(1, flat, exp.saliency.flatten(1))    # some pixel's value per cell
        spread = per_cell[:, labels]                                   # every pixel of a cell: that same value
        assert torch.equal(spread, exp.saliency)


def test_the_guard_refuses_another_detector_perturbation_or_scorer(detector, tmp_path):
    import copy
    from types import SimpleNamespace

    from explainers.perturb import make_perturbation

    scorer = DRiseScorer(detector, torch.tensor([[40.0, 30.0, 140.0, 220.0]]), torch.ones(1, 1))
    path = untrained(scorer, perturbation=make_perturbation("mean").describe()).save(tmp_path / "net.pt")
    other = copy.deepcopy(detector)
    with torch.no_grad():
        next(other.model.parameters()).add_(1.0)
    with pytest.raises(ValueError, match=r"net\.pt was trained for model weights"):
        FastShapGridDetector(DRiseScorer(other, scorer.target_boxes, scorer.target_probs), weights=path)
    with pytest.raises(ValueError, match="was trained on perturbation"):
        FastShapGridDetector(scorer, weights=path, perturbation="blur")
    classifier_like = SimpleNamespace(model=torch.nn.Linear(3, 2), targets=[0], device="cpu")
    with pytest.raises(ValueError, match="needs a detector adapter"):
        FastShapGridDetector(classifier_like, weights=path)
    two_layers = untrained(scorer, perturbation=make_perturbation("mean").describe())
    two_layers.layers = (0, 1)                         # a file whose state channels are not what its layers give
    with pytest.raises(ValueError, match="reads .* state channels"):
        FastShapGridDetector(scorer, weights=two_layers)
    two_layers.layers = (7,)
    with pytest.raises(ValueError, match=r"^fastshap_grid_detector: the network: features .* layers"):
        FastShapGridDetector(scorer, weights=two_layers)
    exp = FastShapGridDetector(DRiseScorer(other, scorer.target_boxes, scorer.target_probs), weights=path,
                               check_weights=False).explain(torch.rand(3, 64, 96))      # the sanity check's copies
    assert exp.options["check_weights"] is False


def test_a_network_trained_seconds_on_an_additive_game_learns_its_values():
    """An additive game whose cell values are a fixed function of one state channel: the FastSHAP objective on
    Shapley-kernel pairs recovers them on held-out states (relative error well below the even split's)."""
    import numpy as np

    from tasks.fastshap_data import kernel_pairs

    g = torch.Generator().manual_seed(0)
    k, C, N, K = 4, 5, 192, 16
    state = torch.randn(N, C, k, k, generator=g)
    phi = 0.3 * state[:, 2].flatten(1) + 0.1                                         # [N, k^2]
    rng = np.random.default_rng(0)
    Z = torch.from_numpy(np.stack([kernel_pairs(k * k, K // 2, rng) for _ in range(N)])).float()
    data = {"state": state, "full": phi.sum(1), "empty": torch.zeros(N), "Z": Z,
            "y": torch.einsum("nkp,np->nk", Z, phi)}
    train = {key: v[:160] for key, v in data.items()}
    val = {key: v[160:] for key, v in data.items()}
    torch.manual_seed(0)
    net = FastShapGridDetectorNet(C, k, width=32)
    net.standardise(train["state"])
    scale = value_scale(train)
    best, _ = fit(net, fastshap_loss, train, val, scale, epochs=60, batch_size=32, lr=3e-3, seed=0,
                  checkpoint_dir=None, progress=False, spec={}, name="test")
    net.load_state_dict(best)
    with torch.no_grad():
        got = predict(net.eval(), val, scale)
    truth = phi[160:]
    even = truth.sum(1, keepdim=True).expand_as(truth) / truth.shape[1]
    err = (got - truth).norm(dim=1) / truth.norm(dim=1)
    err_even = (even - truth).norm(dim=1) / truth.norm(dim=1)
    assert torch.allclose(got.sum(1), truth.sum(1), atol=1e-4)                     # efficiency, exactly
    assert err.median() < 0.25 < err_even.median()


def test_a_resumed_coalition_cache_gives_identical_rows(detector, tmp_path):
    from explainers.perturb import make_perturbation
    from tasks.fastshap_data import CoalitionCache

    scorer = DRiseScorer(detector, torch.tensor([[40.0, 30.0, 140.0, 220.0], [0.0, 0.0, 50.0, 90.0]]),
                         torch.ones(2, 1), chunk_size=8)
    images = [torch.rand(3, 96, 128, generator=torch.Generator().manual_seed(i)) for i in range(3)]
    scenes = [DetectorScene(i, img, [i % 2], torch.zeros(1, 9)) for i, img in enumerate(images)]
    mean = make_perturbation("mean")

    def build(directory, limit=None):
        cache = CoalitionCache(directory, {"pairs": 2, "seed": 0}, block=2, key="scene_id")
        cache.build(scenes, mean, limit=limit, rows_of=lambda s: scene_rows(s, scorer, 3, 2, 0, mean, 8))
        return cache.read().to_pylist()

    build(tmp_path / "resumed", limit=1)                                              # a run stopped after one scene
    assert build(tmp_path / "resumed") == build(tmp_path / "fresh")
    rows = build(tmp_path / "fresh")
    assert [r["kind"] for r in rows[:2]] == ["empty", "full"] and len(rows) == 3 * (2 + 2 * 2)
    assert all(len(r["values"]) == 1 for r in rows)                                  # the scene's own pedestrian
