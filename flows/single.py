"""``xai-audit explain IMAGE --model ...``: explain one image with one method and write the overlay (no Prefect,
no DVC: the same library calls a notebook would make)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detection.datasets.imageio import load_rgb, to_batch
from detection.models.specs import DetectorSpec, build_classifier, build_detector
from detection.scorers import ClassifierScorer, DRiseScorer
from explainers.regions import grid_regions, superpixels
from explainers.registry import METHODS, unknown_method, without_detections
from tasks.params import load_params


def _model(model: str | None, params_file: str):
    """(kind, adapter): a model id from params (detectors, classifier) or a YOLO weights path (.pt / .yaml)."""
    params = load_params(params_file, check_files=False)
    if model is None:
        model = params.explain_detector().id
    for spec in params.infer.detectors:
        if spec.id == model:
            return "detector", build_detector(spec), spec.conf
    if params.infer.classifier is not None and params.infer.classifier.id == model:
        return "classifier", build_classifier(params.infer.classifier), None
    if Path(model).suffix in (".pt", ".yaml", ".yml"):
        spec = DetectorSpec(id=Path(model).stem, weights=model)
        return "detector", build_detector(spec), spec.conf
    ids = [d.id for d in params.infer.detectors] + ([params.infer.classifier.id] if params.infer.classifier else [])
    raise FileNotFoundError(f"--model {model!r}: not a model id of {params_file} ({ids}) nor a .pt/.yaml file")


def explain_file(image_path: str, model: str | None = None, method: str = "drise", budget: int | None = None,
                 regions: str = "none", n_regions: int = 24, out: str | None = None, seed: int = 0,
                 params_file: str = "params.yaml") -> dict:
    """Explain every detection above the model's threshold (or every class of a classifier) and save one overlay
    panel per target. A method that ``needs_detections`` (drise) runs as its classifier counterpart (rise) on a
    classifier. Raises ValueError for an unknown or renamed method, or one no classifier can run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if method not in METHODS:
        raise ValueError(f"--method: {unknown_method(method)}")
    rgb = load_rgb(image_path)
    kind, adapter, conf = _model(model, params_file)
    image = to_batch([rgb])[0].to(adapter.device)
    if kind == "detector":
        det = adapter.detect(image[None])[0]
        keep = det.scores >= conf
        if not bool(keep.any()):
            return {"image": image_path, "targets": [], "message": "no detection above the threshold"}
        index = torch.nonzero(keep)[:, 0].tolist()
        scorer = DRiseScorer.for_detections(adapter, det, index)
        labels = [f"{adapter.class_names[int(det.labels[i])]} {float(det.scores[i]):.2f}" for i in index]
        boxes = det.boxes[index].cpu().tolist()
        view = image
    else:
        if without_detections(method) is None:
            raise ValueError(f"--method {method!r} explains detections; --model {model!r} is a classifier")
        method = without_detections(method)
        scorer = ClassifierScorer(adapter)
        probs = adapter.classify(image[None])[0].cpu().tolist()
        labels = [f"{c} {p:.2f}" for c, p in zip(adapter.class_names, probs)]
        boxes = [None] * len(labels)
        view = image if adapter.input_size is None else F.interpolate(
            image[None], size=adapter.input_size, mode="bilinear", align_corners=False)[0]
    masks = None
    if regions == "superpixels":
        masks = superpixels(view, n_regions)
    elif regions == "grid":
        rows = max(1, round((n_regions * view.shape[1] / view.shape[2]) ** 0.5))
        masks = grid_regions(view.shape[1], view.shape[2], rows, max(1, round(n_regions / rows)), view.device)
    exp = METHODS[method](scorer).explain(view, masks, budget=budget, seed=seed)
    sal = F.interpolate(exp.saliency[:, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[:, 0]
    n = len(labels)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2 * rgb.shape[0] / rgb.shape[1] + 0.4), squeeze=False)
    for ax, s, label, box in zip(axes[0], sal.numpy(), labels, boxes):
        ax.imshow(rgb)
        pos = np.clip(s, 0, None)
        ax.imshow(pos / (pos.max() or 1.0), cmap="jet", alpha=0.45)
        if box is not None:
            ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, color="w"))
        ax.set_title(label, fontsize=8)
        ax.set_axis_off()
    out = out or str(Path(image_path).with_name(f"{Path(image_path).stem}_{method}.png"))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return {"image": image_path, "model": kind, "method": method, "overlay": out, "targets": labels,
            "n_forward": exp.n_forward, "seconds": round(exp.seconds, 3),
            "relevance": None if exp.relevance is None else exp.relevance.tolist()}
