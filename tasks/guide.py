"""Tasks of the guide stage: fine-tune the audited scene classifier with model guidance (``explainers.guidance``,
``detection.models.guided_training``), then measure original vs guided on scenes neither was trained or audited on.

The stage's outputs are declared once, in ``tasks.guide_outputs`` (:class:`GuideOutputs`, re-exported here), with
the re-audit's params (``GuideOutputs.audit_params``).

Data (``GuideParams``' seeds): the fine-tune reads the training scenes (``models.train_data``, never audited); the
held-out measures render scenes in memory (``detection.guidance_data``) from seeds the pipeline uses nowhere else:
the paired spurious-cue probe (``probe``), the decorrelated set (``decorrelated``, cue independent of the label) and
an in-distribution set of the same generator as the audit (``heldout``, the cue as correlated as in ``pull``).
"""
from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from detection.datasets.imageio import load_rgb
from detection.evaluation import multilabel_f1
from detection.guidance_data import SceneSet, paired_probe, render_set, with_correlation
from detection.models.classifier import ImageClassifier, resize
from detection.models.guided_training import GuidanceTraining, guided_finetune
from detection.models.scene_classifier import load_classifier, save_classifier
from detection.models.specs import file_sha256
from detection.slices import mean_interval
from tasks.guide_outputs import GuideOutputs, guide, guided_spec
from tasks.infer import spurious_probe
from tasks.params import Params

MIN_PER_ARM = 200          # the floor for the probe's arms


def original_classifier(params: Params) -> ImageClassifier:
    """The audited classifier (``infer.classifier``) on the CPU. Raises ValueError unless it is a ``saved`` scene
    classifier (guidance fine-tunes a SceneNet: the weights must be trainable here)."""
    spec = params.infer.classifier
    if spec is None or spec.kind != "saved":
        raise ValueError(f"guide: infer.classifier must be a 'saved' scene classifier (SceneNet, as the demo's) to "
                         f"fine-tune, got {None if spec is None else spec.kind!r}")
    return load_classifier(spec.weights, device="cpu")


def training_config(params: Params, class_names: list[str] | None = None) -> GuidanceTraining:
    """The fine-tune's recipe from ``guide``; ``guide.classes`` mapped to indices of ``class_names``. Raises
    ValueError naming a class the classifier does not have."""
    g = params.guide
    classes = None
    if g.classes is not None:
        missing = [c for c in g.classes if c not in (class_names or [])]
        if missing:
            raise ValueError(f"guide.classes: {missing} not among the classifier's classes {class_names}")
        classes = tuple(class_names.index(c) for c in g.classes)
    return GuidanceTraining(loss=g.loss, attribution=g.attribution, layer=g.layer, lam=g.lam, fraction=g.fraction,
                            classes=classes, epochs=g.epochs, batch_size=g.batch_size, lr=g.lr,
                            max_grad_norm=g.max_grad_norm, time_limit_s=g.time_limit_s)


def load_training_set(params: Params, class_names: list[str], input_size: tuple[int, int] | None) -> SceneSet:
    """The training scenes (``models.train_data``'s tables; split ``train`` only) as a :class:`SceneSet`: uint8
    images at the classifier's input size, labels, cue flags, and every object's class and box (scaled with the
    image). Raises FileNotFoundError when the train_data stage has not run, ValueError when no image is left."""
    from tasks import stages

    data = stages.train_data(params).dataset()
    images = data.images.filter(pc.equal(data.images["split"], "train")).to_pylist()
    if not images:
        raise ValueError(f"guide: no 'train' image in {params.models.train_data.out_dir}")
    index = {c: i for i, c in enumerate(class_names)}
    by_image: dict[str, list[dict]] = {}
    for a in data.annotations.select(["image_id", "category", "bbox", "iscrowd"]).to_pylist():
        if a["category"] in index and not a["iscrowd"]:
            by_image.setdefault(a["image_id"], []).append(a)
    tensors, boxes = [], []
    for img in images:
        x = torch.from_numpy(np.ascontiguousarray(load_rgb(img["uri"]).transpose(2, 0, 1)))
        sy = sx = 1.0
        if input_size is not None and tuple(x.shape[-2:]) != tuple(input_size):
            sy, sx = input_size[0] / x.shape[1], input_size[1] / x.shape[2]
            x = resize(x[None].float(), input_size).round().clamp(0, 255).to(torch.uint8)[0]
        tensors.append(x)
        anns = by_image.get(img["image_id"], [])
        b = np.array([a["bbox"] for a in anns], np.float32).reshape(-1, 4) * np.float32([sx, sy, sx, sy])
        boxes.append((np.array([index[a["category"]] for a in anns], np.int64), b))
    labels = torch.tensor([[c in (img["labels"] or []) for c in class_names] for img in images], dtype=torch.bool)
    return SceneSet(torch.stack(tensors), labels, np.array([bool(i["spurious_cue"]) for i in images]), boxes,
                    [i["image_id"] for i in images], [list(i["labels"] or []) for i in images], list(class_names))


def training_data_record(params: Params) -> dict:
    """What the fine-tune's training scenes are made of (``models.train_data`` and the generator, ``pull.synthetic``
    without its image count, and the seed): stored with a guided model so that a copy can be refused when they
    change."""
    generator = params.pull.synthetic.model_dump(mode="json", exclude={"n_images"})
    return {"seed": params.seed, "n_images": params.models.train_data.n_images,
            "seed_offset": params.models.train_data.seed_offset, "generator": generator}


def check_given_guided(params: Params, src: Path) -> dict | None:
    """Check ``guide.weights`` before the stage copies it instead of fine-tuning; returns the training record its
    weights manifest lists (``weights/demo/manifest.json`` for the shipped demo file), or None without a manifest.

    A copied guided model is a learned component: it must be the fine-tune of *this* ``infer.classifier`` with
    *this* recipe, or the re-audit would report on another model than the params describe. Raises
    FileNotFoundError (file or sidecar missing), ``tasks.shipped_weights.WeightsMismatchError`` (bytes differ from
    the manifest) and ValueError when the manifest's record was fine-tuned from other classifier weights (both
    SHA-256 named), with another recipe (the differing ``guide`` keys named) or on other training scenes -- set
    ``guide.weights: null`` to fine-tune instead."""
    from tasks.shipped_weights import manifest_entry, verify_given

    verify_given(src, "guide.weights")
    if not src.with_suffix(".json").is_file():
        raise FileNotFoundError(f"params guide.weights: {src.with_suffix('.json')} (the sidecar) not found")
    record = (manifest_entry(src) or {}).get("training")
    if record is None:
        return None
    original = file_sha256(params.infer.classifier.weights)
    if record.get("from_sha256") != original:
        raise ValueError(f"params guide.weights: {src} was fine-tuned from classifier weights with SHA-256 "
                         f"{str(record.get('from_sha256'))[:12]}…, but infer.classifier "
                         f"({params.infer.classifier.weights}) has {original[:12]}…: set guide.weights: null to "
                         f"fine-tune this classifier")
    sidecar = Path(params.infer.classifier.weights).with_suffix(".json")
    if not sidecar.is_file():
        raise FileNotFoundError(f"params guide.weights: infer.classifier's sidecar {sidecar} not found (guide needs a "
                                f"'saved' scene classifier)")
    clf_classes = json.loads(sidecar.read_text())["classes"]
    recipe = {k: v for k, v in asdict(training_config(params, clf_classes)).items() if k != "progress"}
    trained = {k: (tuple(v) if isinstance(v, list) else v) for k, v in record.get("config", {}).items()}
    differ = sorted(k for k in recipe if trained.get(k) != recipe[k]) + \
        (["seed"] if record.get("seed") != params.guide.seed else []) + \
        (["training scenes (models.train_data, pull.synthetic, seed)"]
         if record.get("train_data") != training_data_record(params) else [])
    if differ:
        raise ValueError(f"params guide.weights: {src} was fine-tuned with another recipe ({', '.join(differ)} differ"
                         f" from params guide): set guide.weights: null to fine-tune with these params")
    return record


def train_guided(params: Params, out: GuideOutputs, progress: bool = True) -> dict:
    """Fine-tune (or, with ``guide.weights``, copy) the guided classifier to ``out.model``; returns the training
    record (also written to ``out.training``; its ``seconds`` only in the return value: wall times stay out of the
    hashed outputs). Raises ValueError / FileNotFoundError naming the key at fault."""
    g = params.guide
    out.model.parent.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    if g.weights is not None:
        src = Path(g.weights)
        shipped = check_given_guided(params, src)
        shutil.copyfile(src, out.model)
        shutil.copyfile(src.with_suffix(".json"), out.sidecar)
        record = {"source": "copied", "weights": str(src), "sha256": file_sha256(out.model)}
        if shipped is not None:
            record["trained"] = shipped
    else:
        clf = original_classifier(params)
        data = load_training_set(params, clf.class_names, clf.input_size)
        cfg = training_config(params, clf.class_names)
        cfg.progress = progress
        guided, hist = guided_finetune(clf, data.images, data.labels, data.boxes, cfg, seed=g.seed)
        save_classifier(guided, out.model)
        seconds = hist.seconds
        record = {"source": "trained", "from": params.infer.classifier.weights,
                  "from_sha256": file_sha256(params.infer.classifier.weights), "sha256": file_sha256(out.model),
                  "train_images": len(data), "train_data": training_data_record(params),
                  "annotated_images": hist.annotated_images,
                  "config": {k: v for k, v in asdict(cfg).items() if k != "progress"}, "seed": g.seed,
                  "epochs_run": len(hist.bce), "bce": [round(v, 5) for v in hist.bce],
                  "loc": [round(v, 5) for v in hist.loc]}
    out.training.parent.mkdir(parents=True, exist_ok=True)
    out.training.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    return {**record, "seconds": round(seconds, 1)}


# ------------------------------------------------------------------------------------------ held-out measures
def _probs(clf: ImageClassifier, scenes: SceneSet) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([clf.classify(scenes.images[s:s + 64].float().div_(255)).cpu().numpy()
                               for s in range(0, len(scenes), 64)]) if len(scenes) else np.zeros((0, 0))


def _interval(values: np.ndarray, seed: int) -> dict:
    lo, hi = mean_interval(np.asarray(values, float), rng=seed)
    return {"mean": float(np.mean(values)) if len(values) else None, "low": lo, "high": hi, "n": int(len(values))}


def probe_measures(clf: ImageClassifier, with_cue: SceneSet, without: SceneSet, label: str, seed: int) -> dict:
    """The spurious-cue probe (``tasks.infer.spurious_probe``: mean P(label) on scenes without the label, with vs
    without the cue) over the paired arms, each mean with a bootstrap BCa 95 % interval
    (``detection.slices.mean_interval``), and the paired difference (cue − no cue, same scenes) with its interval."""
    c = clf.class_names.index(label)
    p_cue, p_none = _probs(clf, with_cue)[:, c], _probs(clf, without)[:, c]
    probs = {i: {label: float(p)} for i, p in zip([*with_cue.ids, *without.ids], [*p_cue, *p_none])}
    point = spurious_probe([*with_cue.rows(), *without.rows()], probs, label)
    return {**point, "with_cue": _interval(p_cue, seed), "without_cue": _interval(p_none, seed + 1),
            "difference": _interval(p_cue - p_none, seed + 2)}


def f1_measures(clf: ImageClassifier, scenes: SceneSet) -> dict:
    """Mean and per-class F1 at 0.5 (``detection.evaluation.multilabel_f1``) on ``scenes``."""
    f1 = multilabel_f1(_probs(clf, scenes), scenes.labels.numpy())
    return {"mean_f1": float(f1.mean()), "f1": {c: float(v) for c, v in zip(clf.class_names, f1)},
            "images": len(scenes)}


def heldout_sets(params: Params, class_names: list[str]) -> dict[str, SceneSet | tuple[SceneSet, SceneSet]]:
    """The held-out scene sets of ``guide`` (module docstring). Raises ValueError for a non-synthetic source or a
    probe arm under :data:`MIN_PER_ARM` scenes."""
    if params.pull.source != "synthetic" or params.pull.synthetic.spurious is None:
        raise ValueError("guide: the held-out probe and decorrelated set need pull.source synthetic with "
                         "pull.synthetic.spurious set")
    g, cfg = params.guide, params.pull.synthetic
    seeds = {params.seed, params.seed + params.models.train_data.seed_offset}
    used = [s for s in (g.probe.seed, g.decorrelated.seed, g.heldout.seed) if s in seeds]
    if used:
        raise ValueError(f"guide: held-out seeds {used} are the audit's or the training scenes' seed {sorted(seeds)}")
    probe = paired_probe(cfg, g.probe.seed, range(g.probe.n_scenes), class_names)
    if len(probe[0]) < MIN_PER_ARM:
        raise ValueError(f"guide.probe.n_scenes {g.probe.n_scenes} gave {len(probe[0])} scenes without "
                         f"{cfg.spurious.label!r} per arm: at least {MIN_PER_ARM} needed, raise n_scenes")
    sets: dict = {"probe": probe}
    for name in ("decorrelated", "heldout"):
        spec = getattr(g, name)
        gen = cfg if spec.correlation is None else with_correlation(cfg, spec.correlation)
        sets[name] = render_set(gen, spec.seed, range(spec.n_images), class_names, name)
    return sets


def heldout_measures(params: Params, models: dict[str, ImageClassifier]) -> tuple[dict, pa.Table]:
    """For each model (id -> classifier): the cue probe with intervals, F1 in-distribution (``heldout``) and on the
    decorrelated set, and the cue label's F1 gap (decorrelated − in-distribution). Also the per-image probabilities as
    a table (set, model_id, image_id, category, score, label)."""
    first = next(iter(models.values()))
    sets = heldout_sets(params, first.class_names)
    label = params.pull.synthetic.spurious.label
    out, rows = {}, []
    for model_id, clf in models.items():
        dec, ind = f1_measures(clf, sets["decorrelated"]), f1_measures(clf, sets["heldout"])
        out[model_id] = {"probe": probe_measures(clf, *sets["probe"], label, params.guide.seed),
                         "in_distribution": ind, "decorrelated": dec,
                         f"{label}_f1_gap": dec["f1"][label] - ind["f1"][label]}
        for name, scenes in (("probe", sets["probe"][0]), ("probe", sets["probe"][1]),
                             ("decorrelated", sets["decorrelated"]), ("heldout", sets["heldout"])):
            p = _probs(clf, scenes)
            for n, image_id in enumerate(scenes.ids):
                rows.extend({"set": name, "model_id": model_id, "image_id": image_id, "category": c,
                             "score": float(p[n, k]), "label": bool(scenes.labels[n, k]),
                             "spurious_cue": bool(scenes.spurious[n])} for k, c in enumerate(clf.class_names))
    counts = {"probe_scenes_per_arm": len(sets["probe"][0]), "decorrelated_images": len(sets["decorrelated"]),
              "heldout_images": len(sets["heldout"])}
    return {"sets": counts, "models": out}, pa.Table.from_pylist(rows)


def rise_epg(metrics: pa.Table, targets: pa.Table, label: str, jobs: list[str]) -> dict:
    """Mean EPG of the classes jobs' saliency inside the boxes of ``label``'s objects (``epg_box`` of the evaluate
    stage, images where the label is present), with a bootstrap interval, per job; and the chance level."""
    t = targets.select(["image_id", "target_id", "category"]).to_pandas()
    m = metrics.to_pandas()
    m = m[m["job"].isin(jobs) & m["metric"].isin(["epg_box", "epg_box_chance"])].merge(
        t, on=["image_id", "target_id"])
    m = m[m["category"] == label]
    out = {}
    for job in jobs:
        v = m[(m["job"] == job) & (m["metric"] == "epg_box")]["value"].to_numpy(float)
        chance = m[(m["job"] == job) & (m["metric"] == "epg_box_chance")]["value"].to_numpy(float)
        out[job] = {**_interval(v[np.isfinite(v)], 0), "chance": float(np.nanmean(chance)) if len(chance) else None}
    return out


__all__ = ["GuideOutputs", "MIN_PER_ARM", "check_given_guided", "guide", "guided_spec", "heldout_measures",
           "load_training_set", "original_classifier", "probe_measures", "rise_epg", "train_guided", "training_config"]
