"""What every model adapter returns, and the errors they raise.

Images go in as float tensors ``[B, 3, H, W]`` in [0, 1], RGB, on any device; boxes come out as pixel xyxy in the
coordinates of the images given (adapters undo their own resizing/letterboxing).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.utils.rnn import pad_sequence


class WeightsError(RuntimeError):
    """Weights that cannot be loaded (missing, corrupt, or not matching the architecture); names the path."""


@dataclass
class Detections:
    """Final detections of one image (after NMS)."""

    boxes: torch.Tensor                      # [N, 4] xyxy pixels
    scores: torch.Tensor                     # [N]
    labels: torch.Tensor                     # [N] int64 class index
    class_probs: torch.Tensor | None = None  # [N, C] full class-score vector where the model has one
    keypoints: torch.Tensor | None = None    # [N, 17, 3] (x, y, confidence) for pose models

    def to(self, device: torch.device | str) -> Detections:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Detections(move(self.boxes), move(self.scores), move(self.labels), move(self.class_probs),
                          move(self.keypoints))


@dataclass
class Candidates:
    """Every scored box a detector considered for a batch, before NMS where the model exposes that.

    The D-RISE scorer compares reference detections with these. ``valid`` masks padding when images have
    different numbers of candidates.
    """

    boxes: torch.Tensor        # [B, K, 4] xyxy pixels
    objectness: torch.Tensor   # [B, K]
    class_probs: torch.Tensor  # [B, K, C]
    valid: torch.Tensor        # [B, K] bool


def pick_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' (or None): CUDA when present, else CPU."""
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load_checkpoint(path: str | Path, *, weights_only: bool = True) -> object:
    """``torch.load`` with errors that name the file: missing -> FileNotFoundError, unreadable -> WeightsError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:  # torch raises many types for a corrupt file
        raise WeightsError(f"{path}: cannot load weights ({type(exc).__name__}: {exc})") from None


def load_state_dict_into(model: torch.nn.Module, path: str | Path) -> torch.nn.Module:
    """Load a state dict (or a checkpoint holding one under 'state_dict'/'model') strictly, naming the file."""
    state = load_checkpoint(path)
    if isinstance(state, dict) and not all(isinstance(v, torch.Tensor) for v in state.values()):
        state = state.get("state_dict", state.get("model", state))
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, found {type(state).__name__}")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"{path}: weights do not match the architecture ({str(exc).splitlines()[0]} ...)") from None
    return model


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU with broadcasting: a [..., N, 4], b [..., M, 4] -> [..., N, M]."""
    a, b = a.unsqueeze(-2), b.unsqueeze(-3)
    lt = torch.maximum(a[..., :2], b[..., :2])
    rb = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[..., 2:] - a[..., :2]).clamp(min=0).prod(-1)
    area_b = (b[..., 2:] - b[..., :2]).clamp(min=0).prod(-1)
    return inter / (area_a + area_b - inter).clamp(min=1e-9)


def pad_candidates(boxes: list[torch.Tensor], objectness: list[torch.Tensor], probs: list[torch.Tensor],
         num_classes: int) -> Candidates:
    """Stack per-image candidate lists into padded [B, K, ...] tensors with a validity mask."""
    lengths = torch.tensor([b.shape[0] for b in boxes], device=boxes[0].device)
    probs = [p.reshape(-1, num_classes) for p in probs]
    out_boxes = pad_sequence([b.reshape(-1, 4) for b in boxes], batch_first=True)
    valid = torch.arange(out_boxes.shape[1], device=lengths.device)[None] < lengths[:, None]
    return Candidates(boxes=out_boxes, objectness=pad_sequence(objectness, batch_first=True),
                      class_probs=pad_sequence(probs, batch_first=True), valid=valid)
