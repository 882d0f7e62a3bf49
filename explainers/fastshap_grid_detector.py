"""FastSHAP on a k x k grid for a detector's targets: an explainer network that outputs the Shapley values of every
cell for each detection (pedestrian) in one forward of its own, after two detector passes (the image and the fully
hidden image) -- a saliency map per detection without sampling. The detector variant of
:mod:`explainers.fastshap_grid` (whose players are the same cells, for a classifier's classes).

The game is the region game of RExL's cell grid (``explainers.rexl.cell_labels``: k x k cells over the image): a cell
is hidden by the perturbation (the image's mean colour by default: the deletion substrate of the causal metrics),
the value of a coalition is the detection's D-RISE similarity (``detection.scorers.DRiseScorer``: the best IoU x
objectness x class-cosine of any candidate with the target box), black box: forwards only.

Network (:class:`FastShapGridDetectorNet`): per cell, the state the box-conditioned RExL policy reads of the image
(``explainers.rexl_detector``: the maps the detection head reads pooled to the grid, the target's support map and
its log, the box's cover of the cell; :func:`detector_state`) plus the game's two ends v(all), v(none) and their gap
as constant channels, standardised by training-set statistics stored with the weights, a 1 x 1 embedding, residual
3 x 3 blocks between neighbouring cells and a 1 x 1 head to one raw value per cell. The image's pass gives both the
targets' v(all) and the state (``DetectorCellFeatures.run``), so the model forwards are exactly 2.

Additive efficient normalisation (Jethani, Sudarshan, Covert, Lee & Ranganath, "FastSHAP: Real-Time Shapley Value
Estimation", ICLR 2022, https://arxiv.org/abs/2107.07436): phi = raw + (v(all) - v(none) - sum raw) / n over the n
cells, so each map's cells sum to the detection's score gap exactly (to float rounding). Trained by
``tasks.fastshap_grid_detector_train`` on the person detections of training-split scenes (paired Shapley-kernel
coalitions, the FastSHAP weighted least squares); the weights file (:class:`FastShapGridDetectorCheckpoint`) records
the detector's weights fingerprint, the grid, the head maps read and the perturbation, and the explainer refuses
anything else.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from explainers.base import Explainer, region_means
from explainers.fastshap_grid import FastShapGridExplanation, ResidualBlock, normalise
from explainers.perturb import Perturbation
from explainers.regions import grid_labels
from explainers.rexl import box_condition
from explainers.rexl_detector import DetectorCellFeatures, cell_channels, needs
from explainers.trained import CountsExplainerForwards, LearnedExplainer, NetworkCheckpoint, perturbation_of

FORMAT = "xai-audit/fastshap-grid-detector"
VERSION = 1
NUM_SCALARS = 3           # per target: v(all), v(none), v(all) - v(none)
EXTRA_CHANNELS = 3 + NUM_SCALARS   # state channels beyond the F pooled ones: support, log support, box cover, ends
# the held-out check every explanation's options carry (the report's learned-grid table shows it)
HELDOUT_KEYS = ("pedestrians", "deletion_auc_median", "drise_deletion_auc_median", "insertion_auc_median",
                "drise_insertion_auc_median", "drise_budget", "coalition_r2")


def detector_state(features: torch.Tensor, cover: torch.Tensor, full: torch.Tensor, empty: torch.Tensor,
                   grid: int) -> torch.Tensor:
    """The network's input [N, F + EXTRA_CHANNELS, k, k] of N targets: :class:`~explainers.rexl_detector.
    DetectorCellFeatures` features of the image [N, F k^2 + k^2 + 1] (the F pooled channels, the target's support
    map; its score is ``full``), the box's cover of each cell [N, k^2] (``explainers.rexl.box_condition``'s first
    k^2 columns) and the game's ends ``full`` = v(all), ``empty`` = v(none) [N]. Raw (the network standardises)."""
    N, n = cover.shape
    feats = features.float()
    cells, log_support = cell_channels(feats, n)
    ends = torch.stack([full, empty, full - empty], 1).float().to(feats.device)[:, :, None].expand(N, NUM_SCALARS, n)
    state = torch.cat([cells, log_support, cover.float().to(feats.device)[:, None], ends], 1)
    return state.reshape(N, -1, grid, grid)


class FastShapGridDetectorNet(nn.Module):
    """state [N, channels, k, k] (:func:`detector_state`) -> raw cell values [N, k, k]: standardised by the stored
    training-set statistics, a 1 x 1 embedding to ``width``, ``blocks`` residual 3 x 3 blocks (context from
    neighbouring cells) and a 1 x 1 head. Raises ValueError for a state of another channel count or grid."""

    def __init__(self, channels: int, grid: int = 9, width: int = 64, blocks: int = 2):
        super().__init__()
        self.channels, self.grid = int(channels), int(grid)
        self.register_buffer("state_mean", torch.zeros(self.channels))
        self.register_buffer("state_std", torch.ones(self.channels))
        self.embed = nn.Sequential(nn.Conv2d(self.channels, width, 1), nn.ReLU(inplace=True))
        self.mix = nn.Sequential(*[ResidualBlock(width) for _ in range(blocks)])
        self.head = nn.Sequential(nn.Conv2d(width, width, 1), nn.ReLU(inplace=True), nn.Conv2d(width, 1, 1))

    def standardise(self, state: torch.Tensor) -> None:
        """Set the stored statistics from training states [N, channels, k, k] (per channel)."""
        with torch.no_grad():
            self.state_mean.copy_(state.mean((0, 2, 3)))
            self.state_std.copy_(state.std((0, 2, 3)).clamp_min(1e-6))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        if state.ndim != 4 or tuple(state.shape[1:]) != (self.channels, self.grid, self.grid):
            raise ValueError(f"fastshap_grid_detector: the network reads states [N, {self.channels}, {self.grid}, "
                             f"{self.grid}], got {tuple(state.shape)}")
        z = (state.float() - self.state_mean[:, None, None]) / self.state_std[:, None, None]
        return self.head(self.mix(self.embed(z)))[:, 0]


@dataclass
class FastShapGridDetectorCheckpoint(NetworkCheckpoint):
    """What a FastShapGridDetector weights file holds (:class:`~explainers.trained.NetworkCheckpoint`): the
    network's weights and shape, what it was trained for (the detector's weights fingerprint, the grid k, the head
    maps ``layers`` its state reads, the perturbation's description), a ``training`` record and a ``heldout`` record
    (deletion / insertion AUC on held-out training-split pedestrians beside D-RISE's at a stated budget, and the share
    of held-out coalition values the estimate explains)."""

    model_sha256: str
    grid: int
    layers: tuple[int, ...]
    channels: int
    perturbation: str
    state_dict: dict
    width: int = 64
    blocks: int = 2
    value_scale: float = 1.0          # the network's raw output x this = score units (its training targets' RMS)
    training: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    _networks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    FORMAT, VERSION = FORMAT, VERSION
    WHAT, HOW_TO_TRAIN = "fastshap_grid_detector weights", "train one with tasks.fastshap_grid_detector_train"
    REQUIRED = ("model_sha256", "grid", "layers", "channels", "perturbation", "state_dict")
    TUPLES = ("layers",)

    def network(self, device: torch.device | str = "cpu") -> FastShapGridDetectorNet:
        """The network with the stored weights, in eval mode."""
        net = FastShapGridDetectorNet(self.channels, self.grid, self.width, self.blocks)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()


class FastShapGridDetector(LearnedExplainer, CountsExplainerForwards, Explainer):
    """Amortised Shapley values of a detection's grid-cell game (module docstring): FastSHAP (Jethani et al., ICLR
    2022, https://arxiv.org/abs/2107.07436) for detector targets, one saliency map per detection in one explainer
    forward.

    ``scorer``: a ``detection.scorers.DRiseScorer`` of a PyTorch YOLO adapter (``detection.models.yolo.
    YoloDetector``: the state reads its head's maps); its target boxes are the detections explained. ``weights``: a
    file written by ``tasks.fastshap_grid_detector_train`` (:class:`FastShapGridDetectorCheckpoint`) or a loaded
    checkpoint. Raises ValueError naming both sides when the detector's weights fingerprint (``check_weights=False``
    skips it: only for the sanity check's randomised copies, recorded in the options), the perturbation or the state's
    channel count (the detector's head maps ``layers`` give another) differ from what the network was trained for,
    for a layer the detection head does not have, and for a scorer the state cannot be read from.

    ``explain(image)``: image [3, H, W] (any size of at least k px a side: the grid is k x k cells of the image;
    ValueError for a smaller one). Returns saliency [T, H, W]
    (score units per pixel: each cell's Shapley value spread evenly over its pixels, so all pixels sum to
    v(all) - v(none)), relevance [T, R] = the mean saliency per region when regions are given (they only summarise
    the map), full_score / empty_score [T]. Spends exactly 2 model forwards (the image's pass, which also gives the
    state, and the fully hidden image's) and 1 explainer forward for all T targets (``n_explainer_forward``);
    BudgetError below 2."""

    name = "fastshap_grid_detector"
    default_budget = 2
    needs_detections = True
    needs_feature_maps = True
    trained_file_option = "weights"
    trained_file_hint = ("models/fastshap/detector_grid.pt of the models_fastshap stage, or python -m "
                         "tasks.fastshap_grid_detector_train")
    EXPLANATION = FastShapGridExplanation
    CHECKPOINT = FastShapGridDetectorCheckpoint

    def __init__(self, scorer, *, weights: str | Path | FastShapGridDetectorCheckpoint,
                 perturbation: str | Perturbation | None = None, check_weights: bool = True, **kw):
        ckpt, self.source, where = self.trained_file(weights)
        self.refuse_other_perturbation(ckpt.perturbation, perturbation, where)
        super().__init__(scorer, perturbation=perturbation or perturbation_of(ckpt.perturbation, self.name), **kw)
        self.check_weights = bool(check_weights)
        self.features = None
        if scorer is not None:
            why = needs(scorer)
            if why:
                raise ValueError(f"fastshap_grid_detector needs {why}, got "
                                 f"{type(getattr(scorer, 'model', None)).__name__} / {type(scorer).__name__}")
            if self.check_weights:
                self.refuse_other_model(scorer, ckpt.model_sha256, where)
            try:
                self.features = DetectorCellFeatures(scorer, ckpt.layers, ckpt.grid)
            except ValueError as exc:
                raise ValueError(f"fastshap_grid_detector: {where}: {str(exc).removeprefix('rexl: ')}") from None
            if self.features.channels + EXTRA_CHANNELS != ckpt.channels:
                raise ValueError(f"fastshap_grid_detector: {where} reads {ckpt.channels} state channels, the "
                                 f"detector's head maps {list(ckpt.layers)} give "
                                 f"{self.features.channels + EXTRA_CHANNELS}")
        self.ckpt = ckpt
        self.net = ckpt.shared_network(self.device)
        self.weights_sha256 = ckpt.digest()
        self.n_explainer_forward = 0

    def options(self) -> dict[str, Any]:
        c = self.ckpt
        return {**super().options(), "grid": c.grid, "layers": list(c.layers), "check_weights": self.check_weights,
                "weights": self.source, "weights_sha256": self.weights_sha256, "model_sha256": c.model_sha256[:12],
                "heldout": {k: c.heldout[k] for k in HELDOUT_KEYS if k in c.heldout}}

    def min_budget(self, num_regions, num_targets):
        return 2, "the image's pass and the fully hidden image's (the efficiency normalisation)"

    def _explain(self, image, regions, budget, generator):
        H, W = image.shape[-2:]
        k = self.ckpt.grid
        if H < k or W < k:        # a cell without pixels would drop its value: the map would not sum to the gap
            raise ValueError(f"fastshap_grid_detector: image {H} x {W} px has fewer pixels a side than the network's "
                             f"{k} x {k} cells")
        T = int(self.scorer.target_boxes.shape[0])
        scores, feats = self.features.run(image[None].to(self.device), torch.arange(T))   # one pass: v(all), state
        self._forwards += 1
        if self._targets is None:
            self._targets = self._check_scores(image[None], scores)
        full = scores[0].float()
        empty = self.score(self.perturbation.baseline(image)[None].to(self.device))[0]  # v(none)
        phi = self.values_from_state(feats, full, empty, H, W)                          # [T, k^2]
        labels = grid_labels(H, W, k, k, self.device)                  # [H, W]: each pixel's cell (cell_labels')
        area = torch.bincount(labels.flatten(), minlength=k * k).clamp_min(1).to(phi)
        saliency = (phi / area)[:, labels]                              # each cell's value spread over its pixels
        relevance = None if regions is None else region_means(saliency, regions.to(saliency))
        return saliency, relevance, {"full_score": full, "empty_score": empty}

    def values_from_state(self, features: torch.Tensor, full: torch.Tensor, empty: torch.Tensor, height: int,
                          width: int) -> torch.Tensor:
        """The network's efficient cell values [T, k^2] (row-major) of the scorer's targets from their state
        ``features`` of the image (:meth:`DetectorCellFeatures.run`) and the game's ends [T]: one explainer forward,
        no model forward."""
        k = self.ckpt.grid
        cover = box_condition(self.scorer.target_boxes.cpu(), height, width, k)[:, :k * k]
        state = detector_state(features, cover, full, empty, k)
        with torch.inference_mode():
            raw = self.net(state).flatten(1) * self.ckpt.value_scale                     # [T, k^2]
        self.n_explainer_forward += 1
        return normalise(raw[None], (full - empty).float()[None])[0]


__all__ = ["EXTRA_CHANNELS", "FORMAT", "HELDOUT_KEYS", "VERSION", "FastShapGridDetector",
           "FastShapGridDetectorCheckpoint", "FastShapGridDetectorNet", "detector_state"]
