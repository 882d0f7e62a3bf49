"""ONNX models through ONNX Runtime (https://onnxruntime.ai): detectors and classifiers exported from any framework.

What the graph expects is declared (params ``onnx:`` options, see :mod:`detection.models.specs`) and checked
against the graph: input layout (NCHW / NHWC), size (a fixed graph's own, else a letterbox to ``imgsz``), pixel
normalisation ``(x · scale - mean) / std`` of the [0, 1] images, and how the outputs decode:

* ``yolo``: raw heads ``[B, 4 + C (+ K·D), N]`` as ultralytics exports them (box centre xywh in input pixels, class
  scores after the sigmoid, pose keypoints). :class:`OnnxYoloDetector` is a :class:`~detection.models.yolo.
  YoloDetector` whose network is the graph: the same letterbox, pre-NMS candidates (D-RISE) and NMS.
* ``boxes``: final ``boxes`` / ``scores`` (/ ``labels``) outputs (:class:`OnnxBoxesDetector`); the candidates are
  those boxes (the graph hides anything before its own NMS).
* classifiers: logits or probabilities ``[B, C]`` behind :class:`~detection.models.classifier.ImageClassifier`
  (:func:`onnx_classifier`).

Graphs with a fixed batch size run in chunks of that size; ``CUDAExecutionProvider`` is used when the device is a
GPU and the installed ONNX Runtime has it (``onnxruntime-gpu``), else the CPU provider.
"""
from __future__ import annotations

import ast
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from detection.models.base import Candidates, Detections, WeightsError, pad_candidates, pick_device
from detection.models.classifier import ImageClassifier
from detection.models.letterbox import Letterbox, letterbox
from detection.models.yolo import YoloDetector

FILL = 114 / 255                     # letterbox padding, as detection.models.letterbox (ultralytics' grey)
_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(uint8)": np.uint8}


def _check_uint8(graph: OnnxGraph, scale: float, mean: Sequence[float], std: Sequence[float]) -> None:
    """A uint8 input takes 0..255 pixels: anything but ``scale`` 255 without mean / std would be rounded away."""
    if graph.dtype == np.uint8 and (scale != 255 or any(m != 0 for m in mean) or any(s != 1 for s in std)):
        raise WeightsError(f"{graph.path}: input {graph.input_name!r} is uint8 (0..255 pixels): params onnx.scale "
                           f"must be 255 with mean 0 and std 1 (got scale {scale}, mean {list(mean)}, "
                           f"std {list(std)})")


def _fixed(dim) -> int | None:
    """A graph dimension: an int when fixed, None when symbolic / unknown."""
    return dim if isinstance(dim, int) and dim > 0 else None


class OnnxGraph:
    """An ONNX Runtime session with its image input described: name, layout, fixed batch and size (if any).

    ``run(x [B, 3, H, W] float, names)`` -> the named outputs as float32 tensors on ``device``, the batch split into
    the graph's fixed batch size (the last chunk padded with copies of its last image, the padding dropped).
    Raises FileNotFoundError (missing file), :class:`WeightsError` (not an ONNX graph; an input that is not a
    3-channel image in ``layout``; an unsupported input type), each naming the file.
    """

    def __init__(self, path: str | Path, *, device: str | torch.device | None = "auto", input_name: str | None = None,
                 layout: Literal["NCHW", "NHWC"] = "NCHW"):
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"weights file not found: {self.path}")
        self.device = pick_device(device)
        providers: list = ["CPUExecutionProvider"]
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" in ort.get_available_providers():
                providers.insert(0, ("CUDAExecutionProvider", {"device_id": self.device.index or 0}))
            else:
                warnings.warn(f"{self.path}: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
                              f": running on the CPU", stacklevel=2)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()    # the process's thread budget, as torch uses
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:     # ONNX Runtime raises its own Fail / InvalidProtobuf / InvalidGraph types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            raise WeightsError(f"{self.path}: not a loadable ONNX graph ({type(exc).__name__}: {first})") from None
        self.providers = self.session.get_providers()
        inputs = {i.name: i for i in self.session.get_inputs()}
        if input_name is not None and input_name not in inputs:
            raise WeightsError(f"{self.path}: no input {input_name!r} (the graph's inputs: {list(inputs)})")
        arg = inputs[input_name] if input_name is not None else self.session.get_inputs()[0]
        self.input_name, self.layout = arg.name, layout
        shape = list(arg.shape)
        channels = {"NCHW": 1, "NHWC": 3}[layout]
        if len(shape) != 4 or _fixed(shape[channels]) not in (None, 3):
            raise WeightsError(f"{self.path}: input {arg.name!r} has shape {shape}, not a 3-channel image batch in "
                               f"the declared layout {layout} (params onnx.layout)")
        if arg.type not in _DTYPES:
            raise WeightsError(f"{self.path}: input {arg.name!r} is {arg.type}; supported: {sorted(_DTYPES)}")
        self.dtype = _DTYPES[arg.type]
        self.batch = _fixed(shape[0])
        hw = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
        self.size = (hw[0], hw[1]) if _fixed(hw[0]) and _fixed(hw[1]) else None   # fixed (H, W) or None
        self.output_names = [o.name for o in self.session.get_outputs()]
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def output(self, name: str | None, role: str) -> str:
        """The output called ``name`` (None: the first); WeightsError naming the file and ``role`` if absent."""
        if name is None:
            return self.output_names[0]
        if name not in self.output_names:
            raise WeightsError(f"{self.path}: no output {name!r} for {role} (the graph's outputs: "
                               f"{self.output_names}; params onnx options name them)")
        return name

    def _feed(self, x: torch.Tensor) -> np.ndarray:
        if self.layout == "NHWC":
            x = x.permute(0, 2, 3, 1)
        if self.dtype == np.uint8:
            x = x.round().clamp(0, 255)
        return np.ascontiguousarray(x.detach().cpu().numpy().astype(self.dtype, copy=False))

    def run_chunks(self, x: torch.Tensor, names: Sequence[str]) -> list[list[np.ndarray]]:
        """The named outputs of each chunk of the graph's fixed batch size (the whole batch when it is dynamic)."""
        step = self.batch or x.shape[0]
        results = []
        for start in range(0, x.shape[0], step):
            chunk = x[start:start + step]
            n = chunk.shape[0]
            if self.batch and n < self.batch:
                chunk = torch.cat([chunk, chunk[-1:].expand(self.batch - n, *chunk.shape[1:])])
            outs = self.session.run(list(names), {self.input_name: self._feed(chunk)})
            results.append([o[:n] if self.batch and self.batch != n and o.ndim and o.shape[0] == self.batch else o
                            for o in outs])
        return results

    def run(self, x: torch.Tensor, names: Sequence[str]) -> list[torch.Tensor]:
        """The named outputs for the whole batch, concatenated along their first (batch) dimension."""
        chunks = self.run_chunks(x, names)
        return [torch.from_numpy(np.concatenate([c[i] for c in chunks]).astype(np.float32, copy=False))
                .to(self.device) for i in range(len(names))]


class OnnxInput:
    """The preprocessing of an ONNX detector: letterbox into the graph's fixed size (or, for a dynamic graph, into
    ``imgsz`` padded to ``stride`` multiples: :func:`detection.models.letterbox.letterbox`, the PyTorch adapters'),
    then ``(x · scale - mean) / std``. ``letterbox=False`` feeds the images at their own size."""

    def __init__(self, graph: OnnxGraph, *, imgsz: int, stride: int = 32, input_size: tuple[int, int] | None = None,
                 scale: float = 1.0, mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 letterbox: bool = True):
        if input_size is not None and graph.size is not None and tuple(input_size) != graph.size:
            raise WeightsError(f"{graph.path}: params declare input_size {list(input_size)} but the graph's input "
                               f"{graph.input_name!r} is fixed at {list(graph.size)} (H, W)")
        self.graph, self.imgsz, self.stride, self.use_letterbox = graph, imgsz, stride, letterbox
        self.size = tuple(input_size) if input_size is not None else graph.size
        if not letterbox and self.size is not None:
            raise WeightsError(f"{graph.path}: letterbox is off but the graph takes a fixed {list(self.size)} input")
        _check_uint8(graph, scale, mean, std)
        self.scale = scale
        self.mean = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)

    def __call__(self, images: torch.Tensor) -> tuple[torch.Tensor, Letterbox]:
        """Images ``[B, 3, H, W]`` in [0, 1] -> the graph's input ``[B, 3, h, w]`` (NCHW, normalised) and the
        :class:`Letterbox` that maps its coordinates back."""
        x = images.float()
        H, W = x.shape[-2:]
        if not self.use_letterbox:
            box = Letterbox(scale=1.0, pad_x=0, pad_y=0, size=(H, W), original=(H, W), resized=(H, W))
        elif self.size is None:
            x, box = letterbox(x, self.imgsz, self.stride)
        else:
            x, box = letterbox_to(x, self.size)
        x = x * self.scale if self.scale != 1 else x
        mean, std = self.mean.to(x.device), self.std.to(x.device)
        return ((x - mean) / std if bool((mean != 0).any() or (std != 1).any()) else x), box


def letterbox_to(images: torch.Tensor, size: tuple[int, int], fill: float = FILL) -> tuple[torch.Tensor, Letterbox]:
    """Fit ``[B, 3, H, W]`` into a fixed ``size`` (H, W) keeping the aspect ratio, centred, padded with ``fill``
    (what ultralytics' LetterBox does for a fixed-size export). The resize is the one of
    :func:`detection.models.letterbox.letterbox` (bilinear, antialiased when shrinking), so a square image gives the
    same input as the PyTorch adapter."""
    B, C, H, W = images.shape
    out_h, out_w = size
    r = min(out_h / H, out_w / W)
    new_h, new_w = max(1, round(H * r)), max(1, round(W * r))
    box = Letterbox(scale=r, pad_x=(out_w - new_w) // 2, pad_y=(out_h - new_h) // 2, size=(out_h, out_w),
                    original=(H, W), resized=(new_h, new_w))
    if (new_h, new_w) != (H, W):
        images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=r < 1)
    if (out_h, out_w) != (new_h, new_w):
        images = F.pad(images, (box.pad_x, out_w - new_w - box.pad_x, box.pad_y, out_h - new_h - box.pad_y),
                       value=fill)
    return images, box


def metadata_names(graph: OnnxGraph) -> list[str] | None:
    """Class names from an ultralytics export's ``names`` metadata (``"{0: 'person', ...}"``), else None."""
    raw = graph.metadata.get("names")
    if not raw:
        return None
    try:
        names = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return None
    if isinstance(names, dict):
        return [str(names[k]) for k in sorted(names)]
    return [str(n) for n in names] if isinstance(names, (list, tuple)) else None


def _class_names(graph: OnnxGraph, classes: Sequence[str] | None) -> list[str]:
    names = list(classes) if classes is not None else metadata_names(graph)
    if not names:
        raise WeightsError(f"{graph.path}: no class names: give 'classes' in params (the file has no ultralytics "
                           f"'names' metadata)")
    return names


class OnnxYoloDetector(YoloDetector):
    """A YOLO exported to ONNX (raw heads ``[B, 4 + C (+ K·D), N]``; ``[B, N, 4 + C (+ K·D)]`` is accepted too),
    decoded by :class:`~detection.models.yolo.YoloDetector`'s own candidates / NMS.

    ``classes``: class names (default: the file's ultralytics metadata); ``kpt_shape``: (K, D) of a pose model
    (default: the metadata's, else none); ``stride``: padding multiple of a dynamic graph (default: metadata, 32).
    Raises FileNotFoundError / :class:`WeightsError` naming the file (see :class:`OnnxGraph`), and WeightsError when
    the output's shape does not fit the classes and keypoints.
    """

    def __init__(self, path: str | Path, *, classes: Sequence[str] | None = None, imgsz: int = 320,
                 input_size: tuple[int, int] | None = None, layout: Literal["NCHW", "NHWC"] = "NCHW",
                 input_name: str | None = None, output: str | None = None, scale: float = 1.0,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                 kpt_shape: tuple[int, int] | None = None, stride: int | None = None,
                 device: str | torch.device | None = "auto", batch_size: int = 32, conf: float = 0.25,
                 iou: float = 0.7, max_det: int = 300):
        self.graph = OnnxGraph(path, device=device, input_name=input_name, layout=layout)
        meta = self.graph.metadata
        self.output_name = self.graph.output(output, "decode 'yolo'")
        self.class_names = _class_names(self.graph, classes)
        if kpt_shape is None and meta.get("kpt_shape"):
            kpt_shape = tuple(ast.literal_eval(meta["kpt_shape"]))
        self.kpt_shape = tuple(kpt_shape) if kpt_shape else None
        self.stride = int(stride or meta.get("stride") or 32)
        self.input = OnnxInput(self.graph, imgsz=imgsz, stride=self.stride, input_size=input_size, scale=scale,
                               mean=mean, std=std)
        self.device, self.model = self.graph.device, None
        self.imgsz, self.batch_size = imgsz, batch_size
        self.conf, self.iou, self.max_det = conf, iou, max_det
        self.amp = False                              # ONNX Runtime runs the graph as exported
        self.weights = str(self.graph.path)

    @property
    def channels(self) -> int:
        """Output channels the declared classes and keypoints imply: 4 + C (+ K·D)."""
        k = self.kpt_shape[0] * self.kpt_shape[1] if self.kpt_shape else 0
        return 4 + self.num_classes + k

    @torch.inference_mode()
    def raw(self, images: torch.Tensor) -> tuple[torch.Tensor, Letterbox]:
        """Graph output for one batch as ``[B, A, 4 + C (+ K·D)]`` and the letterbox (as YoloDetector.raw)."""
        x, box = self.input(images.to(self.device))
        (out,) = self.graph.run(x, [self.output_name])
        want = self.channels
        if out.ndim == 3 and out.shape[1] == want:
            return out.transpose(1, 2), box
        if out.ndim == 3 and out.shape[2] == want:
            return out, box
        kpts = f" + {self.kpt_shape[0]}x{self.kpt_shape[1]} keypoints" if self.kpt_shape else ""
        raise WeightsError(f"{self.graph.path}: output {self.output_name!r} has shape {list(out.shape)}; decode "
                           f"'yolo' with {self.num_classes} classes{kpts} expects [B, {want}, N] (4 box + "
                           f"{self.num_classes} class scores{kpts}); check params classes / onnx.kpt_shape")


class OnnxBoxesDetector:
    """A detector whose graph outputs final boxes: ``boxes`` ``[B, N, 4]`` (or ``[N, 4]`` for a batch-1 graph),
    ``scores`` ``[B, N]`` (or class scores ``[B, N, C]``, whose argmax is the label) and optional ``labels``
    ``[B, N]`` (class indices into ``classes``).

    Boxes are ``box_format`` (xyxy, xywh corner, cxcywh centre) in the graph input's pixels, or fractions of its
    width / height when ``normalized``; they are mapped back through the letterbox. :meth:`detect` keeps scores
    >= ``conf``; :meth:`candidates` are all boxes the graph gives. Errors as :class:`OnnxGraph`, and WeightsError
    naming the file when an output is missing or its shape does not fit.
    """

    def __init__(self, path: str | Path, *, classes: Sequence[str] | None = None, imgsz: int = 320,
                 input_size: tuple[int, int] | None = None, layout: Literal["NCHW", "NHWC"] = "NCHW",
                 input_name: str | None = None, boxes_output: str = "boxes", scores_output: str = "scores",
                 labels_output: str | None = "labels", box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy",
                 normalized: bool = False, letterbox: bool = True, scale: float = 1.0,
                 mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0), stride: int = 32,
                 device: str | torch.device | None = "auto", batch_size: int = 32, conf: float = 0.25):
        self.graph = OnnxGraph(path, device=device, input_name=input_name, layout=layout)
        self.class_names = _class_names(self.graph, classes)
        self.names = [self.graph.output(boxes_output, "boxes"), self.graph.output(scores_output, "scores")]
        if labels_output is not None:
            self.names.append(self.graph.output(labels_output, "labels"))
        self.input = OnnxInput(self.graph, imgsz=imgsz, stride=stride, input_size=input_size, scale=scale,
                               mean=mean, std=std, letterbox=letterbox)
        self.box_format, self.normalized = box_format, normalized
        self.device, self.batch_size, self.conf, self.amp = self.graph.device, batch_size, conf, False
        self.weights = str(self.graph.path)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def _shape_error(self, what: str, got: tuple, expected: str) -> WeightsError:
        return WeightsError(f"{self.graph.path}: output {what} has shape {list(got)}, expected {expected} "
                            f"(params onnx.box_format / outputs)")

    def _image(self, outs: list[np.ndarray], box: Letterbox) -> Detections:
        """One image's outputs (batch dimension removed) -> Detections in original pixels, unthresholded."""
        boxes, scores = (torch.from_numpy(np.asarray(o, dtype=np.float32)).to(self.device) for o in outs[:2])
        if boxes.ndim != 2 or boxes.shape[-1] != 4:
            raise self._shape_error(repr(self.names[0]), tuple(boxes.shape), "[B, N, 4] or [N, 4]")
        n, C = boxes.shape[0], self.num_classes
        probs = None
        if scores.ndim == 2 and scores.shape == (n, C):
            probs, (scores, labels) = scores, scores.max(-1)
        elif scores.shape != (n,):
            raise self._shape_error(repr(self.names[1]), tuple(scores.shape), f"[B, N] or [B, N, C={C}] with N={n}")
        if len(outs) > 2:
            labels = torch.from_numpy(np.asarray(outs[2])).to(self.device).long().reshape(-1)
            if labels.shape != (n,) or (n and (labels.min() < 0 or labels.max() >= C)):
                raise self._shape_error(repr(self.names[2]), tuple(labels.shape),
                                        f"[B, N] class indices in [0, {C}) with N={n}")
        elif probs is None:
            raise WeightsError(f"{self.graph.path}: per-box scores without labels: name the labels output "
                               f"(params onnx.labels_output) or output class scores [B, N, C]")
        if self.box_format != "xyxy":
            xy, wh = boxes[:, :2], boxes[:, 2:]
            xy = xy - wh / 2 if self.box_format == "cxcywh" else xy
            boxes = torch.cat([xy, xy + wh], -1)
        if self.normalized:
            h, w = box.size
            boxes = boxes * boxes.new_tensor([w, h, w, h])
        if probs is None:
            probs = F.one_hot(labels, C).float() * scores[:, None]
        return Detections(box.boxes_to_original(boxes), scores, labels, probs)

    @torch.inference_mode()
    def _all(self, images: torch.Tensor) -> list[Detections]:
        x, box = self.input(images.to(self.device))
        out = []
        for chunk in self.graph.run_chunks(x, self.names):
            batched = chunk[0].ndim == 3
            if not batched and self.graph.batch != 1:
                raise self._shape_error(repr(self.names[0]), chunk[0].shape, "[B, N, 4] (an unbatched [N, 4] "
                                        "output needs a graph with a fixed batch of 1)")
            for b in range(chunk[0].shape[0] if batched else 1):
                out.append(self._image([o[b] for o in chunk] if batched else chunk, box))
        return out

    def detect(self, images: torch.Tensor) -> list[Detections]:
        """Final detections per image: the graph's boxes with score >= ``conf``."""
        results = []
        for start in range(0, images.shape[0], self.batch_size):
            for d in self._all(images[start:start + self.batch_size]):
                keep = d.scores >= self.conf
                results.append(Detections(d.boxes[keep], d.scores[keep], d.labels[keep], d.class_probs[keep]))
        return results

    def candidates(self, images: torch.Tensor) -> Candidates:
        """Every box the graph outputs (objectness: its score; class vector: the graph's, else one-hot x score)."""
        dets = self._all(images)
        return pad_candidates([d.boxes for d in dets], [d.scores for d in dets], [d.class_probs for d in dets],
                              self.num_classes)


class _OrtModule(torch.nn.Module):
    """An ONNX classifier graph as a parameter-free module for :class:`ImageClassifier`: NCHW in, logits out
    (probabilities are turned into logits: ``log p`` for softmax models, ``log(p / (1 - p))`` for sigmoid ones, so
    the classifier's softmax / sigmoid gives them back)."""

    def __init__(self, graph: OnnxGraph, output: str, returns: Literal["logits", "probabilities"], multi_label: bool,
                 num_classes: int):
        super().__init__()
        self.graph, self.output, self.returns = graph, output, returns
        self.multi_label, self.num_classes = multi_label, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (z,) = self.graph.run(x, [self.output])
        if z.ndim != 2 or z.shape[1] != self.num_classes:
            raise WeightsError(f"{self.graph.path}: output {self.output!r} has shape {list(z.shape)}, expected "
                               f"[B, {self.num_classes}] (one score per class in params classes)")
        z = z.to(x.device)
        if self.returns == "logits":
            return z
        p = z.double().clamp(1e-12, 1 - 1e-12 if self.multi_label else 1.0)
        return (torch.log(p / (1 - p)) if self.multi_label else torch.log(p)).float()


def onnx_classifier(path: str | Path, *, classes: Sequence[str] | None = None, multi_label: bool = True,
                    returns: Literal["logits", "probabilities"] = "logits",
                    input_size: tuple[int, int] | None = None, layout: Literal["NCHW", "NHWC"] = "NCHW",
                    input_name: str | None = None, output: str | None = None, scale: float = 1.0,
                    mean: Sequence[float] = (0.0, 0.0, 0.0), std: Sequence[float] = (1.0, 1.0, 1.0),
                    antialias: bool = True, device: str | torch.device | None = "auto",
                    batch_size: int = 64) -> ImageClassifier:
    """An ONNX classifier behind :class:`ImageClassifier` (its resize to ``input_size``, normalisation, batching).

    ``input_size``: (H, W) the images are resized to (default: the graph's fixed size; none for a dynamic graph).
    Normalisation ``(x · scale - mean) / std`` of [0, 1] images. Raises FileNotFoundError / WeightsError naming the
    file (see :class:`OnnxGraph`), also when ``input_size`` contradicts the graph's fixed size and when the output
    is not ``[B, len(classes)]`` (checked on the first batch).
    """
    graph = OnnxGraph(path, device=device, input_name=input_name, layout=layout)
    names = _class_names(graph, classes)
    _check_uint8(graph, scale, mean, std)
    if input_size is not None and graph.size is not None and tuple(input_size) != graph.size:
        raise WeightsError(f"{graph.path}: params declare input_size {list(input_size)} but the graph's input "
                           f"{graph.input_name!r} is fixed at {list(graph.size)} (H, W)")
    size = tuple(input_size) if input_size is not None else graph.size
    module = _OrtModule(graph, graph.output(output, "the class scores"), returns, multi_label, len(names))
    return ImageClassifier(module, names, multi_label=multi_label, mean=[m / scale for m in mean],
                           std=[s / scale for s in std], input_size=size, device=graph.device,
                           batch_size=batch_size, amp=False, weights=str(graph.path), antialias=antialias)
