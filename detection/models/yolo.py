"""Ultralytics YOLO detection and pose models, from a local ``.pt`` or a ``*.yaml`` architecture (never downloaded).

Inference runs the raw network (``yolo.model(batch)``), so the explainers' scorer sees every anchor's box and full
class-score vector before NMS; :meth:`YoloDetector.detect` applies ultralytics' NMS on top of the same output.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from detection.models.base import Candidates, Detections, WeightsError, pick_device
from detection.models.letterbox import Letterbox, letterbox

os.environ.setdefault("YOLO_OFFLINE", "1")
os.environ.setdefault("YOLO_AUTOINSTALL", "0")


def _xywh_to_xyxy(b: torch.Tensor) -> torch.Tensor:
    xy, wh = b[..., :2], b[..., 2:] / 2
    return torch.cat([xy - wh, xy + wh], dim=-1)


class YoloDetector:
    """A YOLO detect or pose model behind the common adapter interface.

    ``weights``: a local ``.pt`` checkpoint, or a ``*.yaml`` architecture (random init; a bare name such as
    ``yolov8n.yaml`` resolves to ultralytics' bundled configs). ``nc`` overrides the class count of a yaml.
    ``channels_last`` (default: on the CPU) stores the weights channels-last, so oneDNN runs the convolutions in
    NHWC: 1.04-1.19x the scorer's images per second on the CPU at batch 1, 3 and 16 for the demo detector, 1 or 2
    threads (``benchmarks/bench_channels_last.py``; benchmarks/README.md, "Each pedestrian inside its own box, and
    channels-last YOLO"), the same outputs up to float rounding (D-RISE scores within 3e-7); the weights' values and
    their fingerprint do not change.
    """

    def __init__(self, weights: str | Path, *, imgsz: int = 320, device: str | torch.device | None = "auto",
                 batch_size: int = 32, conf: float = 0.25, iou: float = 0.7, max_det: int = 300,
                 nc: int | None = None, amp: bool | None = None, channels_last: bool | None = None):
        from ultralytics import YOLO

        path = Path(weights)
        if path.suffix == ".pt" and not path.is_file():
            raise FileNotFoundError(f"weights file not found: {path}")    # a bare *.pt name would try to download
        if path.suffix not in (".pt", ".yaml", ".yml"):
            raise WeightsError(f"{path}: expected a .pt checkpoint or a .yaml architecture")
        try:
            yolo = YOLO(str(path)) if nc is None or path.suffix == ".pt" else _yaml_with_classes(path, nc)
        except FileNotFoundError:
            raise FileNotFoundError(f"model file not found: {path}") from None
        except Exception as exc:
            raise WeightsError(f"{path}: cannot load YOLO model ({type(exc).__name__}: {exc})") from None
        self.device = pick_device(device)
        self.model = yolo.model.to(self.device).float().eval()
        if self.device.type == "cpu" if channels_last is None else channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.class_names: list[str] = [yolo.names[i] for i in sorted(yolo.names)]
        self.kpt_shape = getattr(self.model, "kpt_shape", None) or self.model.yaml.get("kpt_shape")
        self.stride = int(max(self.model.stride.max().item(), 32))
        self.imgsz, self.batch_size = imgsz, batch_size
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.amp = self.device.type == "cuda" if amp is None else amp
        self.weights = str(path)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, Letterbox]:
        """Network output for one batch: ``[B, A, 4 + C (+ 3K)]`` (xyxy in input pixels, scores, keypoints)."""
        out, box, _ = self._raw(images)
        return out, box

    @torch.inference_mode()
    def _raw(self, images: torch.Tensor, keep_maps: bool = False
             ) -> tuple[torch.Tensor, Letterbox, list[torch.Tensor]]:
        x, box = letterbox(images.to(self.device, non_blocking=True).float(), self.imgsz, self.stride)
        maps: list[torch.Tensor] = []
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            out, maps = self._forward_keeping_head_inputs(x) if keep_maps else (self.model(x), maps)
        out = (out[0] if isinstance(out, (list, tuple)) else out).float().transpose(1, 2)
        return out, box, maps

    def _split(self, out: torch.Tensor, box: Letterbox) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Raw output ``[B, A, 4 + C (+ K*D)]`` -> boxes ``[B, A, 4]`` (xyxy, original pixels), class scores
        ``[B, A, C]`` and keypoints ``[B, A, K, 3]`` (x, y in original pixels, confidence; 1.0 for models trained
        on ``kpt_shape [K, 2]`` labels, which predict no confidence), mapped with the letterbox's per-axis scales."""
        C = self.num_classes
        boxes = box.boxes_to_original(_xywh_to_xyxy(out[..., :4]))
        scores = out[..., 4:4 + C]
        kpts = None
        if self.kpt_shape:
            k, d = self.kpt_shape
            raw = out[..., 4 + C:4 + C + k * d].reshape(*out.shape[:2], k, d)
            conf = raw[..., 2:3] if d == 3 else torch.ones_like(raw[..., :1])   # [17, 2] models: no confidence
            kpts = torch.cat([box.points_to_original(raw[..., :2]), conf], -1)
        return boxes, scores, kpts

    def candidates(self, images: torch.Tensor) -> Candidates:
        """All anchors' boxes and class scores, before NMS. YOLOv8 has no objectness: it is the max class score."""
        return self._candidates(*self.raw(images))

    def _candidates(self, out: torch.Tensor, box: Letterbox) -> Candidates:
        boxes, scores, _ = self._split(out, box)
        valid = torch.ones(scores.shape[:2], dtype=torch.bool, device=scores.device)
        return Candidates(boxes=boxes, objectness=scores.amax(-1), class_probs=scores, valid=valid)

    def candidates_and_maps(self, images: torch.Tensor) -> tuple[Candidates, list[torch.Tensor], Letterbox]:
        """:meth:`candidates` of ``images`` [B, 3, H, W] and, from the same pass, the feature maps the detection head
        reads (the neck's outputs, finest first: [B, C_l, h_l, w_l] float32 in model-input layout, e.g. strides 8, 16,
        32), with the letterbox that maps model-input pixels to the images'. The anchors of candidate ``a`` run over
        the levels in that order, row-major within a level (:meth:`anchor_points`)."""
        out, box, maps = self._raw(images, keep_maps=True)
        return self._candidates(out, box), [m.float() for m in maps], box

    def _forward_keeping_head_inputs(self, x: torch.Tensor) -> tuple[object, list[torch.Tensor]]:
        """``self.model(x)`` layer by layer as ultralytics' ``DetectionModel._predict_once`` runs it (each layer reads
        the outputs its ``f`` names), keeping the detection head's inputs. No hook on the shared network: explainer
        threads that share this detector (and deep copies of it) never see one another's maps."""
        net, saved, maps = self.model, [], []
        for layer in net.model:
            if layer.f != -1:
                x = saved[layer.f] if isinstance(layer.f, int) else [x if j == -1 else saved[j] for j in layer.f]
            if layer is net.model[-1]:
                maps = list(x)
            x = layer(x)
            saved.append(x if layer.i in net.save else None)
        return x, maps

    @property
    def head_channels(self) -> list[int]:
        """Channels of the feature maps the detection head reads, finest first (:meth:`candidates_and_maps`). Raises
        ValueError for an end-to-end head (its candidates are a top-k, not one per anchor) or a fused one."""
        head = self.model.model[-1]
        if getattr(head, "end2end", False) or getattr(head, "cv2", None) is None:
            raise ValueError(f"{self.weights}: the detection head is end-to-end or fused (no per-anchor candidates)")
        return [int(branch[0].conv.in_channels) for branch in head.cv2]

    @staticmethod
    def anchor_points(maps: list[torch.Tensor], box: Letterbox) -> torch.Tensor:
        """Centres [A, 2] (x, y, original-image pixels) of the anchors of :meth:`candidates_and_maps`' maps: level by
        level, row-major, cell centres (ultralytics' ``make_anchors`` offset 0.5) scaled by the level's stride."""
        H, W = box.size
        points = []
        for m in maps:
            h, w = m.shape[-2:]
            ys = (torch.arange(h, device=m.device, dtype=torch.float32) + 0.5) * (H / h)
            xs = (torch.arange(w, device=m.device, dtype=torch.float32) + 0.5) * (W / w)
            gy, gx = torch.meshgrid(ys, xs, indexing="ij")
            points.append(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
        return box.points_to_original(torch.cat(points))

    def detect(self, images: torch.Tensor) -> list[Detections]:
        """Final detections per image (NMS), with each kept box's full class-score vector and keypoints."""
        from ultralytics.utils.nms import non_max_suppression

        results: list[Detections] = []
        for start in range(0, images.shape[0], self.batch_size):
            out, box = self.raw(images[start:start + self.batch_size])
            boxes, scores, kpts = self._split(out, box)
            kept, idxs = non_max_suppression(out.transpose(1, 2), self.conf, self.iou, max_det=self.max_det,
                                             nc=self.num_classes, return_idxs=True)
            for b, (det, idx) in enumerate(zip(kept, idxs)):
                idx = idx.long()
                results.append(Detections(
                    boxes=boxes[b, idx], scores=det[:, 4], labels=det[:, 5].long(),
                    class_probs=scores[b, idx], keypoints=None if kpts is None else kpts[b, idx]))
        return results


def _yaml_with_classes(path: Path, nc: int):
    from ultralytics import YOLO
    from ultralytics.nn.tasks import yaml_model_load

    cfg = yaml_model_load(str(path))
    cfg["nc"] = nc
    task = "pose" if "kpt_shape" in cfg else "detect"
    model = YOLO(str(path), task=task)
    model.model = type(model.model)(cfg, nc=nc, verbose=False)
    model.model.names = {i: str(i) for i in range(nc)}
    return model
