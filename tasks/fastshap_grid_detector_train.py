"""Training FastShapGridDetector (``explainers.fastshap_grid_detector``) for the audited detector on the training split.

Data: the first ``--images`` training scenes (``models.train_data``'s generator, never the audited scenes; the
``rexl`` detector policies' scenes); the last ``--heldout`` of them are held out from training for the check below,
and the last tenth of the rest validates (the best epoch is kept). Targets: every ``person`` detection at least
``--min-height`` px tall (``tasks.rexl_train.detector_episodes``: one D-RISE scorer over all of them). Per scene,
``--pairs`` Shapley-kernel coalitions of the k x k cells and their complements, plus the empty and the full
coalition (a generator seeded by (seed, scene)), evaluated by the grid's region game for all the scene's pedestrians
at once (black box: forwards only), batched, and cached as Parquet under ``--cache-dir``
(``tasks.fastshap_data.CoalitionCache``: blocks written atomically, a rerun computes only what is missing).

Objective (FastSHAP, Jethani et al. 2022, https://arxiv.org/abs/2107.07436): the mean over pedestrians and their
sampled coalitions S of (v(S) - v(none) - S . phi)^2 in units of the targets' RMS, phi additively
efficiency-normalised inside training; drawing S from the Shapley kernel makes the plain mean the kernel-weighted
least squares whose optimum is the Shapley values. Adam, seeded, resumable (``--checkpoint-dir``:
``tasks.fastshap_grid_train.fit``).

Held-out check (stored in the weights file): on the held-out scenes' pedestrians, the deletion / insertion AUC
(``explainers.metrics.deletion_insertion``, ``--steps``, the game's substrate) of the network's map beside D-RISE's
(``--drise`` masks, grid 8, centred: the same protocol), and the share of the held-out coalition values
v(S) - v(none) the estimate explains (R^2).

    python -m tasks.fastshap_grid_detector_train --images 192 --heldout 16 --out models/fastshap/detector_grid.pt

The options are ``params.yaml``'s ``fastshap.detector_grid`` section (``tasks.params.FastShapGridDetectorNetParams``,
whose defaults are the shipped file's recipe) read by ``tasks.cli_options``: the CLI and the ``models_fastshap``
stage train alike, declared once.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from explainers.fastshap_grid import normalise
from explainers.fastshap_grid_detector import (
    EXTRA_CHANNELS,
    FastShapGridDetector,
    FastShapGridDetectorCheckpoint,
    FastShapGridDetectorNet,
    detector_state,
)
from explainers.game import RegionGame
from explainers.perturb import make_perturbation
from explainers.regions import grid_regions
from explainers.rexl_detector import DetectorCellFeatures
from explainers.trained import perturbation_of, weights_fingerprint
from tasks.cli_options import add_section_options, section_from_args
from tasks.fastshap_data import CoalitionCache
from tasks.fastshap_grid_train import DATA, fit, scene_coalitions, scene_targets, value_scale
from tasks.params import FastShapGridDetectorNetParams


@dataclass
class DetectorScene:
    """One training scene: ``image`` [3, H, W], the columns ``targets`` of its pedestrians in the shared D-RISE
    scorer and their ``cover`` of the cells [T, k^2]; ``scene_id`` its cache key."""

    index: int
    image: torch.Tensor
    targets: list[int]
    cover: torch.Tensor

    @property
    def scene_id(self) -> str:
        return f"{self.index:06d}"


def training_pedestrians(detector, images: Sequence[torch.Tensor], grid: int, min_height: float,
                         person: str = "person") -> tuple[object, list[DetectorScene]]:
    """(the D-RISE scorer over every pedestrian, the scenes with at least one): ``tasks.rexl_train.
    detector_episodes`` grouped by scene. Raises ValueError when the detector finds none."""
    from tasks.rexl_train import detector_episodes
    scorer, episodes = detector_episodes(detector, images, grid, min_height, person)
    by_image: dict[int, list] = {}
    index_of = {id(img): i for i, img in enumerate(images)}
    for e in episodes:
        by_image.setdefault(index_of[id(e.image)], []).append(e)
    n = grid * grid
    scenes = [DetectorScene(i, images[i], [e.column for e in eps], torch.stack([e.condition[:n] for e in eps]))
              for i, eps in sorted(by_image.items())]
    return scorer, scenes


def scene_scorer(scorer, columns: list[int]):
    """A D-RISE scorer of one scene's pedestrians: the columns ``columns`` of ``scorer`` (the shared scorer over every
    training pedestrian), so that a canvas is compared with its own scene's boxes only."""
    from detection.scorers import DRiseScorer
    return DRiseScorer(scorer.model, scorer.target_boxes[columns], scorer.target_probs[columns],
                       chunk_size=scorer.chunk_size)


def scene_rows(scene: DetectorScene, scorer, grid: int, pairs: int, seed: int, perturbation,
               chunk_size: int) -> dict:
    """The cache rows of one scene: kind, coalition (``np.packbits`` of the 0/1 cells, row-major), values [T] of its
    pedestrians (the columns of ``scorer`` in ``scene.targets``)."""
    H, W = scene.image.shape[-2:]
    cells = grid_regions(H, W, grid, grid)            # [k^2, H, W] bool: RExL's cells (explainers.rexl.cell_labels)
    kinds, Z = scene_coalitions(scene.index, grid * grid, pairs, seed)
    game = RegionGame(scene_scorer(scorer, scene.targets), scene.image, cells, perturbation, chunk_size)
    with torch.inference_mode():
        values = game(torch.from_numpy(Z)).double().cpu().numpy()
    K = len(Z)
    return {"scene_id": [scene.scene_id] * K, "kind": kinds,
            "coalition": [np.packbits(z.astype(np.uint8)).tobytes() for z in Z], "values": values.tolist()}


def stacked(scenes: Sequence[DetectorScene], table, features: DetectorCellFeatures) -> dict[str, torch.Tensor]:
    """Training tensors, one row per pedestrian: state [N, F + EXTRA_CHANNELS, k, k] (one detector pass per scene),
    full / empty [N], Z [N, K, k^2] and y [N, K] = v(S) - v(none)."""
    k = features.grid
    targets = scene_targets(table, k * k)
    out: dict[str, list] = {"state": [], "full": [], "empty": [], "Z": [], "y": []}
    for scene in scenes:
        rec = targets[scene.scene_id]
        _, feats = features.run(scene.image[None].to(features.detector.device), torch.as_tensor(scene.targets))
        full = torch.as_tensor(rec["full"]).float()
        empty = torch.as_tensor(rec["empty"]).float()
        out["state"].append(detector_state(feats.cpu(), scene.cover, full, empty, k))
        out["full"].append(full)
        out["empty"].append(empty)
        T = len(scene.targets)
        out["Z"].append(torch.from_numpy(rec["Z"])[None].expand(T, -1, -1))
        out["y"].append(torch.from_numpy(rec["y"]).float().T)
    return {key: torch.cat(v) for key, v in out.items()}


def predict(net: FastShapGridDetectorNet, batch: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """Efficient cell values phi [N, k^2] of a batch (score units: the raw output x ``scale``)."""
    raw = net(batch["state"]).flatten(1) * scale
    return normalise(raw[:, None], (batch["full"] - batch["empty"])[:, None])[:, 0]


def fastshap_loss(net: FastShapGridDetectorNet, batch: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """The FastSHAP objective of a batch in units of ``scale``: mean of ((y - Z phi) / scale)^2."""
    phi = predict(net, batch, scale)
    return (((torch.einsum("nkp,np->nk", batch["Z"], phi) - batch["y"]) / scale) ** 2).mean()


def heldout_check(ckpt: FastShapGridDetectorCheckpoint, scorer, scenes: Sequence[DetectorScene],
                  held: dict[str, torch.Tensor], drise_budget: int, steps: int) -> dict:
    """The stored accuracy record (module docstring): medians over the held-out pedestrians."""
    from explainers.metrics import deletion_insertion
    from explainers.rise import DRise

    with torch.no_grad():
        phi = predict(ckpt.network(), held, ckpt.value_scale)
        pred = torch.einsum("nkp,np->nk", held["Z"], phi)
    r2 = float(1 - ((pred - held["y"]) ** 2).sum() / ((held["y"] - held["y"].mean()) ** 2).sum())
    substrate = perturbation_of(ckpt.perturbation, "fastshap_grid_detector")
    out: dict[str, list] = {"deletion": [], "insertion": [], "drise_deletion": [], "drise_insertion": []}
    for scene in scenes:
        sub = scene_scorer(scorer, scene.targets)
        maps = {"": FastShapGridDetector(sub, weights=ckpt).explain(scene.image).saliency,
                "drise_": DRise(sub, grid=8, center=True, perturbation=substrate).explain(
                    scene.image, budget=drise_budget, seed=0).saliency}
        for prefix, sal in maps.items():
            for mode in ("deletion", "insertion"):
                curve = deletion_insertion(sub, scene.image, sal, mode=mode, steps=steps, substrate=substrate)
                out[prefix + mode] += curve.auc.tolist()
    med = {k: float(np.nanmedian(v)) for k, v in out.items()}
    return {"pedestrians": len(out["deletion"]), "deletion_auc_median": med["deletion"],
            "drise_deletion_auc_median": med["drise_deletion"], "insertion_auc_median": med["insertion"],
            "drise_insertion_auc_median": med["drise_insertion"], "drise_budget": drise_budget, "steps": steps,
            "coalition_r2": r2}


def train_detector_grid_weights(detector, config: FastShapGridDetectorNetParams, params, person: str,
                                cache_dir: str | Path, checkpoint_dir: str | Path | None = None,
                                progress: bool = True) -> FastShapGridDetectorCheckpoint:
    """A FastShapGridDetector network for ``detector`` (a ``detection.models.yolo.YoloDetector``) trained as the
    module docstring says on the training scenes ``params`` (``tasks.params.Params``) define, with the held-out
    check stored in it. Raises ValueError when the scene counts leave no training or held-out pedestrian, and for a
    cache or ``checkpoint_dir`` of another setting."""
    from tasks.result_store import digest
    from tasks.rexl_train import training_scenes

    n_train = config.images - config.heldout
    if config.heldout < 1 or n_train < 2:
        raise ValueError(f"fastshap_grid_detector: images {config.images} with heldout {config.heldout} leaves "
                         f"{n_train} training scenes (need >= 1 held out and >= 2 to train and validate)")
    images = training_scenes(config.images, params=params)
    scorer, scenes = training_pedestrians(detector, images, config.grid, config.min_height, person)
    train_scenes = [s for s in scenes if s.index < n_train]
    held_scenes = [s for s in scenes if s.index >= n_train]
    n_val = max(1, len(train_scenes) // 10)
    if len(train_scenes) - n_val < 1 or not held_scenes:
        raise ValueError(f"fastshap_grid_detector: pedestrians on {len(train_scenes)} training and {len(held_scenes)} "
                         f"held-out scenes: too few (more --images)")
    perturbation = make_perturbation(config.perturbation)
    model_sha = weights_fingerprint(scorer)
    data_spec = {"data_seed": params.seed + params.models.train_data.seed_offset,
                 "generator": digest(params.pull.synthetic.model_dump(mode="json", exclude={"n_images"}))[:16]}
    cache = CoalitionCache(cache_dir, {"model_sha256": model_sha, "grid": config.grid, "targets": "persons",
                                       "min_height": config.min_height, "perturbation": perturbation.describe(),
                                       "pairs": config.pairs, "seed": config.seed, "data": DATA, **data_spec},
                           key="scene_id")
    start = time.perf_counter()
    cache.build(scenes, perturbation, progress=progress,
                rows_of=lambda s: scene_rows(s, scorer, config.grid, config.pairs, config.seed, perturbation, 16))
    cache_seconds = time.perf_counter() - start
    table = cache.read()
    features = DetectorCellFeatures(scorer, tuple(config.layers), config.grid)
    train = stacked(train_scenes[:-n_val], table, features)
    val = stacked(train_scenes[-n_val:], table, features)
    torch.manual_seed(config.seed)
    scale = value_scale(train)
    channels = features.channels + EXTRA_CHANNELS
    net = FastShapGridDetectorNet(channels, config.grid, config.width)
    net.standardise(train["state"])
    spec = {**cache.spec, "channels": channels, "layers": list(config.layers), "epochs": config.epochs,
            "batch_size": config.batch, "lr": config.lr, "width": config.width, "value_scale": scale,
            "train": int(train["y"].shape[0]), "val": int(val["y"].shape[0])}
    state, summary = fit(net, fastshap_loss, train, val, scale, epochs=config.epochs, batch_size=config.batch,
                         lr=config.lr, seed=config.seed, checkpoint_dir=checkpoint_dir, progress=progress, spec=spec,
                         name="fastshap_grid_detector")
    # scenes: the range the training pedestrians and the validating ones (on val_scenes) come from
    training = {**summary, "data": DATA, **data_spec, "scenes": [0, n_train], "val_scenes":
                [train_scenes[-n_val].index, n_train], "pedestrians": int(train["y"].shape[0]),
                "val_pedestrians": int(val["y"].shape[0]), "pairs": config.pairs, "seed": config.seed,
                "min_height": config.min_height, "lr": config.lr, "batch": config.batch,
                "cache_seconds": cache_seconds, "model_forwards": len(scenes) * (2 + 2 * config.pairs)}
    ckpt = FastShapGridDetectorCheckpoint(model_sha, config.grid, tuple(config.layers), channels,
                                          perturbation.describe(), state, width=config.width,
                                          value_scale=summary["value_scale"], training=training)
    check_start = time.perf_counter()
    held = stacked(held_scenes, table, features)
    ckpt.heldout = {**heldout_check(ckpt, scorer, held_scenes, held, config.drise, config.steps),
                    "scene_range": [n_train, config.images], "seconds": time.perf_counter() - check_start}
    return ckpt


OPTION_HELP = {"images": "training scenes (the last --heldout held out)", "grid": "k x k cells",
               "layers": "head input maps (0: finest)", "drise": "D-RISE masks of the held-out check",
               "steps": "deletion / insertion steps of the held-out check"}


def main(argv: list[str] | None = None) -> None:
    from tasks.fastshap_data import detector_game
    from tasks.params import load_params
    from tasks.rexl_train import params_detector

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="the detector (default: params.yaml's infer.detectors[0])")
    add_section_options(parser, FastShapGridDetectorNetParams, exclude={"weights"}, help=OPTION_HELP)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=".work/fastshap_grid_detector/coalitions")
    parser.add_argument("--checkpoint-dir", default=None)
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    config = section_from_args(args, FastShapGridDetectorNetParams, exclude={"weights"},
                               prog="fastshap_grid_detector_train")
    torch.set_num_threads(args.threads)
    detector, spec = params_detector(args.weights)
    try:
        ckpt = train_detector_grid_weights(detector, config, load_params(check_files=False), spec.person_class,
                                           args.cache_dir, args.checkpoint_dir, progress=not args.no_progress)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    ckpt.training.update({"weights": args.weights or spec.weights, "detector": detector_game(spec)})
    path = ckpt.save(args.out)
    print(f"{path}: held-out {ckpt.heldout}", flush=True)


if __name__ == "__main__":
    main()
