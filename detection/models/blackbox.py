"""Any detector as a Python callable: in-house, remote or non-PyTorch models can be audited too."""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from detection.models.base import Candidates, Detections, pad_candidates

DetectorFn = Callable[[object], Sequence[dict]]


class CallableDetector:
    """Wraps ``fn(images) -> [{"boxes", "scores", "labels", optional "class_probs", "keypoints"}, ...]``.

    ``input_format='tensor'`` passes the ``[B, 3, H, W]`` float tensor in [0, 1]; ``'numpy'`` passes a
    ``[B, H, W, 3]`` uint8 array (what OpenCV / ONNX Runtime / TensorFlow code expects). Outputs may be tensors,
    arrays or lists; boxes are xyxy pixels. Without ``class_probs`` the class vector is one-hot × score.
    Candidates are the callable's own outputs (the black box hides anything before its NMS).
    """

    def __init__(self, fn: DetectorFn, class_names: Sequence[str], *,
                 input_format: Literal["tensor", "numpy"] = "tensor", batch_size: int = 16):
        if input_format not in ("tensor", "numpy"):
            raise ValueError(f"input_format must be 'tensor' or 'numpy', got {input_format!r}")
        self.fn, self.class_names = fn, list(class_names)
        self.input_format, self.batch_size = input_format, batch_size
        self.device = torch.device("cpu")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _call(self, images: torch.Tensor) -> list[dict]:
        if self.input_format == "numpy":
            arg = (images.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
        else:
            arg = images
        out = list(self.fn(arg))
        if len(out) != images.shape[0]:
            raise ValueError(f"detector callable returned {len(out)} results for {images.shape[0]} images")
        return out

    def detect(self, images: torch.Tensor) -> list[Detections]:
        results: list[Detections] = []
        for start in range(0, images.shape[0], self.batch_size):
            batch = images[start:start + self.batch_size]
            for i, r in enumerate(self._call(batch)):
                missing = {"boxes", "scores", "labels"} - set(r)
                if missing:
                    raise ValueError(f"detector callable result {start + i} lacks {sorted(missing)}")
                as_t = lambda v, dt=torch.float32: torch.as_tensor(np.asarray(v), dtype=dt, device=images.device)  # noqa: E731
                boxes = as_t(r["boxes"]).reshape(-1, 4)
                scores, labels = as_t(r["scores"]).reshape(-1), as_t(r["labels"], torch.int64).reshape(-1)
                if "class_probs" in r and r["class_probs"] is not None:
                    probs = as_t(r["class_probs"]).reshape(-1, self.num_classes)
                else:
                    probs = torch.nn.functional.one_hot(labels, self.num_classes).float() * scores[:, None]
                kpts = as_t(r["keypoints"]) if r.get("keypoints") is not None else None
                results.append(Detections(boxes, scores, labels, probs, kpts))
        return results

    def candidates(self, images: torch.Tensor) -> Candidates:
        dets = self.detect(images)
        return pad_candidates([d.boxes for d in dets], [d.scores for d in dets], [d.class_probs for d in dets],
                    self.num_classes)
