"""``xai-audit explain IMAGE --model ...``: explain one image with one method and write the overlay (no Prefect,
no DVC: the same library calls a notebook would make).

``--regions parts`` explains each pedestrian (person detection above the model's threshold) over its body parts,
placed as the parts stage places them (``parts.grouping`` / ``parts.context`` of params): from the keypoints of the
configured pose model (``infer.pose``, with its top-down ``keypoints`` model when it has one) when a pose detection
matches the box, else from the standing template stretched over the box. There is no ground truth for one image,
so the parts stage's first source (GT keypoints) never applies. Which source each pedestrian's parts came from is
printed and returned (``keypoints``)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from detection.datasets.imageio import load_rgb, to_batch
from detection.evaluation import iou_matrix
from detection.models.specs import DetectorSpec, build_classifier, build_detector
from detection.parts import Keypoints, body_parts
from detection.scorers import ClassifierScorer, DRiseScorer
from explainers.regions import grid_regions, superpixels
from explainers.registry import METHODS, unknown_method, without_detections
from tasks.params import Params, PartsParams, load_params


def _model(model: str | None, params: Params, params_file: str):
    """(kind, adapter, spec): a model id from params (detectors, classifier) or a YOLO weights path (.pt / .yaml)."""
    if model is None:
        model = params.explain_detector().id
    for spec in params.infer.detectors:
        if spec.id == model:
            return "detector", build_detector(spec), spec
    if params.infer.classifier is not None and params.infer.classifier.id == model:
        return "classifier", build_classifier(params.infer.classifier), params.infer.classifier
    if Path(model).suffix in (".pt", ".yaml", ".yml"):
        spec = DetectorSpec(id=Path(model).stem, weights=model)
        return "detector", build_detector(spec), spec
    ids = [d.id for d in params.infer.detectors] + ([params.infer.classifier.id] if params.infer.classifier else [])
    raise FileNotFoundError(f"--model {model!r}: not a model id of {params_file} ({ids}) nor a .pt/.yaml file")


def _save_overlay(rgb: np.ndarray, saliency: np.ndarray, titles: list[str], boxes: list, out: str) -> str:
    """One panel per target: the image under its positive saliency [T, H, W] (normalised per panel), box in white."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(titles)
    fig, axes = plt.subplots(1, n, figsize=(3.2 * n, 3.2 * rgb.shape[0] / rgb.shape[1] + 0.4), squeeze=False)
    for ax, s, title, box in zip(axes[0], saliency, titles, boxes):
        ax.imshow(rgb)
        pos = np.clip(s, 0, None)
        ax.imshow(pos / (pos.max() or 1.0), cmap="jet", alpha=0.45)
        if box is not None:
            ax.add_patch(plt.Rectangle((box[0], box[1]), box[2] - box[0], box[3] - box[1], fill=False, color="w"))
        ax.set_title(title, fontsize=8)
        ax.set_axis_off()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def explain_file(image_path: str, model: str | None = None, method: str = "drise", budget: int | None = None,
                 regions: str = "none", n_regions: int = 24, out: str | None = None, seed: int = 0,
                 params_file: str = "params.yaml") -> dict:
    """Explain every detection above the model's threshold (or every class of a classifier) and save one overlay
    panel per target. A method that ``needs_detections`` (drise) runs as its classifier counterpart (rise) on a
    classifier. ``regions='parts'``: every pedestrian over its body parts (:func:`explain_parts`). Raises ValueError
    for an unknown or renamed method, a learned one (``needs_trained_weights``: its trained file, e.g. RExL's
    policy, is an explain job's option, checked against the job's model there), one no classifier can run, or parts
    asked of a classifier; before reading the params, the image or the model."""
    if method not in METHODS:
        raise ValueError(f"--method: {unknown_method(method)}")
    if METHODS[method].needs_trained_weights:
        cls = METHODS[method]
        raise ValueError(f"--method {method}: a learned explainer needs its trained file (option "
                         f"{cls.trained_file_option!r}: {cls.trained_file_hint}); run it as an explain job")
    params = load_params(params_file, check_files=False)
    rgb = load_rgb(image_path)
    kind, adapter, spec = _model(model, params, params_file)
    image = to_batch([rgb])[0].to(adapter.device)
    out = out or str(Path(image_path).with_name(f"{Path(image_path).stem}_{method}.png"))
    if regions == "parts":
        if kind != "detector":
            raise ValueError(f"--regions parts: body parts are pedestrians' and need a detector; --model "
                             f"{spec.id!r} is a classifier")
        return explain_parts(image_path, rgb, image, adapter, spec, params, method, budget, seed, out)
    if kind == "detector":
        det = adapter.detect(image[None])[0]
        keep = det.scores >= spec.conf
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
    _save_overlay(rgb, sal.cpu().numpy(), labels, boxes, out)
    return {"image": image_path, "model": kind, "method": method, "overlay": out, "targets": labels,
            "n_forward": exp.n_forward, "seconds": round(exp.seconds, 3),
            "relevance": None if exp.relevance is None else exp.relevance.tolist()}


# ---------------------------------------------------------------------------------------------------- body parts
def pose_detections(params: Params, image: torch.Tensor) -> tuple[list[dict], str]:
    """The configured pose model's person detections on ``image`` [3, H, W] as ``[{"bbox", "keypoints"}]`` (flat
    [x, y, confidence] x 17; placed by its top-down keypoint model when the spec names one, as infer does), and a
    sentence saying where they came from. No pose model, or one whose weights / keypoint file is missing: no
    detections, and the sentence says why (every pedestrian then gets the template)."""
    pose = params.infer.pose
    if pose is None:
        return [], "no pose model in infer.pose"
    files = [f for f in (pose.weights, pose.keypoints) if f and Path(f).suffix not in (".yaml", ".yml")]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        return [], f"pose model {pose.id!r}: {missing[0]} not found"
    model = build_detector(pose, device=str(image.device))
    det = model.detect(image[None])[0].to("cpu")
    person = model.class_names.index(pose.person_class) if pose.person_class in model.class_names else -1
    keep = (det.scores >= pose.conf) & (det.labels == person)
    boxes = det.boxes[keep]
    if pose.keypoints:
        from detection.models.keypoints import load_keypoint_model

        kps = load_keypoint_model(pose.keypoints, device=str(image.device)).predict(
            image[None], boxes, torch.zeros(len(boxes), dtype=torch.long)).cpu() if len(boxes) else None
        how = f"pose model {pose.id!r} with keypoints from {pose.keypoints}"
    else:
        kps = det.keypoints[keep] if det.keypoints is not None else None
        how = f"pose model {pose.id!r}"
    if not len(boxes):
        return [], f"{how}: no person found"
    if kps is None:
        return [], f"{how}: it gives no keypoints"
    rows = [{"bbox": b, "keypoints": k} for b, k in zip(boxes.tolist(), kps.reshape(len(boxes), -1).tolist())]
    return rows, f"{how}: {len(rows)} person{'s' * (len(rows) != 1)} found"


def choose_keypoints(box, pose: list[dict], cfg: PartsParams) -> tuple[Keypoints, str]:
    """The parts stage's rule without ground truth (``tasks.parts.choose_keypoints``): the pose detection that best
    matches ``box`` (IoU >= ``match_iou``) if it has at least ``min_keypoints`` keypoints of confidence >=
    ``keypoint_conf``, else the template stretched over the box. Returns (keypoints, 'pose' | 'template')."""
    if pose:
        ious = iou_matrix(np.asarray(box, float)[None], np.array([p["bbox"] for p in pose], float))[0]
        best = int(np.argmax(ious))
        if ious[best] >= cfg.match_iou and pose[best]["keypoints"] is not None:
            kps = Keypoints.from_pose(pose[best]["keypoints"], cfg.keypoint_conf)
            if kps.count >= cfg.min_keypoints:
                return kps, "pose"
    return Keypoints.template(box), "template"


def part_table(pedestrian: dict) -> str:
    """A pedestrian's per-part relevance as text: part, relevance, share of sum |relevance|, visible."""
    lines = [f"{pedestrian['target']}  box {[round(v) for v in pedestrian['box']]}  keypoints: "
             f"{pedestrian['keypoints']}  top part: {pedestrian['top_part']}",
             f"  {'part':<16}{'relevance':>11}{'share':>8}  visible"]
    for name, value in pedestrian["relevance"].items():
        lines.append(f"  {name:<16}{value:>11.4f}{pedestrian['share'][name]:>8.2f}  "
                     f"{'yes' if pedestrian['visible'][name] else 'no'}")
    return "\n".join(lines)


def explain_parts(image_path: str, rgb: np.ndarray, image: torch.Tensor, adapter, spec: DetectorSpec,
                  params: Params, method: str, budget: int | None, seed: int, out: str) -> dict:
    """Every person detection above ``spec.conf`` explained over its body parts (``params.parts`` grouping and
    context). A method that plays on regions (``accepts_regions``: Shapley values, occlusion, LIME, DE-CAM) runs one
    game per pedestrian on its non-empty parts; a pixel method (D-RISE) explains all pedestrians with one set of
    forwards and a part's relevance is the saliency summed over it, as in the explain stage. Prints the keypoint
    source and a per-part table per pedestrian to stderr; returns them (``pedestrians``) with the overlay's path."""
    cfg = params.parts
    det = adapter.detect(image[None])[0]
    if spec.person_class not in adapter.class_names:
        raise ValueError(f"--regions parts: the model's classes {adapter.class_names} have no {spec.person_class!r} "
                         f"(person_class of {spec.id!r})")
    keep = (det.scores >= spec.conf) & (det.labels == adapter.class_names.index(spec.person_class))
    pose, pose_note = pose_detections(params, image)
    print(f"keypoints: {pose_note}; parts: {cfg.grouping}{' + context' if cfg.context else ''}", file=sys.stderr)
    base = {"image": image_path, "model": "detector", "method": method, "regions": "parts",
            "keypoint_model": pose_note, "grouping": cfg.grouping}
    if not bool(keep.any()):
        return {**base, "targets": [], "pedestrians": [], "message": "no person detection above the threshold"}
    index = torch.nonzero(keep)[:, 0].tolist()
    H, W = rgb.shape[:2]
    people = []
    for i in index:
        box = det.boxes[i].tolist()
        kps, source = choose_keypoints(box, pose, cfg)
        parts = body_parts(kps, box, (H, W), source).grouped(cfg.grouping, cfg.context)
        nonempty = parts.areas > 0
        people.append({"index": i, "box": box, "source": source,
                       "names": [n for n, k in zip(parts.names, nonempty) if k],
                       "visible": parts.visible[nonempty].tolist(),
                       "masks": torch.from_numpy(parts.full()[nonempty]).to(image.device)})
    explainer = METHODS[method]
    saliency, relevance, forwards, seconds = [], [], 0, 0.0
    if explainer.accepts_regions:
        for p in people:
            exp = explainer(DRiseScorer.for_detections(adapter, det, [p["index"]])).explain(
                image, p["masks"], budget=budget, seed=seed)
            saliency.append(exp.saliency[0])
            relevance.append(exp.relevance[0])
            forwards, seconds = forwards + exp.n_forward, seconds + exp.seconds
    else:
        exp = explainer(DRiseScorer.for_detections(adapter, det, index)).explain(image, None, budget=budget, seed=seed)
        saliency = list(exp.saliency)
        relevance = [p["masks"].reshape(len(p["names"]), -1).float() @ s.reshape(-1).float()
                     for p, s in zip(people, saliency)]
        forwards, seconds = exp.n_forward, exp.seconds
    pedestrians = []
    for p, rel in zip(people, relevance):
        rel = rel.cpu().double().numpy()
        total = float(np.abs(rel).sum()) or 1.0
        body = [k for k, n in enumerate(p["names"]) if n != "context"]
        pedestrians.append({
            "target": f"{spec.person_class} {float(det.scores[p['index']]):.2f}", "box": p["box"],
            "score": float(det.scores[p["index"]]), "keypoints": p["source"],
            "relevance": dict(zip(p["names"], rel.tolist())),
            "share": {n: float(v / total) for n, v in zip(p["names"], rel)},
            "visible": dict(zip(p["names"], p["visible"])),
            "top_part": p["names"][body[int(np.argmax(rel[body]))]] if body else None})
    for ped in pedestrians:
        print(part_table(ped), file=sys.stderr)
    sal = torch.stack(saliency)[:, None].float()
    sal = F.interpolate(sal, size=(H, W), mode="bilinear", align_corners=False)[:, 0].cpu().numpy() \
        if sal.shape[-2:] != (H, W) else sal[:, 0].cpu().numpy()
    titles = [f"{p['target']} · {p['keypoints']} · top: {p['top_part']}" for p in pedestrians]
    _save_overlay(rgb, sal, titles, [p["box"] for p in pedestrians], out)
    return {**base, "overlay": out, "targets": [p["target"] for p in pedestrians], "pedestrians": pedestrians,
            "keypoint_sources": {s: sum(p["keypoints"] == s for p in pedestrians) for s in ("pose", "template")},
            "n_forward": forwards, "seconds": round(seconds, 3)}
