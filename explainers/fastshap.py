"""FastSHAP for a pedestrian's body-part game: an explainer network that outputs the Shapley values of every body
part (and the context) in one forward of its own, after one detector call for the game's two ends.

The game is the one the audit reports for a pedestrian: players are its part masks in the order of the part grouping
(``detection.body.PART_GROUPS``: 10 parts, 6 or 4 groups) plus ``context`` (the box minus the body); the rest of the
image is always shown; a player is hidden by the perturbation (blur by default); the value is the scorer's score
(for the audited detector: the D-RISE similarity to the pedestrian's detection). Players change per instance (a part
the keypoints do not place has no pixel): such a player is a dummy of the game, its value is exactly 0, and the
network's output for it is dropped before the normalisation.

Network (:class:`FastShapNet`): the input is a ``roi_align`` crop of the person (the window around the union of the
masks, centred, ``scale`` x its height, aspect of ``size``, as the keypoint model crops a person box) with
channels: the image, the image minus its perturbation baseline (what hiding changes), every player's mask (resampled
into the crop by the same ``roi_align``) and the in-image indicator. A small convolutional trunk (stride 4) gives a
feature map; each player is read out by pooling the features under its mask (mean and area-weighted sum), with its
identity embedding, its area, the crop's global features and the game's two ends v(all), v(none) as scalars; a shared
MLP maps each player to its raw value.

Additive efficient normalisation (Jethani, Sudarshan, Covert, Lee & Ranganath, "FastSHAP: Real-Time Shapley Value
Estimation", ICLR 2022, https://arxiv.org/abs/2107.07436; reference code github.com/iancovert/fastshap):
phi_i = raw_i + (v(all) - v(none) - sum_j raw_j) / n over the n players with a pixel, in training and at explanation
time, so efficiency holds exactly (to float rounding). v(all) and v(none) are the scorer on the image and on the
image with every player hidden: 2 model forwards in one call, the only model forwards of an explanation.

Training (``tasks.fastshap_train``): the FastSHAP weighted least-squares objective on coalitions drawn from the
Shapley kernel, paired, of training-split persons; the weights file (:class:`FastShapCheckpoint`) records the audited
model's weights fingerprint (``explainers.trained.weights_fingerprint``), the players, the perturbation, the crop and a
held-out accuracy record (exact Shapley values by enumeration on held-out training-split persons). The explainer
refuses a model, a player set, a grouping or a perturbation other than the ones it was trained for.

:class:`FastShapBayesShapley` spends a budget on top: BayesShapley's designed pairs with the network's estimate as a
prior (``explainers.bayesian_shapley.ShapleyPrior``), weighted by the weights file's held-out error, so a poor
network costs little (measured, not guaranteed) and a good one replaces pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from detection.body import PART_GROUPS
from explainers.base import Explainer, Explanation, has_pixel, mask_boxes, numpy_rng, paint, region_set
from explainers.bayesian_shapley import (
    DEFAULT_DECAY,
    BayesShapley,
    ShapleyPrior,
    bayes_shapley,
    check_decay,
    stated_error,
)
from explainers.game import RegionGame
from explainers.perturb import Compositor, Perturbation
from explainers.trained import CountsExplainerForwards, LearnedExplainer, NetworkCheckpoint, perturbation_of

FORMAT = "xai-audit/fastshap-parts"
VERSION = 1
NUM_SCALARS = 5           # v(all), v(none), v(all) - v(none), crop-window height / image height, in-image share
IMAGE_MEAN, IMAGE_STD = 0.5, 0.25
# the weights file's held-out check that every explanation's options carry (the report shows it beside the job)
HELDOUT_KEYS = ("persons", "median_rel_l2", "p90_rel_l2", "top_part_agreement", "uniform_split_median_rel_l2")


def player_names(grouping: str = "parts10", context: bool = True) -> tuple[str, ...]:
    """The players of a part game in their column order: the grouping's parts (``PART_GROUPS``), then ``context``.
    Raises ValueError for an unknown grouping."""
    if grouping not in PART_GROUPS:
        raise ValueError(f"fastshap: unknown part grouping {grouping!r}; expected one of {sorted(PART_GROUPS)}")
    return (*PART_GROUPS[grouping], *(("context",) if context else ()))


# ---------------------------------------------------------------------------------------------- crop
MARGIN = 2   # pixels of the image kept around a person's masks when they are cropped (so roi_align's bilinear samples
#              at the box's edge read the zeros beyond it, as they would in the whole image)


@dataclass(frozen=True)
class Crop:
    """The person window: centred on the bounding box of the players' union, ``scale`` x its height (or width /
    aspect, the larger), resampled to ``size`` (H, W) by ``roi_align`` (aligned, 2 samples per bin)."""

    size: tuple[int, int] = (64, 32)
    scale: float = 1.25

    def window(self, masks: torch.Tensor) -> torch.Tensor:
        """Window [4] (xyxy pixel edges) of masks [P, H, W]; raises ValueError when no mask has a pixel."""
        return self.windows(mask_boxes(masks.reshape(-1, *masks.shape[-2:])[None]))[0]

    def windows(self, boxes: torch.Tensor) -> torch.Tensor:
        """Windows [N, 4] (xyxy pixel edges, float32) of N persons' mask bounding boxes [N, 4] as (y1, y2, x1, x2)
        (:func:`~explainers.base.mask_boxes`); raises ValueError when a box is empty (no mask has a pixel)."""
        b = boxes.double()
        y1, y2, x1, x2 = b.unbind(-1)
        empty = ((y2 <= y1) | (x2 <= x1)).nonzero()[:, 0].tolist()
        if empty:
            raise ValueError(f"fastshap: no player of person(s) {empty} has a pixel (cannot place the person crop)")
        aspect = self.size[1] / self.size[0]
        h = self.scale * torch.maximum(torch.maximum(y2 - y1, (x2 - x1) / aspect), torch.ones_like(y1))
        cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
        return torch.stack([cx - h * aspect / 2, cy - h / 2, cx + h * aspect / 2, cy + h / 2], -1).float()

    def __call__(self, planes: torch.Tensor, window: torch.Tensor) -> torch.Tensor:
        """Planes [C, H, W] cropped at ``window`` [4] -> [C, *size] (bilinear, zero outside the image); planes
        [1, C, H, W] at windows [N, 4] -> [N, C, *size] (one ``roi_align`` for the N windows)."""
        if planes.ndim == 3:
            return self(planes[None], window[None])[0]
        rois = torch.cat([window.new_zeros(window.shape[0], 1), window], 1).to(planes.device, torch.float32)
        return roi_align(planes.float(), rois, self.size, spatial_scale=1.0, sampling_ratio=2, aligned=True)


def persons_inputs(image: torch.Tensor, baseline: torch.Tensor, masks: torch.Tensor, crop: Crop,
                   boxes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The network's inputs [N, 6 + P + 1, *crop.size] for N persons of one image: image (normalised), image -
    baseline (x 1/STD), the P player masks (each person's [P, H, W] of ``masks`` [N, P, H, W], bool or float; empty
    ones all zero), the in-image indicator; and each window's height over the image height [N]. ``image``,
    ``baseline``: [3, H, W] in the model's units; ``boxes``: the persons' mask bounding boxes [N, 4]
    (:func:`~explainers.base.mask_boxes`, computed when not given). The image planes are cropped for all persons
    in one ``roi_align``; each person's masks only inside their box (plus ``MARGIN`` px), so nothing is converted
    or resampled at the image's full size per person; with the default :class:`Crop` the values are those of
    cropping full-size planes bit for bit (its windows' edges fall on 1/8 px), with other crop shapes within float32
    rounding of the sample coordinates (~5e-5 on 1080 x 1920 images). N = 0 gives empty results. Raises ValueError
    naming the persons without a pixel."""
    N, P, H, W = masks.shape
    if N == 0:
        return masks.new_zeros(0, 7 + P, *crop.size, dtype=torch.float32), torch.zeros(0, dtype=torch.float64)
    boxes = mask_boxes(masks) if boxes is None else boxes
    windows = crop.windows(boxes)                                                     # [N, 4], float32
    planes = torch.cat([(image - IMAGE_MEAN) / IMAGE_STD, (image - baseline) / IMAGE_STD, torch.ones_like(image[:1])])
    shared = crop(planes[None], windows.to(image.device))                            # [N, 7, h, w]
    own = []
    for n, (y1, y2, x1, x2) in enumerate(boxes.tolist()):
        y1, x1, y2, x2 = max(0, y1 - MARGIN), max(0, x1 - MARGIN), min(H, y2 + MARGIN), min(W, x2 + MARGIN)
        shift = torch.tensor([x1, y1, x1, y1], dtype=windows.dtype, device=windows.device)
        own.append(crop(masks[n, :, y1:y2, x1:x2].to(image)[None], (windows[n] - shift)[None].to(image.device)))
    x = torch.cat([shared[:, :6], torch.cat(own), shared[:, 6:]], 1)
    return x, (windows[:, 3] - windows[:, 1]).double() / H


def person_inputs(image: torch.Tensor, baseline: torch.Tensor, masks: torch.Tensor,
                  crop: Crop) -> tuple[torch.Tensor, float]:
    """The network's input [6 + P + 1, *crop.size] for one person (:func:`persons_inputs` of masks [P, H, W]) and
    the window's height over the image height."""
    x, height = persons_inputs(image, baseline, masks[None], crop)
    return x[0], float(height[0])


def scalar_inputs(full: torch.Tensor, empty: torch.Tensor, window_height: torch.Tensor,
                  inside: torch.Tensor) -> torch.Tensor:
    """Scalars [N, NUM_SCALARS] of N (person, target) rows: v(all), v(none), their gap, window height / image
    height, the share of the crop inside the image."""
    return torch.stack([full, empty, full - empty, window_height, inside], 1).float()


# ---------------------------------------------------------------------------------------------- network
class FastShapNet(nn.Module):
    """inputs [N, 7 + P, h, w], scalars [N, NUM_SCALARS] -> raw player values [N, P] (module docstring)."""

    def __init__(self, players: int, width: int = 32, hidden: int = 128, embed: int = 16):
        super().__init__()
        self.players = players
        w = width

        def conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1), nn.ReLU(inplace=True))

        self.trunk = nn.Sequential(conv(7 + players, w), conv(w, w, 2), conv(w, 2 * w), conv(2 * w, 2 * w, 2),
                                   conv(2 * w, 2 * w))
        self.identity = nn.Embedding(players, embed)
        self.head = nn.Sequential(nn.Linear(6 * w + embed + 2 + NUM_SCALARS, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor, scalars: torch.Tensor) -> torch.Tensor:
        P = self.players
        f = self.trunk(x)                                                        # [N, C, h/4, w/4]
        m = F.adaptive_avg_pool2d(x[:, 6:6 + P], f.shape[-2:])                   # [N, P, h/4, w/4]
        mass = m.sum((2, 3))                                                     # [N, P]
        pooled = torch.einsum("nchw,nphw->npc", f, m)                            # [N, P, C]
        cells = f.shape[-2] * f.shape[-1]
        mean = pooled / mass.clamp_min(1e-3)[..., None]
        glob = f.mean((2, 3))[:, None].expand(-1, P, -1)
        ident = self.identity.weight[None].expand(f.shape[0], -1, -1)
        area = torch.stack([mass / cells, torch.log1p(mass)], -1)
        s = scalars[:, None].expand(-1, P, -1)
        return self.head(torch.cat([mean, pooled / cells, glob, ident, area, s], -1))[..., 0]


def normalise(raw: torch.Tensor, present: torch.Tensor, gap: torch.Tensor) -> torch.Tensor:
    """Additive efficient normalisation: raw [N, P] -> phi [N, P], 0 where not ``present`` [N, P] (bool), and
    ``gap`` [N] = v(all) - v(none) minus the present players' sum shared equally among them (a row without a present
    player is all 0)."""
    raw = raw * present
    n = present.sum(1, keepdim=True).clamp_min(1)
    return (raw + (gap[:, None] - raw.sum(1, keepdim=True)) / n) * present


# ---------------------------------------------------------------------------------------------- weights file
@dataclass
class FastShapCheckpoint(NetworkCheckpoint):
    """What a FastShapParts weights file holds (:class:`~explainers.trained.NetworkCheckpoint`): the network's
    weights and shape, what it was trained for (the audited model's weights fingerprint, the grouping and player
    names, the perturbation's description, the crop), a ``training`` record (data, persons, coalitions, epochs,
    seconds, seed, the detector's game settings) and a ``heldout`` accuracy record (exact Shapley values by
    enumeration on held-out training-split persons: median / p90 relative L2 error, top-part agreement, persons)."""

    model_sha256: str
    grouping: str
    players: tuple[str, ...]
    perturbation: str
    state_dict: dict
    crop_size: tuple[int, int] = (64, 32)
    crop_scale: float = 1.25
    width: int = 32
    hidden: int = 128
    training: dict = field(default_factory=dict)
    heldout: dict = field(default_factory=dict)
    _networks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    FORMAT, VERSION, WHAT, HOW_TO_TRAIN = FORMAT, VERSION, "fastshap weights", "train one with tasks.fastshap_train"
    REQUIRED = ("model_sha256", "grouping", "players", "perturbation", "state_dict")
    TUPLES = ("players", "crop_size")

    @property
    def crop(self) -> Crop:
        return Crop(tuple(self.crop_size), self.crop_scale)

    def network(self, device: torch.device | str = "cpu") -> FastShapNet:
        """The network with the stored weights, in eval mode."""
        net = FastShapNet(len(self.players), self.width, self.hidden)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()


# ---------------------------------------------------------------------------------------------- explainer
@dataclass
class FastShapExplanation(Explanation):
    """An :class:`~explainers.base.Explanation` with the explainer network's forwards (``n_forward`` counts the
    model's only)."""

    n_explainer_forward: int = 0


class FastShapParts(LearnedExplainer, CountsExplainerForwards, Explainer):
    """Amortised Shapley values of a pedestrian's body-part game (module docstring): FastSHAP (Jethani et al., ICLR
    2022, https://arxiv.org/abs/2107.07436) with players that change per instance.

    ``weights``: a weights file written by ``tasks.fastshap_train`` (:class:`FastShapCheckpoint`) or a loaded
    checkpoint. ``grouping``: the part grouping the caller's regions follow (None: the one trained for). The guard
    raises ValueError naming both sides when the audited model's weights fingerprint
    (:func:`~explainers.trained.weights_fingerprint`), the grouping or the perturbation differ from what the network
    was trained for (``check_weights=False`` skips the model check: only for sanity checks that feed a randomised
    model on purpose; recorded in the options).

    ``explain(image, regions)``: regions must be the P = ``len(players)`` player masks [P, H, W] in the trained
    order (``checkpoint.players``: the grouping's parts, then ``context``); a part without a pixel is allowed (a
    dummy: relevance exactly 0). Returns relevance [T, P] (score units, sum = full_score - empty_score exactly up to
    float rounding), saliency [T, H, W] painted from it, full_score / empty_score [T]. Spends exactly 2 model
    forwards (``n_forward``: the full and the empty coalition, one scorer call) and 1 explainer forward
    (``n_explainer_forward``, also in ``options``).

    ``per_target_regions``: regions may also be [T, P, H, W], each target's (pedestrian's) own player masks, so one
    call explains every person of an image: 1 + T model forwards in one scorer call (the unperturbed image, shared,
    and each target's empty coalition; its score of target t is read) and 1 explainer forward of T crops, the same
    values as T calls of [P, H, W] up to float rounding of the batch. Raises ValueError for regions of another count
    or a label map, BudgetError for a budget below 2 (per target, as with per-target regions every budget is)."""

    name = "fastshap"
    default_budget = 2
    needs_regions = True
    accepts_regions = True
    shapley_values = True
    trained_file_option = "weights"
    trained_file_hint = ("models/fastshap/detector_parts.pt of the models_fastshap stage, or python -m "
                         "tasks.fastshap_train")
    EXPLANATION = FastShapExplanation
    CHECKPOINT = FastShapCheckpoint
    # regions are always the P players in the trained order, empty masks included (the column of a mask names its
    # player: the explain stage builds them so, and lists only the players with a pixel in its rows)
    fixed_players = True
    per_target_regions = True

    @property
    def players(self) -> tuple[str, ...]:
        """The player names in the trained order: the columns of the regions ``explain`` takes."""
        return tuple(self.ckpt.players)

    def __init__(self, scorer, *, weights: str | Path | FastShapCheckpoint, grouping: str | None = None,
                 perturbation: str | Perturbation | None = None, check_weights: bool = True, **kw):
        ckpt, self.source, where = self.trained_file(weights)
        if grouping is not None and grouping != ckpt.grouping:
            raise ValueError(f"{self.name}: {where} was trained on part grouping {ckpt.grouping!r}, got "
                             f"{grouping!r}: train a network for that grouping")
        self.refuse_other_perturbation(ckpt.perturbation, perturbation, where)
        super().__init__(scorer, perturbation=perturbation or perturbation_of(ckpt.perturbation, self.name), **kw)
        self.check_weights = bool(check_weights)
        if self.check_weights:
            self.refuse_other_model(scorer, ckpt.model_sha256, where)
        self.ckpt = ckpt
        self.net = ckpt.shared_network(self.device)
        self.weights_sha256 = ckpt.digest()            # of the weights self.net was built from (cached)
        self._columns: torch.Tensor | None = None
        self.n_explainer_forward = 0

    def options(self) -> dict[str, Any]:
        c = self.ckpt
        return {**super().options(), "grouping": c.grouping, "players": len(c.players),
                "check_weights": self.check_weights, "weights": self.source, "weights_sha256": self.weights_sha256,
                "model_sha256": c.model_sha256[:12],
                "heldout": {k: c.heldout[k] for k in HELDOUT_KEYS if k in c.heldout}}

    def min_budget(self, num_regions, num_targets):
        return 2, "the full and the empty coalition (the efficiency normalisation)"

    def explain(self, image, regions=None, *, budget=None, seed=0) -> FastShapExplanation:
        """:meth:`Explainer.explain <explainers.base.Explainer.explain>` on the P player masks in the trained order
        (class docstring), with the explainer forwards (``n_explainer_forward``:
        :class:`~explainers.trained.CountsExplainerForwards`)."""
        P = len(self.ckpt.players)
        shape = None if regions is None else tuple(torch.as_tensor(regions).shape)
        per_target = self.per_target_regions and shape is not None and len(shape) == 4
        if shape is None or len(shape) != 3 + per_target or shape[-3] != P:
            each = " or one stack per target [T, P, H, W]" if self.per_target_regions else ""
            raise ValueError(f"{self.name}: regions must be the {P} player masks [{P}, H, W]{each} in the order "
                             f"{list(self.ckpt.players)} (empty masks for missing parts), got {shape}")
        if image.ndim == 3 and not per_target:
            self._columns = region_set(regions, image.shape[-2:], self.device).columns
        return super().explain(image, regions, budget=budget, seed=seed)      # CountsExplainerForwards.explain

    def _explain(self, image, regions, budget, generator):
        if regions.ndim == 4:
            return self._explain_each(image, regions)
        game = RegionGame(self.score, image, regions, self.perturbation, self.chunk_size)
        n = regions.shape[0]
        ends = game(torch.stack([torch.ones(n), torch.zeros(n)]).to(self.device))   # [2, T]: v(all), v(none)
        full, empty = ends[0], ends[1]
        phi = self._amortised(image, regions, full, empty, game.composite.baseline[0])
        return paint(phi, regions), phi, {"full_score": full, "empty_score": empty}

    def _explain_each(self, image: torch.Tensor, regions: torch.Tensor):
        """Per-target regions [T, P, H, W]: the unperturbed image and each target's empty coalition (its players
        hidden as :class:`~explainers.game.RegionGame` hides them: shown = 1 - their clamped coverage, computed
        inside the target's mask box) in chunks of ``chunk_size``; target t's empty score is row 1 + t's column
        t."""
        T, _, H, W = regions.shape
        boxes = mask_boxes(regions)                                                       # [T, 4]: one pass
        composite = Compositor(image, self.perturbation.baseline(image))
        batch = torch.ones(1 + T, H, W, dtype=image.dtype, device=image.device)
        for t, (y1, y2, x1, x2) in enumerate(boxes.tolist()):
            batch[1 + t, y1:y2, x1:x2] = (1 - regions[t, :, y1:y2, x1:x2].to(image).sum(0)).clamp(0, 1)
        scores = torch.cat([self.score(composite(batch[s:s + self.chunk_size]))
                            for s in range(0, T + 1, self.chunk_size)])                  # [1 + T, T]
        full, empty = scores[0], scores[1:].diagonal()
        phi = self._amortised(image, regions, full, empty, composite.baseline[0], boxes)
        return paint(phi, regions, boxes), phi, {"full_score": full, "empty_score": empty}

    def _amortised(self, image: torch.Tensor, regions: torch.Tensor, full: torch.Tensor,
                   empty: torch.Tensor, baseline: torch.Tensor, boxes: torch.Tensor | None = None) -> torch.Tensor:
        """The network's efficient estimate [T, n] given the game's ends ``full`` = v(all), ``empty`` = v(none) [T]
        and the perturbation's ``baseline`` [3, H, W] of ``image`` (the game's own, computed once): one explainer
        forward, no model forward. ``regions``: the n non-empty players [n, H, W] (in trained order; their columns
        set by :meth:`explain`) shared by the T targets, or each target's P player masks [T, P, H, W] (n = P;
        dummies get 0) with their bounding boxes ``boxes`` [T, 4] for the crops
        (:func:`~explainers.base.mask_boxes`, computed when not given)."""
        P = len(self.ckpt.players)
        T = full.shape[0]
        if regions.ndim == 4:
            masks, columns = regions, torch.arange(P, device=self.device)
            present = has_pixel(regions.flatten(2), 2)                                      # [T, P]
        else:
            columns = self._columns.to(self.device)
            masks = regions.new_zeros(P, *regions.shape[1:]).index_copy_(0, columns, regions)[None]
            present = torch.zeros(T, P, dtype=torch.bool, device=self.device)
            present[:, columns] = True
        x, height = persons_inputs(image, baseline, masks, self.ckpt.crop, boxes)   # one crop per person
        x = x.expand(T, -1, -1, -1)
        scalars = scalar_inputs(full, empty, height.to(self.device).expand(T), x[:, -1].mean((1, 2)))
        with torch.inference_mode():
            raw = self.net(x, scalars)
        self.n_explainer_forward += 1
        return normalise(raw.float(), present, (full - empty).float())[:, columns]


class FastShapBayesShapley(FastShapParts):
    """BayesShapley (:mod:`explainers.bayesian_shapley`) with :class:`FastShapParts`' one-forward estimate as its
    prior: the estimate is one more, noisy observation of the Shapley values, weighted by the relative error the
    weights file's own held-out check measured (``heldout["median_rel_l2"]``; the median, a choice: heavy-tailed
    errors make the typical squared error larger), so a poor network whose errors do not follow the values gets little
    weight and the result stays close to plain BayesShapley at the same model forwards (measured on held-out
    pedestrians, not guaranteed: benchmarks/README.md, "Learned explainers I"). The FastSHAP network: Jethani et al.,
    ICLR 2022, https://arxiv.org/abs/2107.07436.

    Weights, guard and regions as :class:`FastShapParts`; ``decay`` as BayesShapley's. Returns relevance [T, P]
    (score units, efficiency exact), saliency, full / empty scores [T]. Spends at most 2 + 2 floor((budget - 2) / 2)
    model forwards (2^n when that covers every coalition of the n players with a pixel: then exact, no network) and
    1 explainer forward. Raises ValueError for weights without a held-out check (nothing to weight the network by) or
    a decay outside (0, 1), BudgetError for a budget below min(2^n, 4)."""

    name = "fastshap_bayes"
    default_budget = 16
    per_target_regions = False          # each target's own designed pairs: one game per call

    def __init__(self, scorer, *, weights: str | Path | FastShapCheckpoint, decay: float = DEFAULT_DECAY, **kw):
        super().__init__(scorer, weights=weights, **kw)
        self.prior_error = stated_error(self.ckpt.heldout, "median_rel_l2",
                                        f"fastshap_bayes: {self.source or 'the network'}",
                                        "train it with tasks.fastshap_train (--heldout-persons > 0)")
        self.decay = check_decay(decay)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "decay": self.decay, "prior_relative_error": self.prior_error}

    min_budget = BayesShapley.min_budget          # the same designed pairs: the same minimum

    def _explain(self, image, regions, budget, generator):
        game = RegionGame(self.score, image, regions, self.perturbation, self.chunk_size)

        def prior(empty: torch.Tensor, full: torch.Tensor) -> ShapleyPrior:
            full, empty = full.to(self.device), empty.to(self.device)
            return ShapleyPrior(self._amortised(image, regions, full, empty, game.composite.baseline[0]).cpu(),
                                self.prior_error)

        est = bayes_shapley(game, regions.shape[0], budget, numpy_rng(generator), self.device, self.decay, prior)
        phi = est.phi.float().to(self.device)
        return paint(phi, regions), phi, {"full_score": est.full, "empty_score": est.empty}


__all__ = ["FORMAT", "VERSION", "Crop", "FastShapBayesShapley", "FastShapCheckpoint", "FastShapExplanation",
           "FastShapNet", "FastShapParts",
           "normalise", "person_inputs", "persons_inputs", "player_names", "scalar_inputs"]
