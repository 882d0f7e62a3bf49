"""FastShapGrid (explainers.fastshap_grid) and its training (tasks.fastshap_grid_train): a network trained a few
seconds on an additive grid game learns its Shapley values (exact: each cell's share of the linear score), the map is
exactly efficient, the guard refuses another model / size / class count / a scorer without classes, and the
coalition cache resumes to identical rows."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from explainers.fastshap_grid import FastShapGrid, FastShapGridCheckpoint
from explainers.perturb import make_perturbation
from explainers.regions import grid_regions
from explainers.trained import weights_fingerprint
from tasks.fastshap_data import CoalitionCache
from tasks.fastshap_grid_train import Scene, scene_rows, scene_targets, stacked, train_network

pytestmark = pytest.mark.usefixtures("one_torch_thread")

H, W, GRID = 24, 32, (3, 4)
MEAN = make_perturbation("mean")


class ChannelScorer:
    """An additive game: class c's score is the mean of colour channel c (c = 0, 1, 2), so hiding a cell with the
    image's mean colour changes it by that cell's share: phi_cell,c = sum over the cell of (x_c - mean x_c) / (H W)."""

    device = torch.device("cpu")
    chunk_size = 64
    weights_sha256 = "additive-channel-game"

    def __init__(self, targets=(0, 1, 2)):
        self.targets = torch.tensor(list(targets))
        self.num_targets = len(self.targets)

    def __call__(self, images):
        return images.mean((2, 3))[:, self.targets]


def exact(image: torch.Tensor) -> torch.Tensor:
    """Exact Shapley values [3, cells] of ChannelScorer's game."""
    cells = grid_regions(H, W, *GRID).float().reshape(-1, H * W)
    centred = (image - image.mean((1, 2), keepdim=True)).reshape(3, -1)
    return centred @ cells.T / (H * W)


def scenes(n: int, offset: int = 0) -> list[Scene]:
    g = torch.Generator().manual_seed(offset)
    out = []
    for i in range(n):          # blobs of colour: cells differ, so the values are not an even split
        img = torch.rand(3, 1, 1, generator=g) * 0.2 + 0.4 + torch.zeros(3, H, W)
        for _ in range(3):
            r, c = torch.randint(0, H - 8, (1,), generator=g), torch.randint(0, W - 8, (1,), generator=g)
            img[:, r:r + 8, c:c + 8] = torch.rand(3, 1, 1, generator=g)
        out.append(Scene(offset + i, img))
    return out


def cached(tmp_path, items, pairs=24) -> dict:
    cache = CoalitionCache(tmp_path / "cache", {"game": "channels", "pairs": pairs, "seed": 0}, key="scene_id",
                           block=8)
    cache.build(items, MEAN, rows_of=lambda s: scene_rows(s, ChannelScorer(), GRID, pairs, 0, MEAN, 64))
    return scene_targets(cache.read(), GRID[0] * GRID[1])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A network trained ~3 s on 96 scenes (one torch thread: a module fixture runs before one_torch_thread)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(tmp_path_factory.mktemp("grid"))
    finally:
        torch.set_num_threads(threads)


def _train(folder):
    train_scenes, val_scenes = scenes(96), scenes(16, offset=1000)
    targets = cached(folder, train_scenes + val_scenes)
    net_size = (8 * GRID[0], 8 * GRID[1])
    state, summary = train_network(stacked(train_scenes, targets, MEAN, net_size),
                                   stacked(val_scenes, targets, MEAN, net_size), 3, GRID, epochs=60, batch_size=16,
                                   lr=3e-3, width=8, hidden=16, progress=False)
    return FastShapGridCheckpoint("additive-channel-game", 3, (H, W), GRID, MEAN.describe(), state,
                                  net_size=net_size, width=8, hidden=16, value_scale=summary["value_scale"],
                                  training=summary)


def _rel(a, b):
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def test_a_network_trained_seconds_on_an_additive_game_learns_its_values(trained):
    errors, even = [], []
    for scene in scenes(12, offset=5000):                                  # never trained or validated on
        exp = FastShapGrid(ChannelScorer(), weights=trained).explain(scene.image)
        cells = grid_regions(H, W, *GRID).reshape(-1, H * W).float()
        phi = exp.saliency.reshape(3, -1) @ cells.T                          # a cell's pixels sum to its value
        truth = exact(scene.image)
        errors.append(_rel(phi, truth))
        even.append(_rel(truth.sum(1, keepdim=True).expand_as(truth) / truth.shape[1], truth))
    assert np.median(errors) < 0.35, errors
    assert np.median(errors) < 0.5 * np.median(even), (errors, even)


def test_the_map_is_exactly_efficient_and_costs_two_forwards_and_one_network_forward(trained):
    image = scenes(1, offset=77)[0].image
    exp = FastShapGrid(ChannelScorer(targets=(2, 0)), weights=trained).explain(image)
    torch.testing.assert_close(exp.saliency.sum((1, 2)), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)
    assert exp.n_forward == 2 and exp.n_explainer_forward == 1 and exp.saliency.shape == (2, H, W)
    both = FastShapGrid(ChannelScorer(), weights=trained).explain(image)       # a class's map ignores the others
    torch.testing.assert_close(exp.saliency[0], both.saliency[2], atol=1e-6, rtol=0)


def test_the_guard_refuses_another_model_size_class_count_and_a_scorer_without_classes(trained):
    other = ChannelScorer()
    other.weights_sha256 = "another-model"
    with pytest.raises(ValueError, match="trained for model weights additive-cha.*are another-mode"):
        FastShapGrid(other, weights=trained)
    with pytest.raises(ValueError, match=r"trained on images of \(24, 32\) \(H, W\), got \(24, 33\)"):
        FastShapGrid(ChannelScorer(), weights=trained).explain(torch.rand(3, H, W + 1))
    with pytest.raises(ValueError, match="trained on perturbation 'mean', got 'blur"):
        FastShapGrid(ChannelScorer(), weights=trained, perturbation="blur")
    no_classes = ChannelScorer()
    del no_classes.targets
    with pytest.raises(ValueError, match="has no 'targets'"):
        FastShapGrid(no_classes, weights=trained)
    FastShapGrid(other, weights=trained, check_weights=False)           # the sanity check's randomised copies

    class FourClasses(ChannelScorer):
        model = type("Net", (), {"num_classes": 4})()

    with pytest.raises(ValueError, match="trained for 3 classes, the classifier has 4"):
        FastShapGrid(FourClasses(), weights=trained)
    with pytest.raises(ValueError, match=r"explains classes 0\.\.2, the scorer asks for \[0, 3\]"):
        FastShapGrid(ChannelScorer(targets=(0, 3)), weights=trained)


def test_regions_summarise_the_map(trained):
    """Regions only summarise the map (relevance = the mean saliency in each), and class -1 is the last class."""
    from explainers.base import region_means

    image = scenes(1, offset=78)[0].image
    quads = grid_regions(H, W, 2, 2)
    exp = FastShapGrid(ChannelScorer(targets=(-1,)), weights=trained).explain(image, quads)
    torch.testing.assert_close(exp.relevance, region_means(exp.saliency, quads.float()), atol=1e-6, rtol=0)
    last = FastShapGrid(ChannelScorer(targets=(2,)), weights=trained).explain(image)
    torch.testing.assert_close(exp.saliency, last.saliency, atol=1e-6, rtol=0)


def checked(ckpt: FastShapGridCheckpoint, budget: int = 64) -> FastShapGridCheckpoint:
    """``ckpt`` with the trainer's Shapley check (tasks.fastshap_grid_train.shapley_check) on 4 unseen scenes."""
    import copy

    from tasks.fastshap_grid_train import shapley_check

    out = copy.copy(ckpt)
    out.heldout = {**ckpt.heldout, **shapley_check(ckpt, ChannelScorer, [s.image for s in scenes(4, offset=6000)],
                                                   budget)}
    return out


def test_the_shapley_check_measures_the_networks_error_against_bayes_shapley(trained):
    """On the additive game BayesShapley at 64 forwards is near-exact (paired differences hold only first-order terms),
    so the check's error is the network's error against the exact values."""
    ckpt = checked(trained)
    h = ckpt.heldout
    assert (h["shapley_budget"], h["shapley_scenes"], h["shapley_targets"]) == (64, 4, 12)
    from explainers.metrics import relative_error

    net = FastShapGrid(ChannelScorer(), weights=trained)
    truth = [e for s in scenes(4, offset=6000)                             # per (scene, class), as the check
             for e in relative_error(net.cell_values(s.image, *ends(s.image)).double(), exact(s.image).double())]
    assert h["shapley_median_rel_l2"] == pytest.approx(float(np.median(truth)), rel=0.02)


def test_the_shapley_check_refuses_a_game_where_no_target_has_an_error(trained):
    """A constant image: hiding a cell with the image's mean colour changes nothing, every reference value is 0 and
    no relative error exists; the check says so instead of storing NaN (which the hybrid would read as no check).
    One such image among others is left out of the median."""
    from tasks.fastshap_grid_train import shapley_check

    flat = torch.full((3, H, W), 0.5)
    with pytest.raises(ValueError, match="no finite error on its 3 targets"):
        shapley_check(trained, ChannelScorer, [flat], 16)
    mixed = shapley_check(trained, ChannelScorer, [flat] + [s.image for s in scenes(2, offset=6000)], 16)
    alone = shapley_check(trained, ChannelScorer, [s.image for s in scenes(2, offset=6000)], 16)
    assert mixed["shapley_targets"] == 9 and mixed["shapley_median_rel_l2"] == alone["shapley_median_rel_l2"]
    # the hybrid on that image: a model that does not react gets an all-zero map, not the network's habits
    from explainers.fastshap_grid import FastShapGridBayesShapley

    flat_map = FastShapGridBayesShapley(ChannelScorer(), weights=checked(trained)).explain(flat, budget=8)
    assert torch.equal(flat_map.saliency, torch.zeros_like(flat_map.saliency))


def ends(image):
    full, empty = ChannelScorer()(torch.stack([image, MEAN.baseline(image)]))
    return full, empty


def test_the_hybrid_is_efficient_spends_its_budget_and_its_prior_helps_at_few_forwards(trained):
    """fastshap_grid_bayes: BayesShapley on the network's cells with its estimate as the prior. At 8 forwards (3
    designed pairs for 12 cells) the prior carries most of the answer: closer to the exact values than plain
    BayesShapley at the same forwards; efficiency is exact; 8 model forwards and 1 explainer forward."""
    from explainers.bayesian_shapley import BayesShapley
    from explainers.fastshap_grid import FastShapGridBayesShapley

    ckpt = checked(trained)
    cells = grid_regions(H, W, *GRID).reshape(-1, H * W).float()
    hybrid, plain = [], []
    for scene in scenes(12, offset=7000):
        exp = FastShapGridBayesShapley(ChannelScorer(), weights=ckpt).explain(scene.image, budget=8, seed=0)
        assert exp.n_forward == 8 and exp.n_explainer_forward == 1 and exp.saliency.shape == (3, H, W)
        torch.testing.assert_close(exp.saliency.sum((1, 2)), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)
        hybrid.append(_rel(exp.saliency.reshape(3, -1) @ cells.T, exact(scene.image)))
        base = BayesShapley(ChannelScorer(), perturbation="mean").explain(scene.image, grid_regions(H, W, *GRID),
                                                                          budget=8, seed=0)
        plain.append(_rel(base.relevance, exact(scene.image)))
    assert np.median(hybrid) < 0.7 * np.median(plain), (hybrid, plain)
    opts = FastShapGridBayesShapley(ChannelScorer(), weights=ckpt).options()
    assert opts["prior_relative_error"] == ckpt.heldout["shapley_median_rel_l2"]
    # a subset of the classes in another order (and -1, the last): each class gets its own row of the prior, so the
    # maps are the all-classes run's rows (the designed pairs and the game are the same)
    image = scenes(1, offset=7100)[0].image
    every = FastShapGridBayesShapley(ChannelScorer(), weights=ckpt).explain(image, budget=8, seed=3)
    some = FastShapGridBayesShapley(ChannelScorer(targets=(2, 0)), weights=ckpt).explain(image, budget=8, seed=3)
    last = FastShapGridBayesShapley(ChannelScorer(targets=(-1,)), weights=ckpt).explain(image, budget=8, seed=3)
    torch.testing.assert_close(some.saliency, every.saliency[[2, 0]], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(last.saliency[0], every.saliency[2], atol=1e-5, rtol=1e-4)


def test_the_hybrid_refuses_a_network_without_a_shapley_check(trained):
    from explainers.fastshap_grid import FastShapGridBayesShapley

    assert "shapley_median_rel_l2" not in trained.heldout
    with pytest.raises(ValueError, match=r"fastshap_grid_bayes: .*no held-out check \(heldout\.shapley_median_rel_l2"):
        FastShapGridBayesShapley(ChannelScorer(), weights=trained)
    with pytest.raises(ValueError, match="decay"):
        FastShapGridBayesShapley(ChannelScorer(), weights=checked(trained), decay=1.5)


def test_training_resumes_to_the_same_network_and_refuses_another_setting(tmp_path, monkeypatch):
    """A run killed in its second epoch resumes from last.pt (epoch 1) to the uninterrupted run's weights, bit for
    bit; a last.pt of another setting (other data, 10x the targets' scale) is refused, never resumed."""
    import tasks.fastshap_grid_train as module

    items = scenes(24)
    targets = cached(tmp_path, items, pairs=6)
    net_size = (8 * GRID[0], 8 * GRID[1])
    train, val = stacked(items[:20], targets, MEAN, net_size), stacked(items[20:], targets, MEAN, net_size)
    kw = {"epochs": 3, "batch_size": 8, "width": 4, "hidden": 8, "progress": False, "spec": {"data": "a"}}
    whole, _ = train_network(train, val, 3, GRID, **kw)
    real, calls = module.fastshap_loss, []

    def killed(*args):
        calls.append(1)
        if len(calls) == 5:                        # 3 training batches + 1 validation per epoch: epoch 2 starts
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(module, "fastshap_loss", killed)
    with pytest.raises(KeyboardInterrupt):
        train_network(train, val, 3, GRID, checkpoint_dir=tmp_path / "run", **kw)
    monkeypatch.setattr(module, "fastshap_loss", real)
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["state"]["epoch"] == 1
    resumed, _ = train_network(train, val, 3, GRID, checkpoint_dir=tmp_path / "run", **kw)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    with pytest.raises(ValueError, match=r"holds a training of another setting \(data, value_scale\)"):
        scaled = {**train, "y": train["y"] * 10}
        train_network(scaled, val, 3, GRID, checkpoint_dir=tmp_path / "run", **{**kw, "spec": {"data": "b"}})


def test_the_coalition_cache_resumes_to_identical_rows(tmp_path):
    items = scenes(12)
    whole = CoalitionCache(tmp_path / "whole", {"pairs": 4, "seed": 0}, key="scene_id", block=5)
    whole.build(items, MEAN, rows_of=lambda s: scene_rows(s, ChannelScorer(), GRID, 4, 0, MEAN, 64))
    part = CoalitionCache(tmp_path / "part", {"pairs": 4, "seed": 0}, key="scene_id", block=5)
    part.build(items[:7], MEAN, rows_of=lambda s: scene_rows(s, ChannelScorer(), GRID, 4, 0, MEAN, 64))
    calls = []
    part.build(items, MEAN, rows_of=lambda s: calls.append(s.index) or scene_rows(s, ChannelScorer(), GRID, 4, 0,
                                                                                   MEAN, 64))
    assert calls == list(range(7, 12))                                  # only the missing scenes are evaluated
    assert part.read().equals(whole.read())
    assert [pq.read_table(f).num_rows for f in sorted((tmp_path / "part").glob("block-*.parquet"))] == [50, 50, 20]
    with pytest.raises(ValueError, match="built for another setting .*pairs: 4 != 5"):
        CoalitionCache(tmp_path / "part", {"pairs": 5, "seed": 0}, key="scene_id", block=5).build(
            items, MEAN, rows_of=lambda s: scene_rows(s, ChannelScorer(), GRID, 5, 0, MEAN, 64))


def _scene_classifier(seed: int = 0):
    """A small SceneNet (feature blocks, Linear head) on 64 x 64 images: blocks 2 and 3 give 16 + 32 channels."""
    from detection.models.classifier import ImageClassifier
    from detection.models.scene_classifier import SceneNet

    torch.manual_seed(seed)
    net = SceneNet(3, width=4).eval()
    with torch.no_grad():
        net.head.weight.mul_(300)                  # scores that move when cells are hidden (not ~1e-7 of a fresh net)
    return ImageClassifier(net, ["a", "b", "c"], multi_label=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                           device="cpu")


def test_a_network_reading_the_classifiers_features_trains_explains_efficiently_and_refuses_a_plain_model(tmp_path):
    """With feature_blocks the network reads the classifier's per-cell features (blocks' outputs and class maps,
    pooled to the grid): standardised by the training scenes' statistics, one classifier pass per explanation
    (n_feature_forward), exactly efficient maps equal to the trained network's on those features; a classifier
    without feature blocks and a missing feature input are refused by name."""
    from detection.scorers import ClassifierScorer
    from explainers.fastshap_grid import FastShapGridNet, GridCellFeatures
    from explainers.rexl import head_class_maps
    from tasks.fastshap_grid_train import predict

    clf, grid, size = _scene_classifier(), (4, 4), (64, 64)
    feats = GridCellFeatures(clf, grid, (2, 3))
    g = torch.Generator().manual_seed(0)
    items = [Scene(i, torch.rand(3, *size, generator=g)) for i in range(20)]
    cells = feats.cells(torch.stack([s.image for s in items[:2]]))
    assert cells.shape == (2, 16 + 32 + 3, *grid)
    last = clf.model.features(clf.preprocess(items[0].image[None]))              # the class maps are the last 3
    torch.testing.assert_close(cells[:1, -3:], head_class_maps(clf.model.head, last, grid), atol=1e-5, rtol=0)

    scorer = ClassifierScorer(clf)
    cache = CoalitionCache(tmp_path / "cache", {"game": "scenenet", "pairs": 4, "seed": 0}, key="scene_id", block=8)
    cache.build(items, MEAN, rows_of=lambda s: scene_rows(s, scorer, grid, 4, 0, MEAN, 64))
    targets = scene_targets(cache.read(), 16)
    net_size = (8 * grid[0], 8 * grid[1])
    train = stacked(items[:16], targets, MEAN, net_size, feats)
    val = stacked(items[16:], targets, MEAN, net_size, feats)
    assert train["features"].shape == (16, 51, *grid)
    state, summary = train_network(train, val, 3, grid, epochs=2, batch_size=8, width=4, hidden=8, progress=False)
    torch.testing.assert_close(state["feature_mean"], train["features"].mean((0, 2, 3)))
    ckpt = FastShapGridCheckpoint(weights_fingerprint(scorer), 3, size, grid, MEAN.describe(), state,
                                  net_size=net_size, width=4, hidden=8, value_scale=summary["value_scale"],
                                  feature_blocks=(2, 3), feature_channels=51)
    ckpt.save(tmp_path / "grid.pt")
    loaded = FastShapGridCheckpoint.load(tmp_path / "grid.pt")
    assert loaded.feature_blocks == (2, 3) and loaded.feature_channels == 51
    exp = FastShapGrid(scorer, weights=loaded).explain(items[17].image)
    torch.testing.assert_close(exp.saliency.sum((1, 2)), exp.full_score - exp.empty_score, atol=1e-5, rtol=0)
    assert exp.n_forward == 2 and exp.n_explainer_forward == 1 and exp.options["n_feature_forward"] == 1
    with torch.no_grad():                                # the explainer's values are the trained network's
        phi = predict(loaded.network(), stacked(items[17:18], targets, MEAN, net_size, feats), loaded.value_scale)
    assert float((exp.full_score - exp.empty_score).abs().min()) > 1e-6          # not a flat game
    assert _rel(exp.saliency.reshape(3, 4, 16, 4, 16).sum((2, 4)).reshape(3, -1), phi[0]) < 1e-3
    with pytest.raises(ValueError, match=r"^fastshap_grid \(classifier features\): features 'cells' need .*'features'"):
        FastShapGrid(ChannelScorer(), weights=loaded, check_weights=False)
    with pytest.raises(ValueError, match=r"feature_blocks \[2, 3\] and feature_channels 0 disagree"):
        FastShapGridCheckpoint(ckpt.model_sha256, 3, size, grid, MEAN.describe(), state, feature_blocks=(2, 3))
    with pytest.raises(ValueError, match=r"reads the classifier's features \[1, 51, 4, 4\], got None"):
        FastShapGridNet(3, grid, 4, 8, (8, 8), features=51)(torch.zeros(1, 6, 32, 32), torch.zeros(1, 3, 3))
