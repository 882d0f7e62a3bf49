"""RExL (Agarwal et al., "Reinforcement Explanation Learning", NeurIPS 2021 XAI4Debugging workshop,
https://arxiv.org/abs/2111.13406; reference code CVIR/RExL): saliency as a sequential search. An agent deletes (or
inserts) one cell of a k x k grid per step; the reward is the target's score after the step (negated for deletion),
gamma = 1, so the return is the deletion / insertion AUC at cell granularity. At inference a deterministic roll-out
of the trained policy orders the k^2 cells; the order and the score curve it produced give the saliency.

This module is the pure-PyTorch half: the cell game (:class:`CellGame`, N episodes in lockstep, shared with the
Gymnasium environment of ``tasks.rexl_env``), the state (:func:`observation`), the feature extractors, the plain
torch policy (:class:`RexlPolicy`, an MLP exported from stable-baselines3 by ``tasks.rexl_train``; no RL library is
needed here), its checkpoint format and the :class:`Rexl` explainer.

Game (per episode, k = ``grid``, n = k^2 cells, cells = ``grid_regions`` rows x cols of the image):
  * deletion: the canvas starts as the image; action a replaces cell a by the substrate (the perturbation's
    baseline); insertion: the canvas starts as the baseline and action a restores cell a of the image.
  * a cell is taken once: actions already taken are masked (the reference lets re-picks do nothing instead, so an
    episode may end with cells never taken; masking keeps every episode a full ordering of the n cells).
  * s_t = the target's score of the canvas after t steps (s_0: start canvas, s_n: the end canvas, i.e. the baseline
    for deletion, the image for insertion: both the same whatever the order).
  * reward r_t = sign * (s_{t-1} + s_t) / (2 n), sign = -1 for deletion, +1 for insertion, so with gamma = 1 the
    return is exactly sign * trapezoid AUC of the curve s_0..s_n over fractions 0, 1/n, .., 1, i.e.
    ``explainers.metrics.deletion_insertion(..., steps=n)`` of a saliency map that is constant on each cell and
    ranks the cells in the episode's order (on an image whose sides are multiples of k). The paper's reward
    sign * s_t / n differs from it by sign * (s_{t-1} - s_t) / (2 n), whose sum over an episode is
    sign * (s_0 - s_n) / (2 n): the same for every order, so both rewards have the same optimal policies.

State (:func:`observation`): frozen features of the current canvas (insertion: also of the image), standardised by
fixed per-feature statistics stored with the policy, the taken-cells mask [n], and the conditioning: nothing
(``none``: per-class / per-image agents), the target class one-hot [C] (``class``: a dataset-wide classifier agent),
or the target box (``box``: its cover of each cell [n] plus its xyxy / (W, H, W, H) [4], so one agent serves every
pedestrian of a detector). Features: the audited model's own frozen backbone where it is a PyTorch classifier with a
``features`` module (``backbone``), else :class:`FixedCNN` (a small convolutional net with seeded random weights).
Class maps (``backbone`` with ``cam`` = k, a network whose head is one Linear layer on the globally pooled features,
e.g. the demo SceneNet): the features also carry every class's activation map on the k x k grid (the head's class
weights applied at each position of the canvas's feature map, CAM-style), and the state appends the target class's
map, standardised over the cells (:func:`observation`). The policy then sees where the evidence for its target lies
in the *current* canvas without having to learn a class-by-position gate from the one-hot; the maps come from the
same backbone pass as the features (no extra forward). Measured on a training-split validation subset (16 training
scenes never in the RL pool, 4 classes, cell-granularity deletion AUC, lower is better): always deleting the cell of
the highest current map scores 0.47, a random order 0.70, the 15.7k-step policy without maps 0.67.

Cell policies (``arch='cells'``, :class:`CellPolicy` on :class:`CellFeatures`; classifiers, deletion, class
conditioning): the state is per cell (:func:`cell_state`: earlier blocks of the classifier's own network and its class
maps pooled to the grid, the taken mask, the class one-hot and the target's current probability) and one network
shared by all cells scores each. The demo classifier's last feature map (4 x 5) is coarser than the 7 x 7 grid, so
features pooled from it cannot say which of two neighbouring cells holds the evidence; the earlier blocks can.
Trained by imitating a one-step look-ahead teacher (``tasks.rexl_imitation``, DAgger) or by stable-baselines3's
MaskablePPO with the cell policy as its actor (``tasks.rexl_cells_ppo``); ``benchmarks/bench_rexl_state.py`` and
``benchmarks/bench_rexl_ppo.py`` measure them. A detector's cell policy (box conditioning, deletion or insertion;
features ``detector_cells``: ``explainers.rexl_detector``) reads the detection head's input maps pooled to the grid,
the target's support map (the best D-RISE similarity of the anchors centred in each cell) and the target box's cover
of each cell, all from the pass that scores the canvas (insertion: also from one pass of the image); one policy
serves every pedestrian. Trained by
``tasks.rexl_imitation.train_look_ahead_boxes``; ``benchmarks/bench_rexl_detector.py`` measures it against
D-RISE@4000.

Saliency (``credit``): ``cumulative`` (the paper's rule) adds each reward change r_t - r_{t-1} (with r_0 = sign *
s_0) to every cell taken so far, so cell a_i (taken at step i) gets sign * (s_n - s_{i-1}): for deletion the score
it stood on before its removal above the end score; ``single`` (the reference library class) credits r_t - r_{t-1}
= sign * (s_t - s_{t-1}) to the cell taken at step t only; ``rank`` (ours) gives cell a_i the value (n - i + 1) / n
(1 for the first cell taken, 1/n for the last), so that the map ranks the cells exactly in the roll-out's order.
The two credit rules rank cells by the curve instead, which is the order only while the curve is monotone: for
deletion, a cell taken while the score sat below the end score s_n gets a negative value and ranks below cells taken
after it. Measured (``benchmarks/bench_rexl.py``, demo classifier, 3 held-out scenes x 4 classes, medians,
deletion AUC, mean substrate, 20 steps): the greedy order scores 0.71 with its cumulative-credit map (bilinear),
0.44 single-cell, 0.16 with its rank map (bilinear) and 0.13 with its rank map constant on cells; RISE@4000 0.20.
The k x k map is upsampled bilinearly (align_corners False, the paper's) or, with ``upsample='nearest'``, kept
constant on each cell (exactly the cells of the game). Bilinear
blending ranks the centres of many cells above the borders of the first ones, so a pixel-level deletion curve removes
parts of many cells instead of the whole first cells (on one held-out scene's top class the greedy order's rank
map scored 0.17 nearest and 0.57 bilinear). The credit maps stay in score units (the paper normalises to [0, 1];
rankings are unchanged by it).

Default map: the paper's (``credit='cumulative'``, ``upsample='bilinear'``), kept after measuring. The rank map
constant on cells wins only for a near-greedy order; a mediocre order is better served by the credit rules, which
weigh each cell by the score change it was measured to cause. Chosen on training data: the shipped demo policy
(``weights/demo/rexl_classifier_deletion.pt``) on 8 training-split validation scenes (training scenes 896..903, not in
its RL pool) x 4 classes, median pixel deletion AUC (mean substrate, 20 steps): cumulative / bilinear 0.676, single
0.674, rank / bilinear 0.748, rank / nearest 0.774. ``benchmarks/bench_rexl.py`` reports all four on the held-out
scenes (``benchmarks/README.md``). A cell policy's order is near-greedy, and there the rank map constant on cells
wins: its default is rank / nearest (``DEFAULT_MAP``), chosen the same way (the cell policy trained by
``tasks.rexl_imitation`` with its defaults, training scenes 896..911 x 4 classes, never in its teacher's scenes
0..47: rank / nearest 0.242, rank / bilinear 0.343, cumulative / bilinear 0.438, single 0.734). A detector's cell
policy is read with the paper's map again (``DEFAULT_MAP``): chosen on the demo detector's person detections on
training scenes 896 onwards (30 pedestrians, never in its teacher's scenes; ``benchmarks/bench_rexl_detector.py
--split select``): median pixel deletion AUC cumulative / bilinear 0.027, rank / nearest 0.030 for the policy of
64 training scenes, 0.022 / 0.027 for the 7 x 7 policy of 192 (shipped until the 9 x 9 one).

Cost of :meth:`Rexl.explain` for T targets (one roll-out each, all in lockstep): n_forward = 2 + T (n - 1) model
forwards (image and baseline shared by all targets, then one canvas per target and step; the last step's canvas is
the end canvas), and feature forwards reported in ``options['n_feature_forward']`` and
:attr:`RexlExplanation.n_feature_forward`: 1 for the first canvas (the same for every target) + T (n - 2) (the last
action is forced) + 1 for the image in insertion mode. With k = 7 and T = 1: 50 + 48 = 98 forwards, against 4,000
for RISE. Where one pass of the classifier gives both its scores and the policy's features (:func:`fused_pass`: the
demo classifier with ``BackboneFeatures`` or ``CellFeatures``: the classifier's logits must be ``head`` of the mean
of its ``features``, checked once on random input, and the pass's scores of each explanation's first canvas must
be the scorer's, else separate passes from then on), a step's canvases are scored and featurised by that one pass:
the feature forwards drop to 1 (+ 1 in insertion mode), 2 + T (n - 1) + 1 in all (48.75 per target for the demo
classifier's 4 classes, k = 7).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from explainers.base import Explainer, Explanation, region_means
from explainers.perturb import Perturbation, make_perturbation
from explainers.regions import grid_labels
from explainers.rexl_detector import KIND as KIND_DETECTOR_CELLS
from explainers.rexl_detector import STATE_EXTRA as DETECTOR_STATE_EXTRA
from explainers.rexl_detector import DetectorCellFeatures, box_cell_state
from explainers.trained import LearnedExplainer, NetworkCheckpoint

FORMAT = "xai-audit/rexl-policy"
VERSION = 1
REQUIRED = ("model_sha256", "grid", "mode", "perturbation", "conditioning", "features", "feature_dim", "state_dict")
MODES = ("deletion", "insertion")
CONDITIONINGS = ("none", "class", "box")
CREDITS = ("cumulative", "single", "rank")
UPSAMPLING = ("bilinear", "nearest")
ARCHS = ("mlp", "cells")
# the map of a roll-out when the job names none: the paper's (MLP policies, a detector's cell policy), except the
# order itself, constant on cells, for a classifier's cell policy (each chosen on training-split data: module
# docstring); by (arch, conditioning)
PAPER_MAP = ("cumulative", "bilinear")
DEFAULT_MAP = {("cells", "class"): ("rank", "nearest")}
DEFAULT_GRID = 7


# ---------------------------------------------------------------------------------------------- features
class FixedCNN(nn.Module):
    """Features for models that are no PyTorch classifier (detectors, black boxes): the canvas resized (bilinear) to
    ``size`` x ``size``, three 3x3 stride-2 convolutions (3 -> w -> 2w -> 2w channels, ReLU) with weights drawn
    from N(0, 2 / fan_in) by a generator seeded with ``seed`` (no bias), average-pooled to ``pool`` x ``pool``:
    [B, 3, H, W] -> [B, 2 w pool^2]. Deterministic: the same seed gives the same weights on every machine (drawn
    on the CPU), computed in float64 so that a canvas's features do not depend on how many canvases share its batch
    (float32 convolutions differ in the last bits between batch sizes). Random convolutional features keep where
    things are and their colour / texture, which is what a cell-picking policy needs to see; they are not trained."""

    def __init__(self, seed: int = 0, width: int = 16, size: int = 64, pool: int = 4):
        super().__init__()
        self.spec = {"kind": "fixed", "seed": int(seed), "width": int(width), "size": int(size), "pool": int(pool)}
        g = torch.Generator().manual_seed(int(seed))
        chans = [3, width, 2 * width, 2 * width]
        self.convs = nn.ModuleList()
        for cin, cout in zip(chans[:-1], chans[1:]):
            conv = nn.Conv2d(cin, cout, 3, stride=2, padding=1, bias=False, dtype=torch.float64)
            with torch.no_grad():
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=torch.float64)
                                  * math.sqrt(2.0 / (cin * 9)))
            conv.weight.requires_grad_(False)
            self.convs.append(conv)
        self.size, self.pool = int(size), int(pool)
        self.dim = chans[-1] * pool * pool

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(images.double(), size=(self.size, self.size), mode="bilinear", align_corners=False)
        for conv in self.convs:
            x = F.relu(conv(x))
        return F.adaptive_avg_pool2d(x, self.pool).flatten(1).float()


def head_class_maps(head: nn.Module, fmap: torch.Tensor, grid: int) -> torch.Tensor:
    """Every class's activation map [B, classes, k, k] of a feature map [B, C', h, w] under a Linear ``head``: the
    head's class weights applied at each position (bias excluded; their mean over positions is the class logit less
    the bias), average-pooled to the k x k game grid (adaptive pooling: overlapping windows when h, w < k)."""
    maps = torch.einsum("kc,bchw->bkhw", head.weight.float(), fmap.float())
    return F.adaptive_avg_pool2d(maps, grid)


def class_probabilities(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Probabilities [B, C] of a classifier's logits, as ``detection.scorers.ClassifierScorer`` computes them:
    sigmoid for a multi-label classifier, else softmax."""
    return torch.sigmoid(logits) if multi_label else torch.softmax(logits, -1)


class BackboneFeatures(nn.Module):
    """The audited classifier's own frozen backbone: ``classifier.preprocess`` (its resize and normalisation), then
    its ``model.features`` module, average-pooled to ``pool`` x ``pool``: [B, 3, H, W] -> [B, C pool^2]. ``classifier``
    is the scorer's model (an ``ImageClassifier`` whose network has a ``features`` module, e.g. the demo SceneNet).
    Raises ValueError when it has none."""

    def __init__(self, classifier, pool: int = 4, cam: int = 0, classes: int | None = None):
        super().__init__()
        net = getattr(classifier, "model", None)
        features = getattr(net, "features", None) if net is not None else None
        if not isinstance(features, nn.Module) or not hasattr(classifier, "preprocess"):
            raise ValueError(f"rexl: features 'backbone' need a classifier whose network has a 'features' module and "
                             f"a preprocess method, got {type(classifier).__name__}")
        head = getattr(net, "head", None)
        if cam and not isinstance(getattr(head, "weight", None), torch.Tensor):
            raise ValueError("rexl: backbone features with cam > 0 need a network whose 'head' is a Linear layer (the "
                             f"class maps are its weights applied per position), got {type(net).__name__}")
        self.classifier, self.features, self.pool, self.cam = classifier, features, int(pool), int(cam)
        self.head = head if cam else None
        self.spec = {"kind": "backbone", "pool": int(pool),
                     "network": getattr(net, "original_name", type(net).__name__)}    # TorchScript: the class name
        if cam:
            self.spec.update(cam=int(cam), classes=int(head.weight.shape[0]))
            if classes is not None and int(classes) != self.spec["classes"]:
                raise ValueError(f"rexl: the policy's class maps are for {classes} classes, the network's head has "
                                 f"{self.spec['classes']}")
        self.dim: int | None = None

    def from_map(self, fmap: torch.Tensor) -> torch.Tensor:
        """Features [B, D] of the backbone's feature map [B, C', h, w]: its average pool to ``pool`` x ``pool``
        [B, C' pool^2], then (``cam`` = k > 0) every class's activation map [B, classes k^2]: the head's class
        weights applied at each position (bias excluded; their mean over positions is the class logit less the
        bias), average-pooled to the k x k game grid (:func:`head_class_maps`)."""
        fmap = fmap.float()
        out = F.adaptive_avg_pool2d(fmap, self.pool).flatten(1)
        if self.cam:
            out = torch.cat([out, head_class_maps(self.head, fmap, self.cam).flatten(1)], 1)
        self.dim = out.shape[1]
        return out

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.from_map(self.features(self.classifier.preprocess(images)))


class CellFeatures(nn.Module):
    """Per-cell features of the audited classifier's own network for a *cell policy* (:class:`CellPolicy`): the
    outputs of the ``features`` blocks listed in ``blocks`` (indices of its children, e.g. 2 and 3 of the demo
    SceneNet: 64 ch at 1/16 and 128 ch at 1/32 of the input) and every class's activation map of the last block (the
    head's class weights per position, as :class:`BackboneFeatures` with ``cam``), each average-pooled to the k x k
    game grid, then the class probabilities of the same pass (sigmoid for a multi-label classifier, else softmax):
    [B, 3, H, W] -> [B, F k^2 + C], F = sum of the blocks' channels + C (channel-major per cell). The earlier blocks
    are what locates evidence finer than the last map (4 x 5 on the demo classifier's 240 x 320 input, coarser than a
    7 x 7 grid). Raises ValueError for a classifier without ``features`` / a Linear ``head`` or a block index out of
    range. The network must compute its logits as ``head(global mean of features(x))`` (as the demo SceneNet does):
    the probabilities are computed that way here."""

    def __init__(self, classifier, blocks: tuple[int, ...] | list[int] = (2, 3), grid: int = DEFAULT_GRID,
                 classes: int | None = None):
        super().__init__()
        net = getattr(classifier, "model", None)
        features = getattr(net, "features", None) if net is not None else None
        head = getattr(net, "head", None)
        if not isinstance(features, nn.Module) or not isinstance(getattr(head, "weight", None), torch.Tensor) or \
                not hasattr(classifier, "preprocess"):
            raise ValueError(f"rexl: features 'cells' need a classifier whose network has a 'features' module and a "
                             f"Linear 'head', got {type(classifier).__name__}")
        self.blocks_list = [m for _, m in features.named_children()]
        bad = [b for b in blocks if not 0 <= int(b) < len(self.blocks_list) - 1]
        if bad or not blocks:
            raise ValueError(f"rexl: features 'cells' blocks must be indices in [0, {len(self.blocks_list) - 1}) of "
                             f"the network's {len(self.blocks_list)} feature blocks (the last gives the class maps), "
                             f"got {list(blocks)}")
        n_classes = int(head.weight.shape[0])
        if classes is not None and int(classes) != n_classes:
            raise ValueError(f"rexl: the policy's cell features are for {classes} classes, the network's head has "
                             f"{n_classes}")
        self.classifier, self.head, self.grid = classifier, head, int(grid)
        self.blocks = tuple(int(b) for b in blocks)
        self.multi_label = bool(getattr(classifier, "multi_label", False))
        self.spec = {"kind": "cells", "blocks": list(self.blocks), "grid": self.grid, "classes": n_classes,
                     "network": getattr(net, "original_name", type(net).__name__)}

    @torch.inference_mode()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.classifier.preprocess(images)
        kept = []
        for i, block in enumerate(self.blocks_list):
            x = block(x)
            if i in self.blocks:
                kept.append(F.adaptive_avg_pool2d(x.float(), self.grid))
        x = x.float()
        logits = self.head(x.mean((2, 3))).float()
        probs = class_probabilities(logits, self.multi_label)
        kept.append(head_class_maps(self.head, x, self.grid))
        return torch.cat([torch.cat(kept, 1).flatten(1), probs], 1)


def cell_state(features: torch.Tensor, taken: torch.Tensor, condition: torch.Tensor, classes: int,
               grid: int) -> torch.Tensor:
    """The state of a cell policy [N, S, k^2], S = F + C + 4 channels per cell, from :class:`CellFeatures`' output
    [N, F k^2 + C] of the current canvases, the taken cells [N, k^2] and the class one-hot [N, C]: the F feature
    channels (the last C of them the class maps), the target's class map, taken (0 / 1), the taken cells of the
    3 x 3 neighbourhood (the cell itself included, off-grid ones as not taken) / 9, the one-hot, and the target's
    current probability (the last two constant over the cells). Raw (the policy standardises it)."""
    N, n = taken.shape
    feats = features.float()
    channels = (feats.shape[1] - classes) // n
    cells = feats[:, :channels * n].view(N, channels, n)
    probs = feats[:, channels * n:]
    onehot = condition.float().to(feats.device)
    target_map = (onehot[:, :, None] * cells[:, channels - classes:]).sum(1, keepdim=True)
    t = taken.float()[:, None]
    near = F.conv2d(t.view(N, 1, grid, grid), torch.ones(1, 1, 3, 3, device=t.device), padding=1).view(N, 1, n) / 9
    score = (onehot * probs).sum(1)[:, None, None].expand(N, 1, n)
    return torch.cat([cells, target_map, t, near, onehot[:, :, None].expand(N, classes, n), score], 1)


def class_maps(spec: dict) -> int:
    """How many class activation maps end a feature vector of this feature spec (0: none; see
    :meth:`BackboneFeatures.from_map`)."""
    return int(spec.get("classes") or 0) if spec.get("kind") == "backbone" and spec.get("cam") else 0


def has_backbone(scorer) -> bool:
    """Whether the scorer's model offers a backbone for :class:`BackboneFeatures`."""
    model = getattr(scorer, "model", None)
    return isinstance(getattr(getattr(model, "model", None), "features", None), nn.Module) and \
        hasattr(model, "preprocess")


def make_features(scorer, spec: dict | str = "auto") -> nn.Module:
    """The feature extractor a policy spec names: ``{'kind': 'backbone', 'pool': p}`` (the scorer's classifier),
    ``{'kind': 'fixed', ...}`` (:class:`FixedCNN` with those settings), ``{'kind': 'cells', 'blocks': [...], ...}``
    (:class:`CellFeatures`, for a classifier's cell policy), ``{'kind': 'detector_cells', 'layers': [...], ...}``
    (``explainers.rexl_detector.DetectorCellFeatures``, for a detector's cell policy: the scorer is its
    ``DRiseScorer``), or 'auto' / 'backbone' / 'fixed' (defaults;
    auto: backbone where the scorer has one). Raises ValueError for an unknown kind or a backbone the scorer lacks."""
    if isinstance(spec, str):
        if spec not in ("auto", "backbone", "fixed"):
            raise ValueError(f"rexl: features must be 'auto', 'backbone' or 'fixed', got {spec!r}")
        kind = ("backbone" if has_backbone(scorer) else "fixed") if spec == "auto" else spec
        spec = {"kind": kind}
    options = {k: v for k, v in spec.items() if k not in ("kind", "network")}
    if spec.get("kind") == "backbone":
        return BackboneFeatures(getattr(scorer, "model", None), **options)
    if spec.get("kind") == "fixed":
        return FixedCNN(**options).to(torch.device(getattr(scorer, "device", "cpu")))
    if spec.get("kind") == KIND_DETECTOR_CELLS:
        return DetectorCellFeatures(scorer, **{k: v for k, v in options.items() if k != "channels"})
    if spec.get("kind") == "cells":
        if getattr(scorer, "model", None) is None:
            raise ValueError(f"rexl: features 'cells' need a classifier scorer (its .model), got "
                             f"{type(scorer).__name__}")
        return CellFeatures(scorer.model, **options)
    raise ValueError(f"rexl: unknown feature extractor {spec!r}; expected kind 'backbone', 'fixed', 'cells' or "
                     f"{KIND_DETECTOR_CELLS!r}")


# ---------------------------------------------------------------------------------------------- state
def computes_head_of_mean(classifier, size: tuple[int, int] = (64, 64), seed: int = 0) -> bool:
    """Whether ``classifier.logits`` (an ``ImageClassifier``) equals its network's ``head(global mean of
    features(preprocess(x)))`` within 1e-4 on a seeded random batch [2, 3, H, W] (H, W: its ``input_size``, else
    ``size``): the condition under which one pass gives both its scores and features (:func:`fused_pass`). Two
    forwards of setup, outside any explanation's count; False for a classifier without ``features`` / ``head``."""
    net = getattr(classifier, "model", None)
    features, head = getattr(net, "features", None), getattr(net, "head", None)
    if not isinstance(features, nn.Module) or not isinstance(head, nn.Module) or \
            not hasattr(classifier, "preprocess") or not hasattr(classifier, "logits"):
        return False
    H, W = tuple(getattr(classifier, "input_size", None) or size)
    x = torch.rand(2, 3, H, W, generator=torch.Generator().manual_seed(seed))
    x = x.to(getattr(classifier, "device", "cpu"))
    with torch.inference_mode():
        own = classifier.logits(x).float()
        mean = head(features(classifier.preprocess(x)).float().mean((2, 3))).float()
    return own.shape == mean.shape and bool(torch.allclose(own, mean, atol=1e-4, rtol=1e-4))


def fused_pass(scorer, features):
    """One network pass giving both scores [N, T] and features [N, D] of canvases (a function of the canvases and a
    target column per row, which only a detector's features read), for a ``ClassifierScorer`` whose
    network is ``features`` -> global mean -> ``head`` (the demo SceneNet) with :class:`BackboneFeatures` of that same
    network, or with :class:`CellFeatures` of its classifier (whose output ends with the class probabilities), or
    for a detector's ``DRiseScorer`` with its ``DetectorCellFeatures`` (whose pass is the scorer's own):
    training then runs the backbone once per canvas instead of twice. None for any other scorer / features, and
    None when the classifier's own logits of a seeded random batch differ from ``head(mean(features))`` by more
    than 1e-4 (:func:`computes_head_of_mean`: another pooling, a temperature, float16 autocast). Its users
    (``Rexl``, ``tasks.rexl_env.EpisodeBatch``) also check its scores against the scorer's on the first canvases
    (``Rexl``: of every explanation) and fall back to separate passes when they differ."""
    if isinstance(features, DetectorCellFeatures):
        return features.run if features.scorer is scorer else None
    clf = getattr(scorer, "model", None)
    net = getattr(clf, "model", None)
    if getattr(scorer, "targets", None) is None or not computes_head_of_mean(clf):
        return None
    if isinstance(features, CellFeatures):
        if features.classifier is not clf:
            return None
        classes = int(features.spec["classes"])

        def run_cells(images: torch.Tensor, targets=None) -> tuple[torch.Tensor, torch.Tensor]:
            feats = features(images)                   # CellFeatures end with the class probabilities of the pass
            return feats[:, -classes:][:, scorer.targets], feats
        return run_cells
    if not isinstance(features, BackboneFeatures) or features.features is not getattr(net, "features", None):
        return None

    def run(images: torch.Tensor, targets=None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            fmap = net.features(clf.preprocess(images)).float()
            logits = net.head(fmap.mean((2, 3))).float()
            probs = class_probabilities(logits, clf.multi_label)
            return probs[:, scorer.targets], features.from_map(fmap)
    return run


def cell_labels(height: int, width: int, grid: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Cell index [H, W] (long, row-major, 0..k^2-1) of every pixel: ``explainers.regions.grid_regions``'s cells
    (:func:`~explainers.regions.grid_labels`)."""
    return grid_labels(height, width, grid, grid, device)


def box_condition(boxes: torch.Tensor, height: int, width: int, grid: int) -> torch.Tensor:
    """The ``box`` conditioning of xyxy boxes [N, 4] (pixels) on an H x W image: each cell's share covered by the box
    [N, k^2] (from the box's pixel mask), then the box / (W, H, W, H) [N, 4] -> [N, k^2 + 4]."""
    from explainers.metrics import box_masks
    boxes = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4).cpu()
    masks = box_masks(boxes, height, width).float().flatten(1)                        # [N, H W]
    labels = grid_labels(height, width, grid, grid).flatten()                          # [H W]: each pixel's cell
    inside = masks.new_zeros(masks.shape[0], grid * grid).index_add_(1, labels, masks)  # pixel counts: exact
    cover = inside / torch.bincount(labels, minlength=grid * grid).clamp_min(1)
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    return torch.cat([cover, boxes / scale], 1)


def condition_dim(conditioning: str, grid: int, num_classes: int | None) -> int:
    """Length of the conditioning vector. Raises ValueError for an unknown conditioning or ``class`` without
    ``num_classes``."""
    if conditioning == "none":
        return 0
    if conditioning == "class":
        if not num_classes:
            raise ValueError("rexl: conditioning 'class' needs num_classes >= 1")
        return int(num_classes)
    if conditioning == "box":
        return grid * grid + 4
    raise ValueError(f"rexl: conditioning must be one of {CONDITIONINGS}, got {conditioning!r}")


def observation(canvas_features: torch.Tensor, image_features: torch.Tensor | None, taken: torch.Tensor,
                condition: torch.Tensor, norm: tuple[torch.Tensor, torch.Tensor] | None,
                maps: int = 0) -> torch.Tensor:
    """The state [N, obs_dim] = [standardised canvas features [N, D], (insertion: standardised image features
    [N, D]), taken cells [N, k^2] as 0 / 1, conditioning [N, c], (``maps`` = C > 0: the target's class map [N, k^2])];
    ``norm`` = (mean [D], std [D]) of the features (None: raw). With ``maps`` the canvas features end with C class
    maps of k^2 cells (:meth:`BackboneFeatures.from_map`) and the conditioning is the class one-hot [N, C]: the
    target's map (raw, the one-hot's class) is appended standardised over its own cells (zero mean, unit std per
    row), so that the policy sees where the target's evidence lies on the grid without learning a class gate."""
    def standard(f: torch.Tensor) -> torch.Tensor:
        return f if norm is None else (f - norm[0]) / norm[1]
    parts = [standard(canvas_features.float())]
    if image_features is not None:
        parts.append(standard(image_features.float()))
    condition = condition.float().to(taken.device)
    parts += [taken.float(), condition]
    if maps:
        n = taken.shape[1]
        raw = canvas_features.float()[:, -maps * n:].reshape(-1, maps, n)
        target = (condition[:, :maps, None] * raw).sum(1)
        parts.append((target - target.mean(1, keepdim=True)) / (target.std(1, keepdim=True) + 1e-6))
    return torch.cat(parts, 1)


class CellGame:
    """N episodes of the cell game in lockstep (module docstring): images [N, 3, H, W] (one size), their baselines
    [N, 3, H, W] (the substrate), ``mode`` 'deletion' or 'insertion', ``grid`` k. ``taken`` [N, k^2] bool: the cells
    deleted / inserted so far; :meth:`canvas` the current canvases. Pure tensor bookkeeping: scoring and features are
    the caller's (so that the explainer can count forwards and the environment batch them)."""

    def __init__(self, images: torch.Tensor, baselines: torch.Tensor, mode: str, grid: int):
        if mode not in MODES:
            raise ValueError(f"rexl: mode must be one of {MODES}, got {mode!r}")
        if images.ndim != 4 or images.shape != baselines.shape:
            raise ValueError(f"rexl: images and baselines must both be [N, 3, H, W], got {tuple(images.shape)} and "
                             f"{tuple(baselines.shape)}")
        self.images, self.baselines, self.mode, self.grid = images, baselines, mode, int(grid)
        self.cells = self.grid * self.grid
        self.labels = cell_labels(images.shape[-2], images.shape[-1], self.grid, images.device).view(-1)
        self.taken = torch.zeros(images.shape[0], self.cells, dtype=torch.bool, device=images.device)
        self.steps = 0

    def canvas(self, taken: torch.Tensor | None = None) -> torch.Tensor:
        """Canvases [N, 3, H, W] for ``taken`` [N, k^2] (default: the current state): deletion shows the baseline on
        taken cells, insertion shows the image on taken cells (exact copies of either, no blending)."""
        taken = self.taken if taken is None else taken
        N, _, H, W = self.images.shape
        on = taken[:, self.labels].view(N, 1, H, W)
        first, second = (self.baselines, self.images) if self.mode == "deletion" else (self.images, self.baselines)
        return torch.where(on, first, second)

    def start(self) -> torch.Tensor:
        """The start canvases (nothing taken)."""
        return self.images if self.mode == "deletion" else self.baselines

    def end(self) -> torch.Tensor:
        """The end canvases (every cell taken)."""
        return self.baselines if self.mode == "deletion" else self.images

    def take(self, actions: torch.Tensor) -> None:
        """Take cell ``actions[i]`` [N] in episode i. Raises ValueError for a cell out of range or already taken."""
        actions = torch.as_tensor(actions, dtype=torch.long, device=self.taken.device).view(-1)
        if actions.shape[0] != self.taken.shape[0] or bool(((actions < 0) | (actions >= self.cells)).any()):
            raise ValueError(f"rexl: actions must be {self.taken.shape[0]} cells in [0, {self.cells}), "
                             f"got {actions.tolist()}")
        rows = torch.arange(len(actions), device=actions.device)
        if bool(self.taken[rows, actions].any()):
            raise ValueError(f"rexl: cells already taken: {actions[self.taken[rows, actions]].tolist()}")
        self.taken[rows, actions] = True
        self.steps += 1

    @property
    def sign(self) -> float:
        return -1.0 if self.mode == "deletion" else 1.0

    def reward(self, before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
        """The step's reward [N]: sign * (s_{t-1} + s_t) / (2 k^2) (module docstring: the return is sign * AUC)."""
        return self.sign * (before + after) / (2 * self.cells)


# ---------------------------------------------------------------------------------------------- policy
class RexlPolicy(nn.Module):
    """The policy network: an MLP obs [N, obs_dim] -> action logits [N, k^2] (``hidden`` layers with ``activation``
    'tanh' or 'relu'), the architecture of stable-baselines3's ``MlpPolicy`` actor (mlp_extractor.policy_net +
    action_net), into which ``tasks.rexl_train`` copies the trained weights. ``feature_mean`` / ``feature_std`` [D]
    buffers: the fixed standardisation of the features (:func:`observation`)."""

    def __init__(self, obs_dim: int, actions: int, hidden: tuple[int, ...] = (256, 128), activation: str = "tanh",
                 feature_dim: int = 0):
        super().__init__()
        acts = {"tanh": nn.Tanh, "relu": nn.ReLU}
        if activation not in acts:
            raise ValueError(f"rexl: activation must be one of {sorted(acts)}, got {activation!r}")
        layers: list[nn.Module] = []
        width = obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), acts[activation]()]
            width = h
        layers.append(nn.Linear(width, actions))
        self.net = nn.Sequential(*layers)
        self.register_buffer("feature_mean", torch.zeros(feature_dim))
        self.register_buffer("feature_std", torch.ones(feature_dim))
        self.obs_dim, self.actions, self.hidden, self.activation = obs_dim, actions, tuple(hidden), activation

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs)

    def state(self, canvas_features: torch.Tensor, image_features: torch.Tensor | None, taken: torch.Tensor,
              condition: torch.Tensor, maps: int = 0) -> torch.Tensor:
        """The observation [N, obs_dim] this policy reads (:func:`observation` with its feature standardisation)."""
        return observation(canvas_features, image_features, taken, condition, (self.feature_mean, self.feature_std),
                           maps)

    def act(self, obs: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
        """Deterministic actions [N]: the highest logit among the cells not taken (ties: the lowest cell index)."""
        logits = self.net(obs).masked_fill(taken, -torch.inf)
        return logits.argmax(1)


class CellPolicy(nn.Module):
    """A *cell policy*: one network shared by every cell scores that cell from its own state (:func:`cell_state`,
    S channels per cell, standardised by the fixed per-channel ``state_mean`` / ``state_std`` [S] buffers) and its
    3 x 3 neighbourhood (a detector's, ``boxes``: ``explainers.rexl_detector.box_cell_state``, box conditioning):
    1 x 1 conv S -> ``width``, ReLU, 3 x 3 conv, ReLU, 1 x 1 conv -> one logit per cell:
    obs [N, S k^2] (channel-major) -> logits [N, k^2]. Weight sharing makes "this cell looks like evidence" one rule
    for all cells instead of one per cell (the MLP's), which a few thousand training states can fit. Trained by
    ``tasks.rexl_imitation`` (a one-step look-ahead teacher, DAgger) or ``tasks.rexl_cells_ppo`` (MaskablePPO)."""

    def __init__(self, channels: int, grid: int, width: int = 64, classes: int = 0, boxes: bool = False):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, width, 1), nn.ReLU(), nn.Conv2d(width, width, 3, padding=1),
                                 nn.ReLU(), nn.Conv2d(width, 1, 1))
        self.register_buffer("state_mean", torch.zeros(channels))
        self.register_buffer("state_std", torch.ones(channels))
        self.channels, self.grid, self.width, self.classes = int(channels), int(grid), int(width), int(classes)
        self.boxes = bool(boxes)

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        N, k = obs.shape[0], self.grid
        s = obs.view(N, self.channels, k, k)
        s = (s - self.state_mean.view(1, -1, 1, 1)) / self.state_std.view(1, -1, 1, 1)
        return self.net(s).view(N, k * k)

    def state(self, canvas_features: torch.Tensor, image_features: torch.Tensor | None, taken: torch.Tensor,
              condition: torch.Tensor, maps: int = 0) -> torch.Tensor:
        """The observation [N, S k^2]: :func:`cell_state` (a detector's policy, ``boxes``:
        ``explainers.rexl_detector.box_cell_state``, with ``image_features`` in insertion mode) flattened
        (``maps`` unused; a classifier's cell policy is deletion-only and ignores ``image_features``)."""
        if self.boxes:
            return box_cell_state(canvas_features, taken, condition, self.grid, image_features).flatten(1)
        return cell_state(canvas_features, taken, condition, self.classes, self.grid).flatten(1)

    def act(self, obs: torch.Tensor, taken: torch.Tensor) -> torch.Tensor:
        """Deterministic actions [N]: the highest logit among the cells not taken (ties: the lowest cell index)."""
        return self.forward(obs).masked_fill(taken, -torch.inf).argmax(1)


@dataclass
class PolicyCheckpoint(NetworkCheckpoint):
    """What a policy file holds (:class:`~explainers.trained.NetworkCheckpoint`: ``torch.save`` of its fields,
    loaded with ``weights_only=True``, refused naming the file when the weights do not fit the policy network or the
    settings disagree): the policy weights and what they were trained for: the audited model's weights fingerprint
    (:func:`weights_fingerprint`), the grid, the mode, the perturbation (name and description), the conditioning (and
    class count), the feature extractor's spec and dimension, the network's arch and shape and a free ``training``
    record (regime, steps, seed, images)."""

    model_sha256: str
    grid: int
    mode: str
    perturbation: str
    conditioning: str
    features: dict
    feature_dim: int
    state_dict: dict
    num_classes: int | None = None
    hidden: tuple[int, ...] = (256, 128)
    activation: str = "tanh"
    perturbation_describe: str = ""
    training: dict = field(default_factory=dict)
    arch: str = "mlp"              # 'mlp' (RexlPolicy, stable-baselines3's actor) | 'cells' (CellPolicy)
    width: int = 64                # CellPolicy's width
    _networks: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    FORMAT, VERSION, REQUIRED, TUPLES = FORMAT, VERSION, REQUIRED, ("hidden",)
    WHAT, HOW_TO_TRAIN = "rexl policy", "train one with tasks.rexl_train, tasks.rexl_cells_ppo or tasks.rexl_imitation"

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"rexl: policy arch must be one of {ARCHS}, got {self.arch!r}")
        if self.mode not in MODES:
            raise ValueError(f"rexl: policy mode must be one of {MODES}, got {self.mode!r}")
        kind = self.features.get("kind")
        if self.arch == "cells" and ((kind, self.conditioning) not in (("cells", "class"), (KIND_DETECTOR_CELLS, "box"))
                                     or (self.mode != "deletion" and kind != KIND_DETECTOR_CELLS)):
            raise ValueError("rexl: a cell policy needs features of kind 'cells' with class conditioning (deletion "
                             f"mode) or {KIND_DETECTOR_CELLS!r} with box conditioning (deletion or insertion), got "
                             f"{kind!r}, {self.conditioning!r}, {self.mode!r}")
        if kind == KIND_DETECTOR_CELLS and self.arch != "cells":
            raise ValueError(f"rexl: features {KIND_DETECTOR_CELLS!r} are a cell policy's (arch 'cells'), got arch "
                             f"{self.arch!r}")
        if self.arch == "cells" and kind == KIND_DETECTOR_CELLS:
            n = self.grid ** 2
            if self.features.get("grid") != self.grid or \
                    self.feature_dim != int(self.features.get("channels", -1)) * n + n + 1:
                raise ValueError(f"rexl: a detector cell policy's grid ({self.grid}), its features' grid / channels "
                                 f"({self.features.get('grid')!r} / {self.features.get('channels')!r}) and "
                                 f"feature_dim ({self.feature_dim} = channels k^2 + k^2 + 1) disagree")
        elif self.arch == "cells":
            n, C = self.grid ** 2, self.num_classes
            if not isinstance(C, int) or C < 1 or self.features.get("classes") != C or \
                    self.features.get("grid") != self.grid or (self.feature_dim - C) % n:
                raise ValueError(f"rexl: a cell policy's num_classes ({C!r}), its features' classes / grid "
                                 f"({self.features.get('classes')!r} / {self.features.get('grid')!r}), the grid "
                                 f"({self.grid}) and feature_dim ({self.feature_dim} = F k^2 + classes) disagree")

    @classmethod
    def for_cell_policy(cls, policy: CellPolicy, features: CellFeatures | DetectorCellFeatures, *, model_sha256: str,
                        perturbation: str, training: dict, mode: str = "deletion") -> PolicyCheckpoint:
        """The checkpoint of a trained :class:`CellPolicy` on ``features`` (class conditioning, deletion; or box
        conditioning for a detector's ``DetectorCellFeatures``, deletion or insertion ``mode``; its weights copied to
        the CPU), whoever trained it (``tasks.rexl_imitation``, ``tasks.rexl_cells_ppo``)."""
        boxes = isinstance(features, DetectorCellFeatures)
        classes, n = (None if boxes else int(features.spec["classes"])), policy.grid ** 2
        return cls(model_sha256=model_sha256, grid=policy.grid, mode=mode, perturbation=perturbation,
                   perturbation_describe=make_perturbation(perturbation).describe(),
                   conditioning="box" if boxes else "class", num_classes=classes, features=dict(features.spec),
                   feature_dim=features.dim if boxes else (policy.channels - classes - 4) * n + classes,
                   state_dict={k: v.detach().cpu().clone() for k, v in policy.state_dict().items()}, hidden=(),
                   activation="relu", arch="cells", width=policy.width, training=dict(training))

    @property
    def cell_channels(self) -> int:
        """S of :func:`cell_state` (cell policies; a detector's: of ``box_cell_state``)."""
        n = self.grid ** 2
        if self.features.get("kind") == KIND_DETECTOR_CELLS:      # insertion: + the image's F + 1 channels
            pooled = (self.feature_dim - 1) // n - 1
            return pooled + DETECTOR_STATE_EXTRA + (pooled + 1 if self.mode == "insertion" else 0)
        return (self.feature_dim - int(self.num_classes)) // n + int(self.num_classes) + 4

    @property
    def obs_dim(self) -> int:
        if self.arch == "cells":
            return self.cell_channels * self.grid ** 2
        n_feat = self.feature_dim * (2 if self.mode == "insertion" else 1)
        extra = self.grid ** 2 if class_maps(self.features) else 0
        return n_feat + self.grid ** 2 + condition_dim(self.conditioning, self.grid, self.num_classes) + extra

    def policy(self, device: torch.device | str = "cpu") -> RexlPolicy | CellPolicy:
        """The policy module with the stored weights, in eval mode (:class:`RexlPolicy` or, arch 'cells',
        :class:`CellPolicy`)."""
        if self.arch == "cells":
            boxes = self.features.get("kind") == KIND_DETECTOR_CELLS
            net = CellPolicy(self.cell_channels, self.grid, self.width, 0 if boxes else int(self.num_classes), boxes)
        else:
            net = RexlPolicy(self.obs_dim, self.grid ** 2, self.hidden, self.activation, self.feature_dim)
        net.load_state_dict(self.state_dict)
        return net.to(device).eval()

    network = policy                  # NetworkCheckpoint's name for it (load checks the weights fit; shared_network)


# ---------------------------------------------------------------------------------------------- explainer
@dataclass
class RexlExplanation(Explanation):
    """An :class:`~explainers.base.Explanation` with the roll-out: ``order`` [T, k^2] (the cells in the order taken),
    ``curve`` [T, k^2 + 1] (the target's score s_0..s_n along it) and the feature forwards spent."""

    order: torch.Tensor | None = None
    curve: torch.Tensor | None = None
    n_feature_forward: int = 0


def cell_saliency(order: torch.Tensor, curve: torch.Tensor, sign: float, credit: str = "cumulative") -> torch.Tensor:
    """Per-cell saliency [T, n] of roll-outs: ``order`` [T, n] cells, ``curve`` [T, n + 1] scores s_0..s_n, reward
    r_t = sign * s_t. ``cumulative``: cell order[i] (taken at step i + 1) gets sum_{t > i} (r_t - r_{t-1}) =
    sign * (s_n - s_i); ``single``: it gets r_{i+1} - r_i; ``rank``: (n - i) / n. Raises ValueError for an unknown
    credit."""
    if credit not in CREDITS:
        raise ValueError(f"rexl: credit must be one of {CREDITS}, got {credit!r}")
    r = sign * curve.float()
    delta = r[:, 1:] - r[:, :-1]                                                   # [T, n]: step t = i + 1
    if credit == "rank":
        n = delta.shape[1]
        values = (torch.arange(n, 0, -1, dtype=torch.float32, device=delta.device) / n).expand_as(delta)
    else:
        values = delta.flip(1).cumsum(1).flip(1) if credit == "cumulative" else delta
    return torch.zeros_like(values).scatter_(1, order.long(), values)


def upsample_cells(cells: torch.Tensor, grid: int, size: tuple[int, int], how: str = "bilinear") -> torch.Tensor:
    """Cell values [T, k^2] -> maps [T, H, W]: bilinear (align_corners False) or constant on each game cell
    (``nearest``: :func:`cell_labels`' cells exactly)."""
    if how == "nearest":
        return cells[:, cell_labels(*size, grid, cells.device)]
    return F.interpolate(cells.view(-1, 1, grid, grid), size=size, mode="bilinear", align_corners=False)[:, 0]


class Rexl(LearnedExplainer, Explainer):
    """RExL (module docstring): a trained policy's deterministic roll-out over a k x k grid, one per target, all
    targets in lockstep; saliency by cumulative credit (``credit='cumulative'``, the paper's rule), single-cell
    credit (``'single'``, the reference library class) or the order itself (``'rank'``), upsampled bilinearly (the
    paper's) or kept constant on each cell (``upsample='nearest'``; module docstring). Defaults (None): the paper's
    map for an MLP policy and a detector's cell policy, rank / nearest for a classifier's cell policy
    (``DEFAULT_MAP``).

    ``policy``: a policy file (:class:`PolicyCheckpoint`, written by ``tasks.rexl_train`` or, cell policies,
    ``tasks.rexl_cells_ppo`` / ``tasks.rexl_imitation``) or a loaded checkpoint. The
    guard: the audited model's :func:`weights_fingerprint` must equal the one the policy was trained for, else
    ValueError naming both (``check_weights=False`` skips it: only for the model-randomisation sanity check, which
    feeds the policy of the trained model a randomised copy on purpose; recorded in the options). The perturbation
    defaults to the policy's substrate; another one is a ValueError (the
    policy learned on that substrate). Conditioning: ``class`` reads the scorer's ``targets`` (class indices, e.g.
    ``ClassifierScorer``), ``box`` its ``target_boxes`` (``DRiseScorer``): ValueError when the scorer has none.

    Returns saliency [T, H, W] in score units, relevance [T, R] = mean saliency per region when regions are given
    (they only summarise the map: ``accepts_regions`` False; per-target regions [T, R, H, W], each pedestrian's own
    parts: target t's map over its own), full_score / empty_score [T], the roll-outs in :class:`RexlExplanation` and
    ``options['n_feature_forward']``. Spends exactly 2 + T (k^2 - 1) model forwards (the minimum budget; BudgetError
    below it; per-target regions: k^2 + 1 a target) and the feature forwards of the module docstring (one pass gives
    both where :func:`fused_pass` applies). The T roll-outs advance together, one batched model call a step (each
    the roll-out of a one-target call up to float rounding of the batch, which could flip a tie between cells)."""

    name = "rexl"
    per_target_regions = True          # regions only summarise each target's map: any regions per target will do
    trained_file_option = "policy"
    trained_file_hint = "models/rexl/<model>_<mode>.pt of the models_rexl stage, or python -m tasks.rexl_train"
    CHECKPOINT = PolicyCheckpoint
    trained_what = "policy"

    def __init__(self, scorer, *, policy: str | Path | PolicyCheckpoint, credit: str | None = None,
                 upsample: str | None = None, perturbation: str | Perturbation | None = None,
                 check_weights: bool = True, **kw):
        ckpt, self.source, where = self.trained_file(policy)
        self.refuse_other_perturbation(make_perturbation(ckpt.perturbation).describe(), perturbation, where)
        super().__init__(scorer, perturbation=ckpt.perturbation, **kw)
        default = DEFAULT_MAP.get((ckpt.arch, ckpt.conditioning), PAPER_MAP)
        credit, upsample = (credit or default[0]), (upsample or default[1])
        if credit not in CREDITS:
            raise ValueError(f"rexl: credit must be one of {CREDITS}, got {credit!r}")
        if upsample not in UPSAMPLING:
            raise ValueError(f"rexl: upsample must be one of {UPSAMPLING}, got {upsample!r}")
        self.upsample = upsample
        self.check_weights = bool(check_weights)
        if self.check_weights:
            self.refuse_other_model(scorer, ckpt.model_sha256, where)
        self.ckpt, self.credit = ckpt, credit
        self.policy_net = ckpt.shared_network(self.device)
        self.features = make_features(scorer, ckpt.features)
        if isinstance(self.features, DetectorCellFeatures) and self.features.channels != ckpt.features.get("channels"):
            raise ValueError(f"rexl: {self.source or 'the policy'} reads {ckpt.features.get('channels')} channels of "
                             f"the detection head's maps {ckpt.features.get('layers')}; this detector's have "
                             f"{self.features.channels}")
        self.n_feature_forward = 0
        self._fused = fused_pass(scorer, self.features)
        self.fused: bool | None = None if self._fused is not None else False     # None: not checked yet

    def options(self) -> dict[str, Any]:
        c = self.ckpt
        return {**super().options(), "grid": c.grid, "mode": c.mode, "credit": self.credit,
                "upsample": self.upsample, "check_weights": self.check_weights,
                "conditioning": c.conditioning, "features": c.features.get("kind"),
                "policy": self.source, "policy_sha256": c.digest(), "model_sha256": c.model_sha256[:12],
                "regime": c.training.get("regime")}

    def min_budget(self, num_regions, num_targets):
        n = self.ckpt.grid ** 2
        return 2 + (num_targets or 1) * (n - 1), f"a roll-out of {n} cells per target, image and baseline shared"

    def explain(self, image, regions=None, *, budget=None, seed=0) -> RexlExplanation:
        """:meth:`Explainer.explain <explainers.base.Explainer.explain>`, with the roll-outs and the feature forwards
        (``options['n_feature_forward']``)."""
        self._order = self._curve = None
        self.n_feature_forward = 0
        exp = super().explain(image, regions, budget=budget, seed=seed)
        exp.options["n_feature_forward"] = self.n_feature_forward
        return RexlExplanation(**{f: getattr(exp, f) for f in Explanation.__dataclass_fields__},
                               order=self._order, curve=self._curve, n_feature_forward=self.n_feature_forward)

    def _feature(self, canvases: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Features [M, D] of canvases [B, 3, H, W] whose row i is for target ``targets[i]`` [M] (B = M, or B = 1 for
        M targets: a detector's features are per target, a classifier's the canvas's [1, D])."""
        self.n_feature_forward += canvases.shape[0]
        if isinstance(self.features, DetectorCellFeatures):
            if canvases.shape[0] == 1:
                return self.features.run(canvases, targets)[1]
            return torch.cat([self.features.run(canvases[s:s + self.chunk_size], targets[s:s + self.chunk_size])[1]
                              for s in range(0, canvases.shape[0], self.chunk_size)])
        return torch.cat([self.features(canvases[s:s + self.chunk_size])
                          for s in range(0, canvases.shape[0], self.chunk_size)])

    def _score_chunks(self, canvases: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.score(canvases[s:s + self.chunk_size])
                          for s in range(0, canvases.shape[0], self.chunk_size)])

    def _fused_chunks(self, canvases: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores [B, T] and features [B, D] of canvases (row i for target ``targets[i]``) from one model pass each
        (:func:`fused_pass`): counted as model forwards."""
        self._forwards += canvases.shape[0]
        both = [self._fused(canvases[s:s + self.chunk_size], targets[s:s + self.chunk_size])
                for s in range(0, canvases.shape[0], self.chunk_size)]
        return torch.cat([b[0] for b in both]).float(), torch.cat([b[1] for b in both])

    def _first_features(self, canvas: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """Features [1 or T, D] of the roll-outs' common first canvas [1, 3, H, W] (a feature forward; a detector's
        for each of the T targets). With a fused pass, it is this pass, and a check of it on every explanation: its
        scores must equal the scorer's ``scores`` [T] of that canvas (1e-4; under float16 autocast the scorer's
        ``amp_tolerance``), else this and every later roll-out score and featurise canvases in separate passes
        (``fused`` False)."""
        targets = torch.arange(scores.shape[0], device=canvas.device)
        if self.fused is False:
            return self._feature(canvas, targets)
        self.n_feature_forward += 1
        fused_scores, feats = self._fused(canvas, targets)
        model = getattr(self.scorer, "model", None)          # float16 autocast: batches of 1 and 2 may round apart
        tol = max(1e-4, float(getattr(self.scorer, "amp_tolerance", 0.0))) if getattr(model, "amp", False) else 1e-4
        self.fused = bool(torch.allclose(fused_scores[0].float(), scores.float(), atol=tol, rtol=1e-4))
        return feats

    def condition(self, T: int, size: tuple[int, int]) -> torch.Tensor:
        """The conditioning [T, c] of the scorer's targets (see the class docstring)."""
        c = self.ckpt
        if c.conditioning == "none":
            return torch.zeros(T, 0, device=self.device)
        if c.conditioning == "class":
            targets = getattr(self.scorer, "targets", None)
            if targets is None:
                raise ValueError(f"rexl: the policy is class-conditioned; scorer {type(self.scorer).__name__} has no "
                                 "targets (class indices)")
            targets = torch.as_tensor(targets).long().view(-1).cpu()
            if int(targets.max()) >= c.num_classes:
                raise ValueError(f"rexl: target class {int(targets.max())} >= the policy's {c.num_classes} classes")
            return F.one_hot(targets, c.num_classes).float().to(self.device)
        boxes = getattr(self.scorer, "target_boxes", None)
        if boxes is None:
            raise ValueError(f"rexl: the policy is box-conditioned; scorer {type(self.scorer).__name__} has no "
                             "target_boxes")
        return box_condition(boxes, *size, c.grid).to(self.device)

    def _explain(self, image, regions, budget, generator):
        c = self.ckpt
        H, W = image.shape[-2:]
        baseline = self.perturbation.baseline(image)
        ends = self.score(torch.stack([image, baseline]))                             # [2, T]
        T = ends.shape[1]
        full, empty = ends[0], ends[1]
        game = CellGame(image.expand(T, -1, -1, -1), baseline.expand(T, -1, -1, -1), c.mode, c.grid)
        cond = self.condition(T, (H, W))
        n = game.cells
        rows = torch.arange(T, device=self.device)
        image_feats = None
        if c.mode == "insertion":                # the image's features: a detector's per target, a classifier's one row
            per_target = isinstance(self.features, DetectorCellFeatures)
            image_feats = self._feature(image[None], rows if per_target else torch.zeros(1, dtype=torch.long))
            image_feats = image_feats if per_target else image_feats.expand(T, -1)
        curve = torch.empty(T, n + 1, device=self.device)
        curve[:, 0], curve[:, n] = (full, empty) if c.mode == "deletion" else (empty, full)
        order = torch.empty(T, n, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            feats = self._first_features(game.canvas()[:1], curve[:, 0]).expand(T, -1)   # one canvas for every target
            for t in range(n - 1):
                obs = self.policy_net.state(feats, image_feats, game.taken, cond, class_maps(c.features))
                actions = self.policy_net.act(obs, game.taken)
                game.take(actions)
                order[:, t] = actions
                canvases = game.canvas()
                if self.fused:                        # scores and the next state's features from one pass
                    scores, feats = self._fused_chunks(canvases, rows)
                else:
                    scores = self._score_chunks(canvases)
                    feats = self._feature(canvases, rows) if t < n - 2 else feats
                curve[:, t + 1] = scores[rows, rows]
            last = (~game.taken).float().argmax(1)                                    # the one cell left: forced
            game.take(last)
            order[:, n - 1] = last
        cells = cell_saliency(order, curve, game.sign, self.credit)                  # [T, n]
        saliency = upsample_cells(cells, c.grid, (H, W), self.upsample)
        self._order, self._curve = order.cpu(), curve.float().cpu()
        relevance = None if regions is None else region_means(saliency, regions)
        return saliency, relevance, {"full_score": full, "empty_score": empty}


__all__ = ["BackboneFeatures", "CellFeatures", "CellGame", "CellPolicy", "FixedCNN", "PolicyCheckpoint", "Rexl",
           "RexlExplanation", "RexlPolicy", "box_condition", "cell_saliency", "cell_state", "condition_dim",
           "make_features", "observation", "upsample_cells"]
