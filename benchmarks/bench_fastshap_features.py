"""Can the audited detector's own features predict a pedestrian's body-part Shapley values? A linear (ridge) head on
per-part feature summaries, fit with the FastSHAP objective on the same cached training coalitions as
``tasks.fastshap_train``, against the exact values of the held-out pedestrians of ``bench_fastshap.py``.

Features of player i (parts10 + context), all from the two detector forwards an efficient amortised explainer pays
anyway -- the image x and x with every player hidden (blur): for the demo detector's P3 and P4 feature maps (layers
15 and 18 of the YOLOv8 layout), the mean under the player's mask of F(x), of F(x) - F(x_none) and of its absolute
value; the player's share of the person's area; its identity (one-hot); each also times v(all) - v(none). The head:
phi_i = features_i . w, additively efficiency-normalised, so the FastSHAP loss is linear least squares in w
(closed-form ridge on standardised columns). Reported: 5-fold cross-validation on the training persons (the share
of the coalition targets' squared norm left unexplained) for feature subsets, and the held-out median / p90
relative L2 error for the full set.

    python benchmarks/bench_fastshap_features.py       (needs .work/fastshap/coalitions from tasks.fastshap_train)
Writes benchmarks/results/fastshap_features.json.
"""
from __future__ import annotations

import argparse
import glob
import json
import time
from pathlib import Path

import flows  # noqa: F401  (environment defaults)

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from bench_fastshap import PLAYERS, cache_path, exact_phi
from detection.models.letterbox import letterbox
from explainers.metrics import relative_error
from explainers.perturb import make_perturbation
from pedestrians import load_detector, pedestrians, start_run
from tasks.fastshap_data import targets_by_person, training_persons
from tasks.params import load_params

LAYERS = (15, 18)                       # P3 (stride 8), P4 (stride 16) of the YOLOv8 layout
GROUPS = ("fx", "dd", "ad")             # mean F(x), mean F(x) - F(x_none), mean |F(x) - F(x_none)|


class FeatureReader:
    """Per-player features [P, D] of a person from the detector's feature maps (module docstring)."""

    def __init__(self, detector):
        self.detector, self.maps = detector, {}
        for layer in LAYERS:
            detector.model.model[layer].register_forward_hook(
                lambda m, i, o, layer=layer: self.maps.__setitem__(layer, o.detach()))
        self.blur = make_perturbation("blur")

    def __call__(self, image: torch.Tensor, masks: torch.Tensor, gap: float) -> torch.Tensor:
        masks = masks.float()
        union = masks.amax(0, keepdim=True)
        hidden = image * (1 - union) + self.blur.baseline(image) * union
        self.detector.raw(torch.stack([image, hidden]))
        boxed, _ = letterbox(masks[None], self.detector.imgsz, self.detector.stride, fill=0.0)
        parts = []
        for layer in LAYERS:
            f = self.maps[layer].float()                                   # [2, C, h, w]
            share = F.adaptive_avg_pool2d(boxed, f.shape[-2:])[0]         # [P, h, w]
            total = share.flatten(1).sum(1).clamp_min(1e-6)[:, None]
            fx = torch.einsum("phw,chw->pc", share, f[0]) / total
            dd = torch.einsum("phw,chw->pc", share, f[0] - f[1]) / total
            parts += [fx, dd, dd.abs()]
        area = masks.flatten(1).sum(1)
        X = torch.cat([*parts, (area / area.sum().clamp_min(1))[:, None], torch.eye(masks.shape[0])], 1)
        return torch.cat([X, X * gap], 1)


def columns(names: list[str], channels: dict[int, int], with_plain: bool = True) -> list[int]:
    """Column indices of the named feature groups (``fx15``, ``dd18``, ``share``, ``ident``, ...), plain and x gap."""
    spans, at = {}, 0
    for layer in LAYERS:
        for g in GROUPS:
            spans[f"{g}{layer}"] = range(at, at + channels[layer])
            at += channels[layer]
    spans["share"], spans["ident"] = range(at, at + 1), range(at + 1, at + 1 + PLAYERS)
    half = at + 1 + PLAYERS
    chosen = [i for n in names for i in spans[n]]
    return (chosen if with_plain else []) + [i + half for i in chosen]


def ridge(A: torch.Tensor, b: torch.Tensor, lam: float) -> torch.Tensor:
    scale = A.abs().mean(0).clamp_min(1e-12)
    An = A / scale
    return torch.linalg.solve(An.T @ An + lam * len(b) * torch.eye(A.shape[1], dtype=A.dtype), An.T @ b) / scale


def cross_validated(A: list[torch.Tensor], b: list[torch.Tensor], cols: list[int], lam: float) -> float:
    """Unexplained share of the held-out folds' coalition targets (5 folds over persons)."""
    folds = np.arange(len(A)) % 5
    left = total = 0.0
    for f in range(5):
        train = [i for i in range(len(A)) if folds[i] != f]
        test = [i for i in range(len(A)) if folds[i] == f]
        w = ridge(torch.cat([A[i][:, cols] for i in train]), torch.cat([b[i] for i in train]), lam)
        At, bt = torch.cat([A[i][:, cols] for i in test]), torch.cat([b[i] for i in test])
        left += float(((At @ w - bt) ** 2).sum())
        total += float((bt ** 2).sum())
    return left / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache-dir", default=".work/fastshap/coalitions")
    parser.add_argument("--heldout-scenes", type=int, default=60)
    parser.add_argument("--persons", type=int, default=50, help="held-out pedestrians (cached exact tables)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/fastshap_features.json")
    args = parser.parse_args()
    device = start_run(args.threads)
    start = time.perf_counter()
    detector = load_detector(device)
    params = load_params(check_files=False)
    read = FeatureReader(detector)
    blocks = sorted(glob.glob(f"{args.cache_dir}/block-*.parquet"))
    if not blocks:
        raise SystemExit(f"no coalition cache under {args.cache_dir}: run python -m tasks.fastshap_train first")
    records = targets_by_person(pa.concat_tables([pq.read_table(f) for f in blocks]), PLAYERS)
    A, b = [], []
    n_scenes = params.models.train_data.n_images
    for person in training_persons(detector, range(0, n_scenes - args.heldout_scenes), "parts10", 60.0, params):
        rec = records.get(person.person_id)
        if rec is None:
            continue
        gap = rec["full"] - rec["empty"]
        present = torch.zeros(PLAYERS, dtype=torch.float64)
        present[torch.from_numpy(person.present)] = 1
        X = read(person.image.float(), person.masks, gap).double() * present[:, None]
        Z, y = torch.from_numpy(rec["Z"]).double(), torch.from_numpy(rec["y"]).double()
        size = Z.sum(1, keepdim=True)
        A.append((Z - size / present.sum() * present[None]) @ X)       # S . normalised phi, linear in w
        b.append(y - size[:, 0] * gap / present.sum())
    channels = {layer: read.maps[layer].shape[1] for layer in LAYERS}
    subsets = {"identity": ["ident"], "identity + area": ["ident", "share"],
               "identity + area + P3 differences": ["ident", "share", "dd15"],
               "identity + area + P4 differences": ["ident", "share", "dd18"],
               "all": [f"{g}{layer}" for layer in LAYERS for g in GROUPS] + ["share", "ident"]}
    cv = {name: {str(lam): cross_validated(A, b, columns(names, channels), lam) for lam in (1e-4, 1e-2, 1.0)}
          for name, names in subsets.items()}

    tables = torch.load(cache_path("heldout", params.infer.detectors[0].weights), weights_only=True)
    peds = [p for p in pedestrians("heldout", args.persons, device, detector=detector) if p["det_id"] in tables]
    heldout = {}
    for lam in (1e-4, 1e-2, 1.0):
        w = ridge(torch.cat(A), torch.cat(b), lam)
        errors = []
        for p in peds:
            table = tables[p["det_id"]]
            gap = float(table["values"][-1] - table["values"][0])
            masks = p["regions"][12][:PLAYERS]
            present = masks.flatten(1).any(1).double()
            raw = (read(p["image"].float(), masks, gap).double() * present[:, None]) @ w
            phi = (raw + (gap - raw.sum()) / present.sum()) * present
            errors.append(float(relative_error(phi[None], exact_phi(table)[None])[0]))
        heldout[str(lam)] = {"median": float(np.median(errors)), "p90": float(np.quantile(errors, 0.9)),
                             "n": len(errors)}
    result = {"training_persons": len(A), "coalitions": int(sum(len(x) for x in b)), "layers": list(LAYERS),
              "cv_unexplained_share": cv, "heldout_all_features": heldout, "seconds": time.perf_counter() - start}
    for name, row in cv.items():
        print(f"{name:<36}" + "  ".join(f"lam {k}: {v:.4f}" for k, v in row.items()))
    for lam, row in heldout.items():
        print(f"held-out, all features, lam {lam}: median {row['median']:.3f} p90 {row['p90']:.3f} n {row['n']}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
