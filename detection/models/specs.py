"""Model specifications (what params.yaml names) and the builders that turn them into adapters.

Every stage, the CLI and the benchmarks build models through :func:`build_detector` / :func:`build_classifier`.
``kind: callable`` imports a user's factory (``entrypoint: "package.module:factory"``) and calls it with the spec's
``kwargs`` (:func:`load_entrypoint`); ``kind: onnx`` runs an exported graph through ONNX Runtime with the declared
``onnx:`` options (:class:`OnnxDetectorOptions`, :class:`OnnxClassifierOptions`,
:mod:`detection.models.onnx_runtime`).
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_serializer, model_validator

# Keys the factory of a ``callable`` spec receives from the spec / the stage, never from ``kwargs``.
RESERVED_KWARGS = ("weights", "device", "batch_size")
# What the stages and scorers use of a detector / classifier (detection.models.yolo.YoloDetector,
# detection.models.classifier.ImageClassifier): a factory's result must have all of them.
DETECTOR_INTERFACE = ("detect", "candidates", "class_names", "num_classes", "device")
CLASSIFIER_INTERFACE = ("logits", "classify", "class_names", "num_classes", "multi_label", "input_size", "device")
# Spec fields added after the first release: left out of a dump while unset, so that the run ids and config hashes
# of existing params (which hash the dumped specs) do not change.
_OMIT_UNSET = {"entrypoint": None, "kwargs": {}, "onnx": None, "classes": None}


class EntrypointError(RuntimeError):
    """A ``kind: callable`` model that cannot be built; names the params key, the entrypoint and what failed."""


def _check_entrypoint(spec: DetectorSpec | ClassifierSpec) -> None:
    """Shared validation of ``entrypoint`` / ``kwargs`` / ``weights`` (raises ValueError, shown with the key)."""
    if spec.kind == "callable":
        module, _, attr = (spec.entrypoint or "").partition(":")
        if not module or not attr or not all(p.isidentifier() for p in [*module.split("."), *attr.split(".")]):
            raise ValueError(f"a callable model needs 'entrypoint: package.module:factory' "
                             f"(got {spec.entrypoint!r})")
        reserved = sorted(set(spec.kwargs) & set(RESERVED_KWARGS))
        if reserved:
            raise ValueError(f"kwargs may not set {reserved}: 'weights' comes from the spec's weights, 'device' "
                             f"and 'batch_size' from the stage")
    else:
        if spec.entrypoint is not None or spec.kwargs:
            raise ValueError(f"'entrypoint' and 'kwargs' are for kind 'callable', not {spec.kind!r}")
        if not spec.weights:
            raise ValueError(f"kind {spec.kind!r} needs 'weights'")


def _omit_unset(data: dict, fields: tuple[str, ...]) -> dict:
    return {k: v for k, v in data.items() if not (k in fields and v == _OMIT_UNSET[k])}


class OnnxInputOptions(BaseModel):
    """How an ONNX graph takes images (``kind: onnx``; :mod:`detection.models.onnx_runtime`): the [0, 1] RGB
    images become ``(x · scale - mean) / std`` in ``layout``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    input: str | None = None                       # the graph's image input; null: its first input
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    scale: float = Field(default=1.0, gt=0)        # 255 for graphs that take 0..255 pixel values
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)

    @model_validator(mode="after")
    def _positive_std(self) -> OnnxInputOptions:
        if min(self.std) <= 0:
            raise ValueError(f"std must be positive, got {list(self.std)}")
        return self


class OnnxDetectorOptions(OnnxInputOptions):
    """An ONNX detector's input (letterboxed into ``input_size`` or the graph's fixed size, else into the spec's
    ``imgsz`` padded to ``stride`` multiples) and how its outputs decode: ``yolo`` raw heads (``output``), or final
    ``boxes`` / ``scores`` / ``labels`` outputs."""

    decode: Literal["yolo", "boxes"] = "yolo"
    input_size: tuple[int, int] | None = None      # (H, W) a dynamic graph is fed; null: fixed size or imgsz
    letterbox: bool = True                         # false: images at their own size (boxes decode, dynamic graph)
    stride: int | None = Field(default=None, ge=1)  # dynamic graphs pad to multiples; null: file metadata, else 32
    output: str | None = None                      # yolo: the raw head output; null: the first output
    kpt_shape: tuple[int, int] | None = None       # yolo pose (K, D), e.g. [17, 3]; null: file metadata, else none
    boxes_output: str = "boxes"                    # boxes: output names
    scores_output: str = "scores"                  # [B, N] scores, or [B, N, C] class scores
    labels_output: str | None = "labels"           # null: labels are the argmax of [B, N, C] scores
    box_format: Literal["xyxy", "xywh", "cxcywh"] = "xyxy"
    normalized: bool = False                       # boxes as fractions of the input width / height

    @model_validator(mode="after")
    def _consistent(self) -> OnnxDetectorOptions:
        if not self.letterbox and self.decode == "yolo":
            raise ValueError("decode 'yolo' letterboxes like the PyTorch adapter: letterbox cannot be false")
        return self


class OnnxClassifierOptions(OnnxInputOptions):
    """An ONNX classifier's input (resized to the spec's ``input_size`` or the graph's fixed size) and output."""

    output: str | None = None                      # [B, C] scores; null: the first output
    returns: Literal["logits", "probabilities"] = "logits"
    antialias: bool = True                         # antialiased downscaling in the resize


def _check_onnx(spec: DetectorSpec | ClassifierSpec) -> None:
    if spec.kind != "onnx" and spec.onnx is not None:
        raise ValueError(f"'onnx' options are for kind 'onnx', not {spec.kind!r}")


class DetectorSpec(BaseModel):
    """A detector: ``yolo`` (.pt or .yaml), a torchvision architecture with a local weights file, ``onnx`` (an
    exported graph, ``weights: model.onnx``, with ``onnx:`` options and ``classes``), or ``callable``: a factory
    ``entrypoint: "package.module:factory"`` called with ``kwargs`` (and ``weights=`` when given), which returns a
    detector (:func:`build_detector`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: Literal["yolo", "torchvision", "onnx", "callable"] = "yolo"
    weights: str | None = None               # required except for 'callable'
    arch: str | None = None                  # torchvision architecture name
    num_classes: int | None = None           # torchvision: classes incl. background (default 91, COCO)
    imgsz: int = Field(default=320, ge=32)
    conf: float = Field(default=0.25, ge=0.0, le=1.0)
    iou: float = Field(default=0.7, ge=0.0, le=1.0)
    person_class: str = "person"
    # A top-down keypoint model (detection.models.keypoints) that places 17 keypoints in each of this detector's
    # boxes above ``conf``, replacing the detector's own keypoints (if any).
    keypoints: str | None = None
    entrypoint: str | None = None            # callable: "package.module:factory"
    kwargs: dict[str, Any] = {}              # callable: keyword arguments of the factory
    classes: list[str] | None = None         # onnx: class names (null: the file's ultralytics metadata)
    onnx: OnnxDetectorOptions | None = None  # onnx: input and output decoding (null: the defaults)

    @model_validator(mode="after")
    def _arch_for_torchvision(self) -> DetectorSpec:
        _check_entrypoint(self)
        _check_onnx(self)
        if self.kind == "torchvision" and not self.arch:
            raise ValueError("a torchvision detector needs 'arch' (e.g. fasterrcnn_resnet50_fpn)")
        if self.classes is not None and self.kind != "onnx":
            raise ValueError(f"'classes' is for kind 'onnx' ({self.kind!r} models name their classes)")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict:
        return _omit_unset(handler(self), ("entrypoint", "kwargs", "onnx", "classes"))


class ClassifierSpec(BaseModel):
    """A classifier: ``saved`` (TorchScript + .json sidecar, as the demo), ``torchscript``, ``torchvision``,
    ``timm``, ``onnx`` (an exported graph with ``onnx:`` options; ``input_size`` resizes as for the others), or
    ``callable``: a factory that returns a classifier (:func:`build_classifier`); ``multi_label`` and ``input_size``
    are then the returned classifier's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: str
    kind: Literal["saved", "torchscript", "torchvision", "timm", "onnx", "callable"] = "saved"
    weights: str | None = None               # required except for 'callable'
    arch: str | None = None
    classes: list[str] | None = None         # required except for 'saved', 'callable', 'onnx' (metadata names)
    multi_label: bool = True
    input_size: tuple[int, int] | None = None
    entrypoint: str | None = None            # callable: "package.module:factory"
    kwargs: dict[str, Any] = {}              # callable: keyword arguments of the factory
    onnx: OnnxClassifierOptions | None = None  # onnx: input and output (null: the defaults)

    @model_validator(mode="after")
    def _needs(self) -> ClassifierSpec:
        _check_entrypoint(self)
        _check_onnx(self)
        if self.kind not in ("saved", "callable", "onnx") and not self.classes:
            raise ValueError(f"a {self.kind} classifier needs 'classes'")
        if self.kind in ("torchvision", "timm") and not self.arch:
            raise ValueError(f"a {self.kind} classifier needs 'arch'")
        return self

    @model_serializer(mode="wrap")
    def _dump(self, handler) -> dict:
        return _omit_unset(handler(self), ("entrypoint", "kwargs", "onnx"))


def file_sha256(path: str | Path) -> str:
    """Content hash of a weights file (built-in ``*.yaml`` names hash their name)."""
    path = Path(path)
    if not path.is_file():
        return hashlib.sha256(str(path).encode()).hexdigest()
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _import_module(name: str):
    """``importlib.import_module``; when the module itself (not one of its imports) is not found, retry with the
    working directory (the project root, where params.yaml is) on ``sys.path``: a console script such as
    ``xai-audit`` does not put it there, ``python -m`` does."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        cwd = os.getcwd()
        own = exc.name is not None and (name == exc.name or name.startswith(exc.name + "."))
        if not own or cwd in sys.path:
            raise
        sys.path.append(cwd)
        importlib.invalidate_caches()
        return importlib.import_module(name)


def _label(spec: DetectorSpec | ClassifierSpec) -> str:
    role = "classifier" if isinstance(spec, ClassifierSpec) else "detector"
    return f"params.yaml infer {role} {spec.id!r}: entrypoint {spec.entrypoint!r}"


def load_entrypoint(spec: DetectorSpec | ClassifierSpec):
    """The factory a ``callable`` spec names (``"package.module:factory"``, dotted attributes allowed).

    Raises :class:`EntrypointError` naming the model id and the entrypoint when the module cannot be imported
    (missing, or its import raised), the attribute is missing, or it is not callable.
    """
    module_name, _, attr = (spec.entrypoint or "").partition(":")
    try:
        obj = _import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise EntrypointError(f"{_label(spec)}: module {module_name!r} not found (neither installed nor under "
                                  f"the working directory {os.getcwd()})") from None
        raise EntrypointError(f"{_label(spec)}: importing module {module_name!r} failed "
                              f"(ModuleNotFoundError: {exc})") from exc
    except Exception as exc:
        raise EntrypointError(f"{_label(spec)}: importing module {module_name!r} failed "
                              f"({type(exc).__name__}: {exc})") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise EntrypointError(f"{_label(spec)}: {getattr(obj, '__name__', obj)!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise EntrypointError(f"{_label(spec)}: {type(obj).__name__} object is not callable")
    return obj


def _call_factory(spec: DetectorSpec | ClassifierSpec, device: str, batch_size: int,
                  interface: tuple[str, ...], example: str):
    """Import and call the factory of a ``callable`` spec, then check that the result has ``interface``.

    The factory gets ``**spec.kwargs``, ``weights=<path>`` when the spec gives weights, and ``device`` (the
    resolved device, e.g. ``"cpu"``, ``"cuda:0"``) / ``batch_size`` (images per forward pass) when it has
    parameters of those names.
    """
    from detection.models.base import pick_device

    factory = load_entrypoint(spec)
    kw = dict(spec.kwargs)
    if spec.weights is not None:
        kw["weights"] = spec.weights
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):                      # builtins / C extensions without a signature
        signature = None
    params = {} if signature is None else signature.parameters
    for name, value in (("device", str(pick_device(device))), ("batch_size", batch_size)):
        if name in params and params[name].kind in (inspect.Parameter.KEYWORD_ONLY,
                                                     inspect.Parameter.POSITIONAL_OR_KEYWORD):
            kw[name] = value
    if signature is not None:
        try:
            signature.bind(**kw)
        except TypeError as exc:
            raise EntrypointError(f"{_label(spec)}: the factory does not take the arguments {sorted(kw)} "
                                  f"(kwargs{' and weights' if spec.weights is not None else ''}): {exc}") from None
    try:
        model = factory(**kw)
    except Exception as exc:
        raise EntrypointError(f"{_label(spec)}: the factory raised {type(exc).__name__}: {exc}") from exc
    missing = [a for a in interface if not hasattr(model, a)]
    missing += [a for a in interface[:2] if a not in missing and not callable(getattr(model, a))]
    if missing:
        raise EntrypointError(f"{_label(spec)}: the factory returned a {type(model).__module__}."
                              f"{type(model).__qualname__}, which lacks {missing} (or they are not methods); "
                              f"return {example}")
    return model


def _module_source(spec: DetectorSpec | ClassifierSpec) -> Path | None:
    """The source file of a ``callable`` spec's module, when it can be found without importing the module itself
    (its parent packages are imported)."""
    name = (spec.entrypoint or "").partition(":")[0]
    for attempt in range(2):
        try:
            found = importlib.util.find_spec(name)
        except (ImportError, ValueError):
            found = None
        if found is not None or attempt or os.getcwd() in sys.path:
            break
        sys.path.append(os.getcwd())
        importlib.invalidate_caches()
    origin = getattr(found, "origin", None)
    return Path(origin) if origin and Path(origin).is_file() else None


def model_files(spec: DetectorSpec | ClassifierSpec) -> list[Path]:
    """The existing files a model is loaded from: its weights and, for ``callable``, the entrypoint module's
    source (the code outside it, e.g. what it imports, is not tracked)."""
    files = [Path(spec.weights)] if spec.weights else []
    if spec.kind == "callable":
        source = _module_source(spec)
        files += [source] if source is not None else []
    return [f for f in files if f.is_file()]


def model_sha256(spec: DetectorSpec | ClassifierSpec) -> str:
    """A content hash of what a model is built from: the weights file's :func:`file_sha256` (unchanged for the
    file-based kinds), for ``callable`` the hash of the entrypoint, kwargs, weights file and module source."""
    if spec.kind != "callable":
        return file_sha256(spec.weights)
    source = _module_source(spec)
    blob = {"entrypoint": spec.entrypoint, "kwargs": spec.kwargs,
            "weights": None if spec.weights is None else file_sha256(spec.weights),
            "source": None if source is None else file_sha256(source)}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def _onnx_detector(spec: DetectorSpec, device: str, batch_size: int):
    from detection.models.onnx_runtime import OnnxBoxesDetector, OnnxYoloDetector

    o = spec.onnx or OnnxDetectorOptions()
    common = dict(classes=spec.classes, imgsz=spec.imgsz, input_size=o.input_size, layout=o.layout,
                  input_name=o.input, scale=o.scale, mean=o.mean, std=o.std, device=device, batch_size=batch_size,
                  conf=spec.conf)
    if o.decode == "yolo":
        return OnnxYoloDetector(spec.weights, output=o.output, kpt_shape=o.kpt_shape, stride=o.stride, iou=spec.iou,
                                **common)
    return OnnxBoxesDetector(spec.weights, boxes_output=o.boxes_output, scores_output=o.scores_output,
                             labels_output=o.labels_output, box_format=o.box_format, normalized=o.normalized,
                             letterbox=o.letterbox, stride=o.stride or 32, **common)


def build_detector(spec: DetectorSpec, device: str = "auto", batch_size: int = 32):
    """The adapter of a detector spec. ``callable``: the factory's result (see :func:`_call_factory`); raises
    :class:`EntrypointError` when it cannot be imported, raises, or returns no detector. ``onnx``: an
    :class:`~detection.models.onnx_runtime.OnnxYoloDetector` or ``OnnxBoxesDetector``; raises FileNotFoundError /
    :class:`~detection.models.base.WeightsError` naming the file. Other kinds raise as their adapters do."""
    if spec.kind == "callable":
        return _call_factory(spec, device, batch_size, DETECTOR_INTERFACE,
                             "a detector such as detection.models.blackbox.CallableDetector(fn, class_names)")
    if spec.kind == "onnx":
        return _onnx_detector(spec, device, batch_size)
    if spec.kind == "yolo":
        from detection.models.yolo import YoloDetector

        return YoloDetector(spec.weights, imgsz=spec.imgsz, conf=spec.conf, iou=spec.iou, device=device,
                            batch_size=batch_size)
    from detection.models.torchvision_detector import TorchvisionDetector

    return TorchvisionDetector(spec.arch, spec.weights, num_classes=spec.num_classes or 91, score_thresh=spec.conf,
                               device=device, batch_size=batch_size)


def build_classifier(spec: ClassifierSpec, device: str = "auto", batch_size: int = 64):
    """The adapter of a classifier spec. ``callable``: the factory's result, whose ``class_names`` must equal the
    spec's ``classes`` when those are given; raises :class:`EntrypointError` otherwise (or as for detectors)."""
    from detection.models.classifier import ImageClassifier

    if spec.kind == "callable":
        clf = _call_factory(spec, device, batch_size, CLASSIFIER_INTERFACE,
                            "a classifier such as detection.models.classifier.ImageClassifier(module, class_names)")
        if spec.classes is not None and list(clf.class_names) != list(spec.classes):
            raise EntrypointError(f"{_label(spec)}: the classifier's classes {list(clf.class_names)} differ from "
                                  f"the spec's classes {list(spec.classes)}")
        return clf
    if spec.kind == "onnx":
        from detection.models.onnx_runtime import onnx_classifier

        o = spec.onnx or OnnxClassifierOptions()
        return onnx_classifier(spec.weights, classes=spec.classes, multi_label=spec.multi_label, returns=o.returns,
                               input_size=spec.input_size, layout=o.layout, input_name=o.input, output=o.output,
                               scale=o.scale, mean=o.mean, std=o.std, antialias=o.antialias, device=device,
                               batch_size=batch_size)
    if spec.kind == "saved":
        from detection.models.scene_classifier import load_classifier

        clf = load_classifier(spec.weights, device=device)
        clf.batch_size = batch_size
        return clf
    kw = dict(multi_label=spec.multi_label, input_size=spec.input_size, device=device, batch_size=batch_size)
    if spec.kind == "torchscript":
        return ImageClassifier.from_torchscript(spec.weights, spec.classes, **kw)
    build = ImageClassifier.from_torchvision if spec.kind == "torchvision" else ImageClassifier.from_timm
    return build(spec.arch, spec.weights, spec.classes, **kw)
