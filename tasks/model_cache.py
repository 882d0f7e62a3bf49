"""What the explain and evaluate tasks load, once per process: the device a task runs on, the audited detector and
classifier (cached per spec, device and chunk size), the scorers explainers and metrics query, and an image.

Scorers: ``DRiseScorer`` (D-RISE similarity to target boxes, Petsiuk et al. 2021, https://arxiv.org/abs/2006.03204)
and ``ClassifierScorer`` (class probabilities); both map images [B, 3, H, W] in [0, 1] to scores [B, T], one
column per target."""
from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from detection.datasets.imageio import ImageError, load_rgb, to_batch
from detection.datasets.records import error_row
from detection.models.specs import ClassifierSpec, DetectorSpec, build_classifier, build_detector
from detection.scorers import ClassifierScorer, DRiseScorer
from tasks.params import Params


def task_device(device: str) -> str:
    """``auto`` -> the GPU of this Dask worker (workers are numbered 0..n-1, one per GPU), cuda:0, or cpu."""
    if device != "auto" or not torch.cuda.is_available():
        return "cpu" if device == "auto" else device
    try:
        from distributed import get_worker

        name = get_worker().name
        index = int(name) if str(name).isdigit() else 0
    except (ImportError, ValueError):                  # not inside a Dask worker
        index = 0
    return f"cuda:{index % torch.cuda.device_count()}"


@functools.lru_cache(maxsize=4)
def detector_model(spec_json: str, device: str, chunk: int):
    """One model per (spec, device) and process, shared by every task the process runs."""
    return build_detector(DetectorSpec.model_validate_json(spec_json), device, chunk)


@functools.lru_cache(maxsize=4)
def classifier_model(spec_json: str, device: str, chunk: int):
    """One classifier per (spec, device) and process."""
    return build_classifier(ClassifierSpec.model_validate_json(spec_json), device, chunk)




def load_image(img: dict, stage: str, device: str, errors: list[dict]) -> torch.Tensor | None:
    """The image as a [3, H, W] float tensor on ``device``, or None with an ``errors`` row naming the file."""
    try:
        return to_batch([load_rgb(img["uri"])])[0].to(device)
    except ImageError as exc:
        errors.append(error_row(stage, img["uri"], exc.error_type, str(exc), img["image_id"]))
        return None


def detection_scorer(params: Params, device: str, targets: list[dict], detector=None) -> DRiseScorer:
    """D-RISE similarity of the audited detector (or ``detector``, e.g. a randomised copy of it) to the targets'
    boxes (GT persons: a one-hot person vector)."""
    spec = params.explain_detector()
    if detector is None:
        detector = detector_model(spec.model_dump_json(), device, params.explain.chunk_size)
    person = F.one_hot(torch.tensor(detector.class_names.index(spec.person_class)), detector.num_classes).tolist()
    probs = [t["class_probs"] if t.get("class_probs") is not None else person for t in targets]
    return DRiseScorer(detector, torch.tensor([t["bbox"] for t in targets]), torch.tensor(probs),
                       chunk_size=params.explain.chunk_size)


def classifier_scorer(params: Params, device: str, targets: list[dict], classifier=None) -> ClassifierScorer:
    """Probabilities of the targets' classes under the audited classifier (or ``classifier``, e.g. a randomised
    copy of it)."""
    clf = classifier if classifier is not None else classifier_model(params.infer.classifier.model_dump_json(),
                                                                       device, params.explain.chunk_size)
    return ClassifierScorer(clf, [clf.class_names.index(t["category"]) for t in targets],
                            chunk_size=params.explain.chunk_size)


def classifier_view(params: Params, device: str, image: torch.Tensor) -> torch.Tensor:
    """The image at the classifier's input size: explained there, the scorer skips its own resize."""
    clf = classifier_model(params.infer.classifier.model_dump_json(), device, params.explain.chunk_size)
    if clf.input_size is None or tuple(clf.input_size) == tuple(image.shape[-2:]):
        return image
    return F.interpolate(image[None], size=clf.input_size, mode="bilinear", align_corners=False)[0].contiguous()
