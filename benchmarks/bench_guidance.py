"""Model guidance on the demo scene classifier (issue 22; Rao et al., ICCV 2023, https://arxiv.org/abs/2303.11932):
does BCE + λ · energy loss, with boxes for a fraction of the training scenes, stop the classifier reading the
spurious background cue, and at what cost in F1?

Every run fine-tunes the shipped classifier (``weights/demo/classifier.pt``) on the 960 training scenes
(``data/train``: the training generator, seed + 1, indices 0-959) with :func:`detection.models.guided_training.
guided_finetune` — exactly what the guide stage runs — and measures:

* **tuning data** (where λ, epochs, lr and the attribution layer were chosen): scenes of the *training generator*
  beyond the training indices, never trained on: the paired cue probe on indices 960-1659 and F1 on indices
  2000-2399 (``--tune-only`` stops there);
* **reported data** (held-out seeds nothing used): the paired cue probe (seed 9002, scenes 0-799, about 260 scenes
  without a bicycle per arm, each rendered with and without the tint), in-distribution F1 (seed 9003, 400 scenes,
  cue correlation 0.9 as in the audit), decorrelated F1 (seed 9001, 400 scenes, correlation 0.5), the audited val
  split (data/pulled, 54 images: the infer stage's F1) and RISE EPG inside bicycle boxes (the pipeline's RISE job
  settings: 256 masks, centred; the first ``--rise-images`` in-distribution held-out scenes with a bicycle) — for
  the original and every fine-tuned model.

``--reference`` also trains the **cue-free reference** (:func:`cue_free_reference`): the models stage's own recipe on
the same training scenes re-rendered with the cue independent of the label -- what a perfectly guided model would be
at best, measured like the runs, so that the targets can be read against what this classifier can reach without the
cue at all. ``--recalibrate`` also measures every model with its four head biases re-fitted on the training scenes
(:func:`recalibrated`): a bias is in no attribution map, so this separates what a fine-tune did to the ranking from
what it did to the scores' level (F1 at 0.5 and the probe's means read both; the average precision columns only the
ranking).

Targets (issue 22, 10 % of boxes, <= 10 min of CPU fine-tuning): probe P(bicycle | no bicycle, tint) <= 0.30 (from
~0.9), the no-tint arm <= 0.15, in-distribution val mean F1 >= 0.88, decorrelated bicycle F1 within 0.03 of its
in-distribution value, RISE EPG in bicycle boxes up by >= 0.10. The fine-tuning time is wall time on the shared
2-core VM (``loadavg`` in the JSON says how shared).

    python benchmarks/bench_guidance.py [--runs none|main|lambda|fraction|all|pairs] [--lam 5] [--fraction 0.1]
                                        [--epochs 3] [--lams 1 3 5] [--fractions 0.01 1] [--layer features.4]
                                        [--clip 1] [--threads 2] [--rise-images 60] [--reference [SEED ...]]
                                        [--recalibrate] [--out benchmarks/results/guidance.json]
"""
from __future__ import annotations

import argparse
import json
import time

import flows  # noqa: F401  (environment defaults)

import numpy as np
import torch

from bench_models import write_results
from detection.datasets.imageio import load_rgb
from detection.evaluation import multilabel_f1
from detection.guidance_data import SceneSet, paired_probe, render_set, with_correlation
from detection.models.guided_training import GuidanceTraining, guided_finetune
from detection.models.scene_classifier import load_classifier
from detection.scorers import ClassifierScorer
from explainers.metrics import box_masks, energy_pointing_game
from explainers.rise import Rise
from tasks.guide import load_training_set
from tasks.params import load_params

LABEL = "bicycle"
TUNE_PROBE, TUNE_VAL = range(960, 1660), range(2000, 2400)          # training generator, beyond its 960 scenes
PROBE_SEED, INDIST_SEED, DECOR_SEED = 9002, 9003, 9001
TARGETS = {"probe_with_cue_max": 0.30, "probe_without_cue_max": 0.15, "val_mean_f1_min": 0.88,
           "decorrelated_gap_max": 0.03, "rise_epg_gain_min": 0.10, "minutes_max": 10.0}
MAIN = {"lam": 5.0, "fraction": 0.1}


def probs(clf, scenes: SceneSet) -> np.ndarray:
    with torch.inference_mode():
        return np.concatenate([clf.classify(scenes.images[s:s + 64].float() / 255).numpy()
                               for s in range(0, len(scenes), 64)])


def probe(clf, arms: tuple[SceneSet, SceneSet]) -> dict:
    c = clf.class_names.index(LABEL)
    a, b = probs(clf, arms[0])[:, c], probs(clf, arms[1])[:, c]
    from detection.slices import mean_interval

    return {"with_cue": float(a.mean()), "with_cue_ci": list(mean_interval(a, rng=0)),
            "without_cue": float(b.mean()), "without_cue_ci": list(mean_interval(b, rng=1)),
            "difference": float((a - b).mean()), "difference_ci": list(mean_interval(a - b, rng=2)),
            "per_arm": int(len(a))}


def f1(clf, scenes: SceneSet) -> dict:
    """Mean and per-class F1 at 0.5, and per-class average precision (threshold-free: tells a ranking that got worse
    from scores that only moved)."""
    from sklearn.metrics import average_precision_score

    p, y = probs(clf, scenes), scenes.labels.numpy()
    v = multilabel_f1(p, y)
    return {"mean_f1": float(v.mean()), "f1": {c: float(x) for c, x in zip(clf.class_names, v)},
            "ap": {c: float(average_precision_score(y[:, k], p[:, k])) for k, c in enumerate(clf.class_names)}}


def recalibrated(clf, train: SceneSet):
    """A copy of ``clf`` whose head biases (one per class, nothing else) are re-fitted with BCE on the training scenes
    (L-BFGS, features frozen). A bias is not part of any attribution map the guidance trained on (IxG / Grad-CAM of a
    logit ignore it), so this moves only the scores' level: it separates what a fine-tune did to the ranking from
    what it did to calibration."""
    from detection.models.guided_training import classifier_like, scene_net_from

    net = scene_net_from(clf).eval()
    with torch.no_grad():
        feats = torch.cat([net.features(train.images[s:s + 64].float() / 255).mean((2, 3))
                           for s in range(0, len(train), 64)])
    y = train.labels.float()
    bias = net.head.bias.detach().clone().requires_grad_(True)
    opt = torch.optim.LBFGS([bias], max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            torch.nn.functional.linear(feats, net.head.weight.detach(), bias), y)
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        net.head.bias.copy_(bias)
    return classifier_like(net, clf)


def rise_epg(clf, scenes: SceneSet, n: int) -> dict:
    """RISE (256 masks, centred, as the pipeline's classes job) EPG inside the bicycle boxes of the first ``n`` scenes
    with a bicycle."""
    c = clf.class_names.index(LABEL)
    scorer = ClassifierScorer(clf, [c])
    values = []
    for k in [k for k in range(len(scenes)) if scenes.labels[k, c]][:n]:
        image = scenes.images[k].float() / 255
        sal = Rise(scorer, center=True).explain(image, budget=256, seed=k).saliency
        cls, bx = scenes.boxes[k]
        mask = box_masks(torch.from_numpy(bx[cls == c]), *image.shape[-2:]).any(0, keepdim=True)
        values.append(float(energy_pointing_game(sal, mask)[0]))
    v = np.array(values)
    v = v[np.isfinite(v)]
    return {"mean": float(v.mean()) if len(v) else None, "n": int(len(v))}


def audited_val(clf, params) -> dict:
    from tasks import stages

    images = stages.pull(params).read("images").to_pylist()
    val = [r for r in images if r["split"] == "val"]
    x = torch.stack([torch.from_numpy(load_rgb(r["uri"]).transpose(2, 0, 1).copy()) for r in val])
    truth = np.array([[c in (r["labels"] or []) for c in clf.class_names] for r in val])
    with torch.inference_mode():
        v = multilabel_f1(clf.classify(x.float() / 255).numpy(), truth)
    return {"mean_f1": float(v.mean()), "f1": {c: float(s) for c, s in zip(clf.class_names, v)}, "images": len(val)}


def measure(clf, sets: dict, params, rise_images: int, tune_only: bool) -> dict:
    out = {"tune": {"probe": probe(clf, sets["tune_probe"]), "val": f1(clf, sets["tune_val"])}}
    if tune_only:
        return out
    ind, dec = f1(clf, sets["indist"]), f1(clf, sets["decor"])
    out["heldout"] = {"probe": probe(clf, sets["probe"]), "in_distribution": ind, "decorrelated": dec,
                      "bicycle_gap": dec["f1"][LABEL] - ind["f1"][LABEL], "audited_val": audited_val(clf, params),
                      "rise_epg_bicycle": rise_epg(clf, sets["indist"], rise_images) if rise_images else None}
    return out


def cue_free_reference(params, names: list[str], train_seed: int, seed: int) -> tuple:
    """What guidance aims at, trained directly: the models stage's SceneNet recipe (``models.classifier``) on the
    same 960 training scenes re-rendered with the cue independent of the label
    (correlation 0.5: the tint is drawn with probability 0.5 whatever the labels), initialised and shuffled with
    ``seed``. Not a product option: it needs the cue known and the data regenerated. Returns the classifier and its
    training seconds."""
    from detection.models.scene_classifier import ClassifierTraining, train_scene_classifier

    c = params.models.classifier
    scenes = render_set(with_correlation(params.pull.synthetic, 0.5), train_seed,
                        range(params.models.train_data.n_images), names, "cue_free")
    start = time.perf_counter()
    clf, _ = train_scene_classifier(scenes.images, scenes.labels, names, ClassifierTraining(
        epochs=c.epochs, batch_size=c.batch_size, lr=c.lr, input_size=tuple(c.input_size), width=c.width),
        seed=seed)
    return clf, time.perf_counter() - start


def runs(which: str, main: dict, lams: list[float], fractions: list[float], pairs: list[str] = ()) -> list[dict]:
    """The fine-tunes to run: the main recipe, the unguided fine-tune (λ = 0: what fine-tuning alone does), the λ
    sweep at the main fraction, the fraction sweep at the main λ."""
    base = [main]
    baseline = [{**main, "lam": 0.0}]
    lam = [{**main, "lam": v} for v in lams if v != main["lam"]]
    frac = [{**main, "fraction": v} for v in fractions if v != main["fraction"]]
    only = [{**main, "lam": 3.0, "classes": [LABEL]}]      # guide only the class the audit flagged
    if which == "pairs":                                   # exactly these λ:fraction runs
        return [{**main, "lam": float(p.split(":")[0]), "fraction": float(p.split(":")[1])} for p in pairs]
    return {"none": [], "main": base, "lambda": base + lam, "fraction": base + frac,
            "all": base + baseline + lam + frac + only}[which]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", default="main", choices=["none", "main", "lambda", "fraction", "all", "pairs"])
    ap.add_argument("--pairs", nargs="*", default=[], help="with --runs pairs: lam:fraction, e.g. 0.5:1.0")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lam", type=float, default=MAIN["lam"])
    ap.add_argument("--fraction", type=float, default=MAIN["fraction"])
    ap.add_argument("--lams", type=float, nargs="*", default=[1.0, 3.0, 10.0])
    ap.add_argument("--fractions", type=float, nargs="*", default=[0.01, 1.0])
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--layer", default="features.4")
    ap.add_argument("--clip", type=float, default=1.0)
    ap.add_argument("--attribution", default="ixg")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rise-images", type=int, default=60)
    ap.add_argument("--tune-only", action="store_true")
    ap.add_argument("--recalibrate", action="store_true",
                    help="also measure each model with its head biases re-fitted on the training scenes (recalibrated;"
                         " no RISE)")
    ap.add_argument("--reference", type=int, nargs="*", default=None, metavar="SEED",
                    help="also train the cue-free reference (cue_free_reference) with these seeds (none given: "
                         "params' seed) and measure it like the runs")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="benchmarks/results/guidance.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params)
    cfg = params.pull.synthetic
    train_seed = params.seed + params.models.train_data.seed_offset
    original = load_classifier("weights/demo/classifier.pt", device="cpu")
    names = original.class_names
    started = time.perf_counter()
    train = load_training_set(params, names, original.input_size)
    sets = {"tune_probe": paired_probe(cfg, train_seed, TUNE_PROBE, names),
            "tune_val": render_set(cfg, train_seed, TUNE_VAL, names, "tune")}
    if not args.tune_only:
        sets.update({"probe": paired_probe(cfg, PROBE_SEED, range(800), names),
                     "indist": render_set(cfg, INDIST_SEED, range(400), names, "heldout"),
                     "decor": render_set(with_correlation(cfg, 0.5), DECOR_SEED, range(400), names, "decor")})
    sizes = {k: len(v[0]) if isinstance(v, tuple) else len(v) for k, v in sets.items()}
    print(f"data: {len(train)} training scenes, sets {sizes} ({time.perf_counter() - started:.0f} s)", flush=True)
    results = {"targets": TARGETS, "label": LABEL, "lr": args.lr, "layer": args.layer, "clip": args.clip,
               "attribution": args.attribution, "tuned_on": "training generator (seed 1) scenes 960-1659 (probe), "
               "2000-2399 (F1)", "reported_on": "seeds 9002 (probe), 9003 (in-distribution), 9001 (decorrelated), "
               "audited val split", "runs": []}
    results["original"] = measure(original, sets, params, args.rise_images, args.tune_only)
    if args.recalibrate:
        results["original"]["recalibrated"] = measure(recalibrated(original, train), sets, params, 0, args.tune_only)
    print("original", json.dumps(results["original"])[:600], flush=True)
    if args.reference is not None:
        results["cue_free_reference"] = []
        for seed in args.reference or [params.seed]:
            ref, seconds = cue_free_reference(params, names, train_seed, seed)
            entry = {"seed": seed, "minutes": seconds / 60,
                     **measure(ref, sets, params, args.rise_images, args.tune_only)}
            if args.recalibrate:
                entry["recalibrated"] = measure(recalibrated(ref, train), sets, params, 0, args.tune_only)
            results["cue_free_reference"].append(entry)
            print("cue-free reference", json.dumps(entry)[:900], flush=True)
            write_results(args.out, results)
    main_run = {"lam": args.lam, "fraction": args.fraction, "epochs": args.epochs}
    for run in runs(args.runs, main_run, args.lams, args.fractions, args.pairs):
        classes = tuple(names.index(c) for c in run["classes"]) if run.get("classes") else None
        g = GuidanceTraining(lam=run["lam"], fraction=run["fraction"], epochs=run["epochs"], lr=args.lr,
                             classes=classes, layer=None if args.layer == "none" else args.layer,
                             attribution=args.attribution, max_grad_norm=args.clip or None, progress=False)
        clf, hist = guided_finetune(original, train.images, train.labels, train.boxes, g, seed=0)
        entry = {**run, "minutes": hist.seconds / 60, "annotated_images": hist.annotated_images,
                 "bce": hist.bce, "loc": hist.loc, **measure(clf, sets, params, args.rise_images, args.tune_only)}
        if args.recalibrate:
            entry["recalibrated"] = measure(recalibrated(clf, train), sets, params, 0, args.tune_only)
        results["runs"].append(entry)
        print(json.dumps({k: v for k, v in entry.items() if k not in ("bce", "loc")})[:900], flush=True)
        write_results(args.out, results)
    write_results(args.out, results)


if __name__ == "__main__":
    main()


__all__ = ["main"]

