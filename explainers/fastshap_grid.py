"""FastSHAP on a fixed grid of cells: an explainer network that outputs the Shapley values of every cell of a
``rows x cols`` grid for every class of a classifier in one forward of its own, after one classifier call for the
game's two ends -- a saliency map without sampling.

The game is the region game of the grid (``explainers.game.RegionGame`` over ``explainers.regions.grid_regions``):
a cell is hidden by the perturbation (the image's mean colour by default: the deletion substrate of the causal
metrics), the value of a coalition is the classifier's probability of each class (``detection.scorers.
ClassifierScorer``), black box: forwards only, so it works for any classifier adapter (TorchScript, ONNX, a callable).

Network (:class:`FastShapGridNet`): the image and the image minus its perturbation baseline (what hiding changes),
resized to ``net_size`` (8 x the grid by default), cut into one token per grid cell by a patch embedding (a
convolution whose kernel and stride are the cell), mixed with neighbouring cells by residual 3 x 3 blocks; per class,
the cell features with the class's one-hot and the game's two ends v(all), v(none) and their gap as extra channels
go through 1 x 1 convolutions to a raw value per cell.

With ``features`` (the weights file's ``feature_blocks``), the network also reads the audited classifier's own
per-cell features of the image (:class:`GridCellFeatures`: its feature blocks' outputs and every class's activation
map, pooled to the grid: what ViT Shapley gets by fine-tuning the model itself as the explainer's backbone, Covert,
Kim & Lee, ICLR 2023, https://arxiv.org/abs/2206.05282), standardised by training-set statistics stored with the
weights and fused with the cell tokens by a 1 x 1 convolution. One more classifier pass (``n_feature_forward``);
the classifier must be a PyTorch network with ``features`` blocks and a Linear ``head`` (the demo SceneNet).

Additive efficient normalisation (Jethani, Sudarshan, Covert, Lee & Ranganath, "FastSHAP: Real-Time Shapley Value
Estimation", ICLR 2022, https://arxiv.org/abs/2107.07436; reference code github.com/iancovert/fastshap):
phi_c = raw_c + (v_c(all) - v_c(none) - sum_j raw_j) / n over the n cells, so the map's cells sum to the class's
score gap exactly (to float rounding). Trained by ``tasks.fastshap_grid_train`` (the FastSHAP weighted least squares
on Shapley-kernel coalitions, paired, of training-split scenes, cached as Parquet); the weights file
(:class:`FastShapGridCheckpoint`) records the classifier's weights fingerprint, the grid, the image size, the
perturbation and a held-out check, and the explainer refuses anything else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explainers.base import Explainer, Explanation, numpy_rng, paint, region_means
from explainers.bayesian_shapley import DEFAULT_DECAY, ShapleyPrior, bayes_shapley, check_decay, stated_error
from explainers.game import RegionGame
from explainers.perturb import Perturbation
from explainers.regions import grid_regions
from explainers.rexl import CellFeatures
from explainers.trained import CountsExplainerForwards, LearnedExplainer, NetworkCheckpoint, perturbation_of

FORMAT = "xai-audit/fastshap-grid"
VERSION = 1
NUM_SCALARS = 3           # per class: v(all), v(none), v(all) - v(none)
# the held-out check every explanation's options carry (the report's columns: tasks.report.HELDOUT_COLUMNS)
HELDOUT_KEYS = ("scenes", "targets", "deletion_auc_median", "rise_deletion_auc_median", "insertion_auc_median",
                "rise_insertion_auc_median", "rise_budget", "coalition_r2", "shapley_median_rel_l2", "shapley_budget")


class ResidualBlock(nn.Module):
    """x + conv(relu(conv(x))) (3 x 3, same width): context from neighbouring cells, the identity kept."""

    def __init__(self, width: int):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(width, width, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class FastShapGridNet(nn.Module):
    """image features [N, 6, h, w] (image, image - baseline; h, w multiples of the grid), scalars [N, C,
    NUM_SCALARS] (and with ``features`` > 0 the classifier's per-cell features [N, features, rows, cols]:
    :class:`GridCellFeatures`) -> raw cell values [N, C, rows, cols] (module docstring): one token per cell (a patch
    embedding: a convolution whose kernel and stride are the cell, as ViT Shapley's patches), fused with the
    standardised classifier features when given, residual 3 x 3 blocks between neighbouring cells, and a per-class
    1 x 1 head. Raises ValueError when ``features`` > 0 and the features are missing or of another shape."""

    def __init__(self, classes: int, grid: tuple[int, int] = (12, 16), width: int = 32, hidden: int = 64,
                 cell: tuple[int, int] = (8, 8), blocks: int = 2, features: int = 0):
        super().__init__()
        self.classes, self.grid, self.features = classes, tuple(grid), int(features)
        self.embed = nn.Conv2d(6, width, tuple(cell), tuple(cell))
        if self.features:            # the classifier's per-cell features, standardised by training-set statistics
            self.register_buffer("feature_mean", torch.zeros(self.features))
            self.register_buffer("feature_std", torch.ones(self.features))
            self.fuse = nn.Sequential(nn.Conv2d(width + self.features, width, 1), nn.ReLU(inplace=True))
        self.mix = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.head = nn.Sequential(nn.Conv2d(width + classes + NUM_SCALARS, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, 1, 1))

    def standardise_features(self, features: torch.Tensor) -> None:
        """Set the stored feature statistics from training features [N, features, rows, cols] (per channel)."""
        with torch.no_grad():
            self.feature_mean.copy_(features.mean((0, 2, 3)))
            self.feature_std.copy_(features.std((0, 2, 3)).clamp_min(1e-6))

    def forward(self, x: torch.Tensor, scalars: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        N, C = x.shape[0], self.classes
        f = F.adaptive_avg_pool2d(self.embed(x), self.grid)                        # [N, width, rows, cols]
        if self.features:
            if features is None or tuple(features.shape) != (N, self.features, *self.grid):
                raise ValueError(f"fastshap_grid: the network reads the classifier's features "
                                 f"[{N}, {self.features}, {self.grid[0]}, {self.grid[1]}], got "
                                 f"{None if features is None else tuple(features.shape)}")
            z = (features.float() - self.feature_mean[:, None, None]) / self.feature_std[:, None, None]
            f = self.fuse(torch.cat([f, z], 1))
        f = self.mix(f)                                                             # [N, width, rows, cols]
        rows, cols = self.grid
        f = f[:, None].expand(-1, C, -1, -1, -1)
        onehot = torch.eye(C, device=x.device, dtype=x.dtype)[None, :, :, None, None].expand(N, -1, -1, rows, cols)
        s = scalars[..., None, None].expand(-1, -1, -1, rows, cols)
        z = torch.cat([f, onehot, s], 2).reshape(N * C, -1, rows, cols)
        return self.head(z).reshape(N, C, rows, cols)


class GridCellFeatures(CellFeatures):
    """The audited classifier's own per-cell features on a ``rows x cols`` grid (:class:`~explainers.rexl.
    CellFeatures`, whose grid is square, on a rectangular one): the outputs of its ``features`` blocks listed in
    ``blocks`` and every class's activation map, average-pooled to the grid. :meth:`cells`: images [B, 3, H, W] ->
    [B, F, rows, cols] (F = the blocks' channels + classes), one classifier pass. Raises ValueError for a classifier
    without ``features`` blocks and a Linear ``head`` or a block index out of range."""

    def __init__(self, classifier, grid: tuple[int, int], blocks: tuple[int, ...] | list[int] = (2, 3)):
        try:
            super().__init__(classifier, blocks, grid=1)
        except ValueError as exc:
            raise ValueError(f"fastshap_grid (classifier features): {str(exc).removeprefix('rexl: ')}") from None
        self.grid = tuple(int(g) for g in grid)                  # adaptive pooling takes (rows, cols)
        self.spec["grid"] = list(self.grid)
        self.classes = int(self.spec["classes"])

    def cells(self, images: torch.Tensor) -> torch.Tensor:
        out = self(images)[:, :-self.classes]                    # the probabilities of the same pass dropped
        return out.reshape(images.shape[0], -1, *self.grid)


def network_inputs(images: torch.Tensor, baselines: torch.Tensor, net_size: tuple[int, int]) -> torch.Tensor:
    """[N, 6, h, w]: the images [N, 3, H, W] and images - baselines, resized (bilinear) to ``net_size`` (h, w)."""
    x = torch.cat([images, images - baselines], 1).float()
    if tuple(x.shape[-2:]) != tuple(net_size):
        x = F.interpolate(x, size=tuple(net_size), mode="bilinear", align_corners=False)
    return (x - 0.5) / 0.25


def grid_scalars(full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
    """[N, C, NUM_SCALARS] of the game's ends ``full`` = v(all), ``empty`` = v(none) [N, C]."""
    return torch.stack([full, empty, full - empty], -1).float()


def normalise(raw: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Additive efficient normalisation over the cells: raw [N, C, n] + (gap [N, C] - sum raw) / n."""
    return raw + (gap - raw.sum(-1))[..., None] / raw.shape[-1]


@dataclass
class FastShapGridCheckpoint(NetworkCheckpoint):
    """What a FastShapGrid weights file holds (:class:`~explainers.trained.NetworkCheckpoint`): the network's weights
    and shape, what it was trained for (the classifier's weights fingerprint, its class count, the image size (H, W)
    the game is played at, the grid (rows, cols), the perturbation's description), a ``training`` record and a
    ``heldout`` record (deletion / insertion AUC on held-out training-split scenes beside RISE's at a stated budget,
    and the share of held-out coalition values the estimate explains)."""

    model_sha256: str
    classes: int
    image_size: tuple[int, int]
    grid: tuple[int, int]
    perturbation: str
    state_dict: dict
    net_size: tuple[int, int] = (96, 128)
    width: int = 32
    hidden: int = 64
    value_scale: float = 1.0          # the network's raw output x this = score units (its training targets' RMS)
    feature_blocks: tuple[int, ...] = ()   # the classifier's feature blocks the network reads (): pixels only
    feature_channels: int = 0              # their channels + the class maps (GridCellFeatures); 0: pixels only
    training: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    _networks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    FORMAT, VERSION = FORMAT, VERSION
    WHAT, HOW_TO_TRAIN = "fastshap_grid weights", "train one with tasks.fastshap_grid_train"
    REQUIRED = ("model_sha256", "classes", "image_size", "grid", "perturbation", "state_dict")
    TUPLES = ("image_size", "grid", "net_size", "feature_blocks")

    def __post_init__(self):
        if bool(self.feature_blocks) != (int(self.feature_channels) > 0):
            raise ValueError(f"feature_blocks {list(self.feature_blocks)} and feature_channels {self.feature_channels} "
                             f"disagree: a network reads the classifier's features with both set, or neither")

    @property
    def cell(self) -> tuple[int, int]:
        """The network's patch (pixels of ``net_size`` per grid cell)."""
        return self.net_size[0] // self.grid[0], self.net_size[1] // self.grid[1]

    def network(self, device: torch.device | str = "cpu") -> FastShapGridNet:
        """The network with the stored weights, in eval mode."""
        net = FastShapGridNet(self.classes, self.grid, self.width, self.hidden, self.cell,
                              features=self.feature_channels)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()


@dataclass
class FastShapGridExplanation(Explanation):
    """An :class:`~explainers.base.Explanation` with the explainer network's forwards (``n_forward`` counts the
    model's only)."""

    n_explainer_forward: int = 0


class FastShapGrid(LearnedExplainer, CountsExplainerForwards, Explainer):
    """Amortised Shapley values of a classifier's grid-cell game (module docstring): FastSHAP (Jethani et al., ICLR
    2022, https://arxiv.org/abs/2107.07436) giving a saliency map in one explainer forward.

    ``weights``: a weights file written by ``tasks.fastshap_grid_train`` (:class:`FastShapGridCheckpoint`) or a loaded
    checkpoint. The guard raises ValueError naming both sides when the classifier's weights fingerprint
    (:func:`~explainers.trained.weights_fingerprint`; ``check_weights=False`` skips it: only for the sanity check's
    randomised copies, recorded in the options), its class count, its input size (a classifier model's ``input_size``,
    when the scorer has a ``model`` that states one: the size the network plays the game at; a classifier of any size
    is explained only on images of that size, :meth:`explain` refuses others) or the
    perturbation differ from what the network was trained for. The scorer must say which classes it scores (``targets``:
    class indices, as :class:`~detection.scorers.ClassifierScorer`), else ValueError.

    ``explain(image)``: image [3, H, W] of the trained ``image_size`` (ValueError otherwise: the game is played at the
    classifier's input size). Returns saliency [T, H, W] (score units per pixel: each cell's Shapley value spread
    evenly over its pixels, so a cell's pixels sum to its value and all pixels to v(all) - v(none)), relevance [T, R]
    = the mean saliency per region when regions are given (they only summarise the map), full_score / empty_score [T].
    Spends exactly 2 model forwards (the full and the empty coalition, one scorer call) and 1 explainer forward
    (``n_explainer_forward``, also in ``options``), and for a network that reads the classifier's features
    (``feature_blocks``) 1 classifier pass of the image for them (``options['n_feature_forward']``: ValueError at
    construction for a classifier without ``features`` blocks and a Linear ``head``); BudgetError below 2."""

    name = "fastshap_grid"
    default_budget = 2
    needs_classes = True
    trained_file_option = "weights"
    trained_file_hint = "python -m tasks.fastshap_grid_train (a network per classifier)"
    EXPLANATION = FastShapGridExplanation
    CHECKPOINT = FastShapGridCheckpoint

    def __init__(self, scorer, *, weights: str | Path | FastShapGridCheckpoint,
                 perturbation: str | Perturbation | None = None, check_weights: bool = True, **kw):
        ckpt, self.source, where = self.trained_file(weights)
        self.refuse_other_perturbation(ckpt.perturbation, perturbation, where)
        super().__init__(scorer, perturbation=perturbation or perturbation_of(ckpt.perturbation, self.name), **kw)
        self.check_weights = bool(check_weights)
        if scorer is not None:
            if self.check_weights:
                self.refuse_other_model(scorer, ckpt.model_sha256, where)
            targets = getattr(scorer, "targets", None)
            if targets is None:
                raise ValueError(f"fastshap_grid explains classifier classes: scorer {type(scorer).__name__} has no "
                                 f"'targets' (class indices; use detection.scorers.ClassifierScorer)")
            size = getattr(getattr(scorer, "model", None), "input_size", None)
            if size is not None and tuple(size) != tuple(ckpt.image_size):
                raise ValueError(f"fastshap_grid: {where} plays the game at {tuple(ckpt.image_size)} (H, W), the "
                                 f"classifier takes {tuple(size)}: train a network at its input size")
            classes = getattr(getattr(scorer, "model", None), "num_classes", None)
            if classes is not None and classes != ckpt.classes:
                raise ValueError(f"fastshap_grid: {where} was trained for {ckpt.classes} classes, the classifier has "
                                 f"{classes}")
            wanted = torch.as_tensor(targets).long().reshape(-1)
            if bool(((wanted < -ckpt.classes) | (wanted >= ckpt.classes)).any()):
                raise ValueError(f"fastshap_grid: {where} explains classes 0..{ckpt.classes - 1}, the scorer asks for "
                                 f"{wanted.tolist()}")
        self.features = None
        if ckpt.feature_channels:
            self.features = GridCellFeatures(getattr(scorer, "model", None), ckpt.grid, ckpt.feature_blocks)
        self.ckpt = ckpt
        self.net = ckpt.shared_network(self.device)
        self.weights_sha256 = ckpt.digest()            # of the weights self.net was built from (cached)
        self.n_explainer_forward = 0
        self.n_feature_forward = 0

    def options(self) -> dict[str, Any]:
        c = self.ckpt
        return {**super().options(), "grid": list(c.grid), "check_weights": self.check_weights,
                "weights": self.source, "weights_sha256": self.weights_sha256, "model_sha256": c.model_sha256[:12],
                "heldout": {k: c.heldout[k] for k in HELDOUT_KEYS if k in c.heldout}}

    def min_budget(self, num_regions, num_targets):
        return 2, "the full and the empty coalition (the efficiency normalisation)"

    def explain(self, image, regions=None, *, budget=None, seed=0) -> FastShapGridExplanation:
        """:meth:`Explainer.explain <explainers.base.Explainer.explain>` with the explainer forwards
        (``n_explainer_forward``: :class:`~explainers.trained.CountsExplainerForwards`); image of the trained size
        (class docstring)."""
        if torch.is_tensor(image) and image.ndim == 3 and tuple(image.shape[-2:]) != tuple(self.ckpt.image_size):
            raise ValueError(f"fastshap_grid: the network was trained on images of {tuple(self.ckpt.image_size)} "
                             f"(H, W), got {tuple(image.shape[-2:])}: give the classifier's input size")
        self.n_feature_forward = 0
        exp = super().explain(image, regions, budget=budget, seed=seed)       # CountsExplainerForwards.explain
        exp.options["n_feature_forward"] = self.n_feature_forward
        return exp

    def _explain(self, image, regions, budget, generator):
        H, W = image.shape[-2:]
        rows, cols = self.ckpt.grid
        cells = grid_regions(H, W, rows, cols, self.device)
        game = RegionGame(self.score, image, cells, self.perturbation, self.chunk_size)
        n = rows * cols
        ends = game(torch.stack([torch.ones(n), torch.zeros(n)]).to(self.device))   # [2, T]: v(all), v(none)
        full, empty = ends[0], ends[1]
        phi = self.cell_values(image, full, empty)                                 # [T, n]
        area = cells.reshape(n, -1).sum(1).clamp_min(1).to(phi)
        saliency = paint(phi / area, cells.to(phi))
        relevance = None if regions is None else region_means(saliency, regions.to(saliency))
        return saliency, relevance, {"full_score": full, "empty_score": empty}

    def cell_values(self, image: torch.Tensor, full: torch.Tensor, empty: torch.Tensor) -> torch.Tensor:
        """The network's efficient cell values [T, rows * cols] (row-major) of the scorer's target classes, given the
        game's ends ``full`` = v(all), ``empty`` = v(none) [T]: one explainer forward, no model forward. The head
        reads each class's row from the shared features, the class's one-hot and that class's own ends only, so the
        classes that are no target (their ends unknown without scoring them) get zeros and are dropped."""
        C = self.ckpt.classes
        targets = torch.as_tensor(self.scorer.targets, device=self.device).long() % C     # -1: the last class
        f_all = torch.zeros(C, device=self.device).index_copy(0, targets, full.float())
        f_none = torch.zeros(C, device=self.device).index_copy(0, targets, empty.float())
        x = network_inputs(image[None], self.perturbation.baseline(image)[None], self.ckpt.net_size)
        features = None
        if self.features is not None:
            features = self.features.cells(image[None].to(self.device))         # one classifier pass
            self.n_feature_forward += 1
        with torch.inference_mode():
            raw = self.net(x, grid_scalars(f_all[None], f_none[None]), features)[0]       # [C, rows, cols]
        self.n_explainer_forward += 1
        raw = raw.reshape(C, -1)[targets] * self.ckpt.value_scale
        return normalise(raw[None], (full - empty).float()[None])[0]


class FastShapGridBayesShapley(FastShapGrid):
    """BayesShapley (:mod:`explainers.bayesian_shapley`) on the network's grid cells with :class:`FastShapGrid`'s
    one-forward estimate as its prior: the estimate is one more, noisy observation of the cells' Shapley values,
    weighted by the relative L2 error the weights file's own held-out check measured against BayesShapley at
    ``heldout["shapley_budget"]`` forwards (``heldout["shapley_median_rel_l2"]``, written by
    ``tasks.fastshap_grid_train``), so a poor network gets little weight and the result stays near plain BayesShapley
    at the same model forwards (measured on held-out scenes: its median deletion AUC at or below plain BayesShapley's
    at 64-256 forwards over two draws of the pairs, better on 50-83 % of the targets; not guaranteed:
    benchmarks/README.md, "The network as BayesShapley's prior on the grid"). The parts game's version is
    :class:`explainers.fastshap.FastShapBayesShapley`. FastSHAP: Jethani et al., ICLR 2022,
    https://arxiv.org/abs/2107.07436.

    Weights, guard, image size and classes as :class:`FastShapGrid`; ``decay`` as BayesShapley's. Returns saliency
    [T, H, W] (score units per pixel, each cell's value spread evenly over its pixels: all pixels sum to
    v(all) - v(none) exactly), relevance [T, R] (region means, when regions are given), full / empty scores [T].
    Spends 2 + 2 floor((budget - 2) / 2) model forwards (designed complementary pairs plus the game's two ends), 1
    explainer forward and, for a network that reads the classifier's features, 1 classifier pass; when the budget
    covers every coalition of the n cells, 2^n forwards and no network (the exact values). Raises ValueError for
    weights without that check (nothing to weight the network by) or a decay outside (0, 1), BudgetError below
    min(2^n, 4) forwards."""

    name = "fastshap_grid_bayes"
    default_budget = 256

    def __init__(self, scorer, *, weights: str | Path | FastShapGridCheckpoint, decay: float = DEFAULT_DECAY, **kw):
        super().__init__(scorer, weights=weights, **kw)
        self.prior_error = stated_error(self.ckpt.heldout, "shapley_median_rel_l2",
                                        f"fastshap_grid_bayes: {self.source or 'the network'}",
                                        "train it with python -m tasks.fastshap_grid_train")
        self.decay = check_decay(decay)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "decay": self.decay, "prior_relative_error": self.prior_error}

    def min_budget(self, num_regions, num_targets):
        cells = self.ckpt.grid[0] * self.ckpt.grid[1]
        return min(2 ** cells, 4), "the empty and the full coalition and one designed pair of cells"

    def _explain(self, image, regions, budget, generator):
        H, W = image.shape[-2:]
        rows, cols = self.ckpt.grid
        cells = grid_regions(H, W, rows, cols, self.device)
        game = RegionGame(self.score, image, cells, self.perturbation, self.chunk_size)

        def prior(empty: torch.Tensor, full: torch.Tensor) -> ShapleyPrior:
            values = self.cell_values(image, full.to(self.device), empty.to(self.device))
            return ShapleyPrior(values.double().cpu(), self.prior_error)

        est = bayes_shapley(game, rows * cols, budget, numpy_rng(generator), self.device, self.decay, prior)
        phi = est.phi.float().to(self.device)
        area = cells.reshape(rows * cols, -1).sum(1).clamp_min(1).to(phi)
        saliency = paint(phi / area, cells.to(phi))
        relevance = None if regions is None else region_means(saliency, regions.to(saliency))
        return saliency, relevance, {"full_score": est.full.to(self.device), "empty_score": est.empty.to(self.device)}


__all__ = ["FORMAT", "VERSION", "FastShapGrid", "FastShapGridBayesShapley", "FastShapGridCheckpoint",
           "FastShapGridExplanation",
           "FastShapGridNet", "GridCellFeatures", "ResidualBlock", "grid_scalars", "network_inputs", "normalise"]
