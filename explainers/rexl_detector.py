"""RExL cell policies for a detector: one box-conditioned policy serves every pedestrian (``explainers.rexl``).

A detector's cell policy reads, per cell of the k x k game grid of the *current* canvas (:func:`box_cell_state`;
an insertion policy also the image's pooled maps and support map, since its canvas starts as the substrate):

* the feature maps the detection head reads (the neck's outputs; ``layers`` picks them, 0 = the finest, stride 8),
  cropped to the image (no letterbox padding) and average-pooled to the grid: what is where, at the detector's own
  resolution (:class:`DetectorCellFeatures`);
* the target's *support map*: the best D-RISE similarity to the target of the candidates whose anchors are centred
  in the cell (IoU with the target box x objectness x class-vector cosine; 0 where no anchor supports it). It comes
  from the same pass as the score (whose value is its max over the cells), so it says where the detector still sees
  the target, as a classifier's class map does;
* the target box's cover of the cell (``explainers.rexl.box_condition``: which cells the pedestrian is in);
* taken (0 / 1), the taken share of the 3 x 3 neighbourhood and the target's current score (constant over cells).

One pass of the detector gives a canvas's D-RISE scores and all of this (the scorer's own code path:
``candidates_and_maps`` of the detector adapter and ``similarities`` of its ``DRiseScorer``), so a roll-out spends
one model forward per step, as the classifier's fused pass does. Needs a detector adapter with
``candidates_and_maps``, ``head_channels`` and ``anchor_points`` (``detection.models.yolo.YoloDetector``) and a
scorer with ``similarities`` and ``target_boxes`` (``detection.scorers.DRiseScorer``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

KIND = "detector_cells"
SUPPORT_FLOOR = 1e-6
STATE_EXTRA = 6          # state channels beyond the F pooled ones (box_cell_state); the support map is at -STATE_EXTRA
# (of a deletion state; an insertion state appends the image's F + 1 channels after them)


def needs(scorer) -> str | None:
    """Why :class:`DetectorCellFeatures` cannot serve this scorer, or None."""
    detector = getattr(scorer, "model", None)
    missing = [m for m in ("candidates_and_maps", "head_channels", "anchor_points") if not hasattr(detector, m)]
    if missing:
        return f"a detector adapter with {', '.join(missing)} (a PyTorch YOLO, detection.models.yolo.YoloDetector)"
    try:
        _ = detector.head_channels
    except (TypeError, ValueError) as exc:
        return f"a detection head with one candidate per anchor ({exc})"
    if not hasattr(scorer, "similarities") or getattr(scorer, "target_boxes", None) is None:
        return "a D-RISE scorer (detection.scorers.DRiseScorer: similarities and target_boxes)"
    return None


class DetectorCellFeatures(nn.Module):
    """Per-cell features of a detector's canvases for a box-conditioned cell policy (module docstring).

    ``scorer``: a ``DRiseScorer`` of the audited detector (its targets are the boxes the policy explains);
    ``layers``: indices of the head's input maps (0: finest); ``grid``: k. :meth:`run` gives, for canvases
    [B, 3, H, W] and a target column per row, the D-RISE scores [B, T] of every target and the features
    [rows, F k^2 + k^2 + 1] of each row's target: the F pooled channels (channel-major), its support map [k^2] and
    its score. Raises ValueError for a scorer it cannot serve or a layer out of range."""

    def __init__(self, scorer, layers: tuple[int, ...] | list[int] = (0, 1), grid: int = 7):
        super().__init__()
        why = needs(scorer)
        if why:
            raise ValueError(f"rexl: features {KIND!r} need {why}, got {type(getattr(scorer, 'model', None)).__name__}"
                             f" / {type(scorer).__name__}")
        channels = list(scorer.model.head_channels)
        layers = [int(x) for x in layers]
        if not layers or any(not 0 <= x < len(channels) for x in layers) or len(set(layers)) != len(layers):
            raise ValueError(f"rexl: features {KIND!r} layers must be distinct indices in [0, {len(channels)}) of the "
                             f"detection head's input maps, got {layers}")
        self.scorer, self.detector, self.grid, self.layers = scorer, scorer.model, int(grid), layers
        self.channels = sum(channels[x] for x in layers)
        self.n = self.grid * self.grid
        self.dim = self.channels * self.n + self.n + 1
        self.spec = {"kind": KIND, "layers": layers, "grid": self.grid, "channels": self.channels,
                     "network": type(getattr(self.detector, "model", self.detector)).__name__}
        self._anchor_cells: dict = {}

    def _cells_of_anchors(self, maps: list[torch.Tensor], box, H: int, W: int) -> torch.Tensor:
        """The game cell [A] of each anchor's centre (k^2 for anchors in the letterbox padding), cached per layout."""
        key = (H, W, box.size, box.resized, tuple(tuple(m.shape[-2:]) for m in maps))
        if key not in self._anchor_cells:
            xy = self.detector.anchor_points(maps, box)
            inside = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
            from explainers.rexl import cell_labels
            labels = cell_labels(H, W, self.grid, xy.device)
            px, py = xy[:, 0].clamp(0, W - 1).long(), xy[:, 1].clamp(0, H - 1).long()
            self._anchor_cells[key] = torch.where(inside, labels[py, px], torch.full_like(px, self.n))
        return self._anchor_cells[key]

    def _pool(self, fmap: torch.Tensor, box) -> torch.Tensor:
        """A head input map [B, C, h, w] cropped to the map cells that overlap the image (padding narrower than the
        map's stride stays in the border cells: 8 px of padding at stride 16 on the demo's 240 x 320 scenes), then
        average-pooled to the grid (adaptive: overlapping windows where the crop is smaller than k) -> [B, C, k^2]."""
        h, w = fmap.shape[-2:]
        Hin, Win = box.size
        y0 = int(box.pad_y * h // Hin)
        x0 = int(box.pad_x * w // Win)
        y1 = max(y0 + 1, -(-(box.pad_y + box.resized[0]) * h // Hin))
        x1 = max(x0 + 1, -(-(box.pad_x + box.resized[1]) * w // Win))
        return F.adaptive_avg_pool2d(fmap[:, :, y0:y1, x0:x1], self.grid).flatten(2)

    @torch.inference_mode()
    def run(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One detector pass: scores [B, T] (the scorer's D-RISE similarity of every target) and features
        [M, F k^2 + k^2 + 1] of row i's target ``targets[i]`` (columns of the scorer; M = B, or B = 1 and any M:
        one canvas for every listed target)."""
        targets = torch.as_tensor(targets, dtype=torch.long, device=images.device).view(-1)
        B, M = images.shape[0], targets.shape[0]
        if M != B and B != 1:
            raise ValueError(f"rexl: {B} canvases need 1 or {B} targets, got {M}")
        cand, maps, box = self.detector.candidates_and_maps(images)
        sim = self.scorer.similarities(cand).float()                                    # [B, T, A]
        scores = sim.amax(-1) if sim.shape[-1] else sim.new_zeros(sim.shape[:2])
        pooled = torch.cat([self._pool(maps[x], box) for x in self.layers], 1)          # [B, F, n]
        rows = torch.zeros(M, dtype=torch.long, device=images.device) if B == 1 else \
            torch.arange(M, device=images.device)
        own = sim[rows, targets]                                                         # [M, A]
        cells = self._cells_of_anchors(maps, box, *images.shape[-2:]).to(own.device)
        if cells.shape[0] != own.shape[-1]:
            raise ValueError(f"rexl: the detector gave {own.shape[-1]} candidates for {cells.shape[0]} anchors of its "
                             "head's maps: features 'detector_cells' need one candidate per anchor (no end-to-end "
                             "head)")
        support = own.new_zeros(M, self.n + 1).scatter_reduce(1, cells.expand(M, -1), own, "amax")[:, :self.n]
        feats = torch.cat([pooled[rows].flatten(1), support, scores[rows, targets][:, None]], 1)
        return scores, feats

    def support(self, feats: torch.Tensor) -> torch.Tensor:
        """The support maps [N, k^2] of :meth:`run`'s features."""
        return feats[:, self.channels * self.n:self.channels * self.n + self.n]


def cell_channels(features: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:class:`DetectorCellFeatures`' features [N, F k^2 + k^2 + 1] (``n`` = k^2 cells) per cell: the F pooled
    channels and the target's support map [N, F + 1, k^2], and the support map's log [N, 1, k^2] (floored at
    ``SUPPORT_FLOOR``: the support spans orders of magnitude, 1e-10 off the pedestrian to ~1 at its anchor). Float."""
    feats = features.float()
    N = feats.shape[0]
    channels = (feats.shape[1] - 1) // n                          # F + 1: the pooled channels and the support map
    cells = feats[:, :channels * n].reshape(N, channels, n)
    return cells, torch.log(cells[:, -1:].clamp_min(SUPPORT_FLOOR))


def box_cell_state(features: torch.Tensor, taken: torch.Tensor, condition: torch.Tensor, grid: int,
                   image_features: torch.Tensor | None = None) -> torch.Tensor:
    """The state of a box-conditioned cell policy [N, F + 6, k^2] from :class:`DetectorCellFeatures`' features
    [N, F k^2 + k^2 + 1] of the current canvas, the taken cells [N, k^2] and the ``box`` conditioning [N, k^2 + 4]
    (``explainers.rexl.box_condition``): the F pooled channels, the target's support map, its log (floored at
    ``SUPPORT_FLOOR``: the support spans orders of magnitude, 1e-10 off the pedestrian to ~1 at its anchor), the
    box's cover of each cell, taken (0 / 1), the taken cells of the 3 x 3 neighbourhood / 9 and the target's
    current score. Insertion mode (``image_features``: the same features of the whole image [N, F k^2 + k^2 + 1],
    since its canvas starts as the substrate and shows little): F + 1 more channels [N, 2 F + 7, k^2], the image's
    pooled channels and its log support map, last. Raw (the policy standardises it)."""
    N, n = taken.shape
    feats = features.float()
    cells, log_support = cell_channels(feats, n)
    cover = condition.float().to(feats.device)[:, None, :n]
    t = taken.float()[:, None]
    near = F.conv2d(t.view(N, 1, grid, grid), torch.ones(1, 1, 3, 3, device=t.device), padding=1).view(N, 1, n) / 9
    score = feats[:, -1][:, None, None].expand(N, 1, n)
    parts = [cells, log_support, cover, t, near, score]
    if image_features is not None:
        image, image_log_support = cell_channels(image_features.to(feats.device), n)
        parts += [image[:, :-1], image_log_support]
    return torch.cat(parts, 1)


__all__ = ["DetectorCellFeatures", "KIND", "STATE_EXTRA", "box_cell_state", "cell_channels", "needs"]
