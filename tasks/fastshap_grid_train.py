"""Training FastShapGrid (``explainers.fastshap_grid``) for the audited classifier on the training split.

Data: the first ``--scenes`` training scenes (``models.train_data``: the generator of ``pull.synthetic`` with seed
``seed + seed_offset``, never the audited scenes) at the classifier's input size; the last ``--heldout-scenes`` of
them are held out from training for the check below, and the last tenth of the rest validates (the best epoch is
kept). Per scene, ``--pairs`` Shapley-kernel coalitions of the ``rows x cols`` cells and their complements, plus the
empty and the full coalition (a generator seeded by (seed, scene): a scene's coalitions do not depend on the others
or on a resume), evaluated by the grid's region game for every class (black box: forwards only) in batched chunks and
cached as Parquet under ``--cache-dir`` (``tasks.fastshap_data.CoalitionCache``: blocks written atomically, a rerun
computes only what is missing; epochs reuse it).

Objective (FastSHAP, Jethani et al. 2022, https://arxiv.org/abs/2107.07436; reference code iancovert/fastshap): the
mean over scenes x, classes c and their sampled coalitions S of (v_c(S) - v_c(none) - S . phi_c(x))^2, phi
additively efficiency-normalised inside training; drawing S from the Shapley kernel makes the plain mean the
kernel-weighted least squares whose optimum is the Shapley values. Adam, seeded, resumable (``--checkpoint-dir``).
``--features 2 3``: the network also reads the classifier's own per-cell features of blocks 2 and 3 and its class
maps (``explainers.fastshap_grid.GridCellFeatures``: one classifier pass per scene, standardised by the training
scenes' per-channel mean and deviation, stored in the weights); the coalition cache is the same with or without.

Held-out check (stored in the weights file): on the held-out scenes, every class: deletion / insertion AUC (the
causal metrics of ``explainers.metrics.deletion_insertion``, mean-colour deletion, blur insertion, ``--steps``) of the
network's map beside RISE's (``--rise`` masks, the same protocol), the share of the held-out coalition values
v(S) - v(none) the estimate explains (R^2), and on the first 12 held-out scenes the median relative L2 error of the
network's cell values against BayesShapley's at 4,000 forwards (:func:`shapley_check`: the error the
``fastshap_grid_bayes`` hybrid weights the network by).

    python -m tasks.fastshap_grid_train --scenes 960 --pairs 32 --epochs 30 --out models/explainers/fastshap_grid.pt

The options are ``params.yaml``'s ``fastshap.classifier`` section (``tasks.params.FastShapGridNetParams``, whose
defaults are the shipped file's recipe: 6 x 8 cells, feature blocks 2 and 3, 3,840 scenes) read by
``tasks.cli_options``: the CLI and the ``models_fastshap`` stage train alike, declared once.
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from explainers.fastshap_grid import (
    FastShapGrid,
    FastShapGridCheckpoint,
    FastShapGridNet,
    GridCellFeatures,
    grid_scalars,
    network_inputs,
    normalise,
)
from explainers.game import RegionGame
from explainers.perturb import Perturbation, make_perturbation
from explainers.regions import grid_regions
from explainers.trained import weights_fingerprint
from tasks.cli_options import add_section_options, section_from_args
from tasks.fastshap_data import CoalitionCache, kernel_pairs
from tasks.params import FastShapGridNetParams

# in the coalition cache's key: its wording stays (tasks.params.TRAINING_DATA's meaning), or caches would be orphaned
DATA = "training scenes (pull.synthetic's generator, seed + models.train_data.seed_offset)"


@dataclass
class Scene:
    """One training scene: ``image`` [3, H, W] at the classifier's input size; ``scene_id`` its cache key."""

    index: int
    image: torch.Tensor

    @property
    def scene_id(self) -> str:
        return f"{self.index:06d}"


def scene_coalitions(index: int, cells: int, pairs: int, seed: int) -> tuple[list[str], np.ndarray]:
    """(kinds, coalitions [2 + 2 pairs, cells] 0/1): empty, full, then ``pairs`` kernel pairs (seeded by
    (seed, index))."""
    rng = np.random.default_rng([seed, index])
    Z = np.concatenate([np.zeros((1, cells)), np.ones((1, cells)), kernel_pairs(cells, pairs, rng)])
    return ["empty", "full"] + ["pair"] * (len(Z) - 2), Z.astype(np.float32)


def scene_rows(scene: Scene, scorer, grid: tuple[int, int], pairs: int, seed: int, perturbation: Perturbation,
               chunk_size: int) -> dict:
    """The cache rows of one scene: kind, coalition (``np.packbits`` of the 0/1 cells, row-major), values [C]."""
    H, W = scene.image.shape[-2:]
    cells = grid_regions(H, W, *grid)
    kinds, Z = scene_coalitions(scene.index, cells.shape[0], pairs, seed)
    game = RegionGame(scorer, scene.image, cells, perturbation, chunk_size)
    with torch.inference_mode():
        values = game(torch.from_numpy(Z)).double().cpu().numpy()
    K = len(Z)
    return {"scene_id": [scene.scene_id] * K, "kind": kinds,
            "coalition": [np.packbits(z.astype(np.uint8)).tobytes() for z in Z], "values": values.tolist()}


def scene_targets(table: pa.Table, cells: int) -> dict[str, dict]:
    """Per scene id: ``full`` / ``empty`` [C], ``Z`` [K, cells] float32 and ``y`` [K, C] = v(S) - v(none)."""
    d = table.to_pydict()
    out: dict[str, dict] = {}
    for sid, kind, code, values in zip(d["scene_id"], d["kind"], d["coalition"], d["values"]):
        rec = out.setdefault(sid, {"codes": [], "values": []})
        if kind in ("full", "empty"):
            rec[kind] = np.asarray(values, np.float64)
        else:
            rec["codes"].append(np.unpackbits(np.frombuffer(code, np.uint8))[:cells])
            rec["values"].append(values)
    for rec in out.values():
        rec["Z"] = np.asarray(rec.pop("codes"), np.float32).reshape(-1, cells)
        rec["y"] = np.asarray(rec.pop("values"), np.float64).reshape(len(rec["Z"]), -1) - rec["empty"]
    return out


def stacked(scenes: Sequence[Scene], targets: dict[str, dict], perturbation: Perturbation,
            net_size: tuple[int, int], features: GridCellFeatures | None = None,
            chunk: int = 32) -> dict[str, torch.Tensor]:
    """Training tensors of ``scenes``: x [N, 6, h, w], full / empty [N, C], Z [N, K, n], y [N, K, C], and with
    ``features`` the classifier's per-cell features [N, F, rows, cols] (one pass per scene). Full-size images are
    stacked ``chunk`` scenes at a time (3,840 scenes at once took over 20 GB)."""
    recs = [targets[s.scene_id] for s in scenes]
    x, feats = [], []
    for i in range(0, len(scenes), chunk):
        images = torch.stack([s.image for s in scenes[i:i + chunk]])
        baselines = torch.stack([perturbation.baseline(s.image) for s in scenes[i:i + chunk]])
        x.append(network_inputs(images, baselines, net_size))
        if features is not None:
            feats.append(features.cells(images))
    out = {"x": torch.cat(x),
           "full": torch.tensor(np.stack([r["full"] for r in recs])).float(),
           "empty": torch.tensor(np.stack([r["empty"] for r in recs])).float(),
           "Z": torch.tensor(np.stack([r["Z"] for r in recs])),
           "y": torch.tensor(np.stack([r["y"] for r in recs])).float()}
    if features is not None:
        out["features"] = torch.cat(feats)
    return out


def predict(net: FastShapGridNet, batch: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """Efficient cell values phi [N, C, n] of a batch (score units: the raw output x ``scale``)."""
    raw = net(batch["x"], grid_scalars(batch["full"], batch["empty"]), batch.get("features")).flatten(2) * scale
    return normalise(raw, batch["full"] - batch["empty"])


def fastshap_loss(net: FastShapGridNet, batch: dict[str, torch.Tensor], scale: float = 1.0) -> torch.Tensor:
    """The FastSHAP objective of a batch in units of ``scale``: mean of ((y - Z phi) / scale)^2 over scenes,
    coalitions and classes (dividing by the targets' RMS keeps Adam's steps at the values' scale: a network whose
    targets are 100x smaller than its initial outputs learned 3x worse in the same steps)."""
    phi = predict(net, batch, scale)
    return (((torch.einsum("nkp,ncp->nkc", batch["Z"], phi) - batch["y"]) / scale) ** 2).mean()


def value_scale(data: dict[str, torch.Tensor]) -> float:
    """The training targets' root mean square (v(S) - v(none) over scenes, coalitions, classes); 1 when all 0."""
    rms = float(data["y"].pow(2).mean().sqrt())
    return rms if rms > 0 else 1.0


def _take(data: dict[str, torch.Tensor], idx: torch.Tensor) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in data.items()}


def train_network(train: dict[str, torch.Tensor], val: dict[str, torch.Tensor], classes: int,
                  grid: tuple[int, int], *, epochs: int = 30, batch_size: int = 16, lr: float = 1e-3, seed: int = 0,
                  width: int = 32, hidden: int = 64, checkpoint_dir: str | Path | None = None,
                  progress: bool = True, spec: dict | None = None) -> tuple[dict, dict]:
    """A :class:`FastShapGridNet` fitted by :func:`fit` on :func:`fastshap_loss`; returns (the best validation
    epoch's state_dict, summary with ``value_scale``). Seeded; ``checkpoint_dir`` / ``spec`` as :func:`fit`'s."""
    torch.manual_seed(seed)
    scale = value_scale(train)
    cell = (train["x"].shape[-2] // grid[0], train["x"].shape[-1] // grid[1])
    features = int(train["features"].shape[1]) if "features" in train else 0
    net = FastShapGridNet(classes, grid, width, hidden, cell, features=features)
    if features:
        net.standardise_features(train["features"])
    what = {**(spec or {}), "classes": classes, "grid": list(grid), "epochs": epochs, "batch_size": batch_size,
            "lr": lr, "seed": seed, "width": width, "hidden": hidden, "value_scale": scale, "cell": list(cell),
            "features": features,
            "train": int(train["x"].shape[0]), "val": int(val["x"].shape[0])}
    return fit(net, fastshap_loss, train, val, scale, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed,
               checkpoint_dir=checkpoint_dir, progress=progress, spec=what, name="fastshap_grid")


def fit(net: torch.nn.Module, loss_fn, train: dict[str, torch.Tensor], val: dict[str, torch.Tensor], scale: float, *,
        epochs: int, batch_size: int, lr: float, seed: int, checkpoint_dir: str | Path | None, progress: bool,
        spec: dict, name: str) -> tuple[dict, dict]:
    """Adam with a cosine schedule on ``loss_fn(net, batch, scale)`` over minibatches of the rows of ``train`` (a
    dict of tensors with one row per item; the order reshuffled per epoch, seeded by ``seed`` and the epoch);
    returns (the best validation epoch's state_dict, summary with ``value_scale`` = ``scale``). With
    ``checkpoint_dir`` the state after every epoch (``last.pt``: network, optimiser, epoch, best) lets a killed run
    resume to the same result; it records what it trains (``spec``: the data's cache spec and ranges, the network's
    shape, the optimiser's settings and the targets' scale) and a ``last.pt`` of another one is refused (ValueError
    naming ``name``, the folder and the differing keys), never resumed."""
    from tqdm import tqdm

    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs)
    state = {"epoch": 0, "best": float("inf"), "best_state": None, "history": []}
    last = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if last is not None and last.is_file():
        saved = torch.load(last, weights_only=True)
        differ = sorted(k for k in set(spec) | set(saved.get("spec", {})) if spec.get(k) != saved["spec"].get(k))
        if differ:
            raise ValueError(f"{name}: {last} holds a training of another setting ({', '.join(differ)}): "
                             f"use another --checkpoint-dir or delete it")
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        state = saved["state"]
    N = next(iter(train.values())).shape[0]
    has_val = next(iter(val.values())).shape[0] > 0
    start = time.perf_counter()
    for epoch in tqdm(range(state["epoch"], epochs), desc=name, disable=not progress):
        net.train()
        g = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(N, generator=g)
        total = 0.0
        for s in range(0, N, batch_size):
            loss = loss_fn(net, _take(train, order[s:s + batch_size]), scale)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(order[s:s + batch_size])
        sched.step()
        net.eval()
        with torch.no_grad():
            v = float(loss_fn(net, val, scale)) if has_val else total / N
        state["history"].append({"epoch": epoch + 1, "train": total / N, "val": v})
        if v < state["best"]:
            state["best"] = v
            state["best_state"] = {k: t.detach().clone() for k, t in net.state_dict().items()}
        state["epoch"] = epoch + 1
        if last is not None:
            last.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "state": state, "spec": spec}, last.with_suffix(".tmp"))
            last.with_suffix(".tmp").replace(last)
    summary = {"epochs": epochs, "value_scale": scale, "best_val_loss": state["best"], "history": state["history"],
               "train_seconds": time.perf_counter() - start}
    return state["best_state"], summary


def heldout_check(ckpt: FastShapGridCheckpoint, scorer_for, scenes: Sequence[Scene], held: dict[str, torch.Tensor],
                  rise_budget: int, steps: int) -> dict:
    """The stored accuracy record (module docstring): medians over held-out (scene, class) targets."""
    from explainers.metrics import deletion_insertion
    from explainers.rise import Rise

    net = ckpt.network()
    with torch.no_grad():
        phi = predict(net, held, ckpt.value_scale)
        pred = torch.einsum("nkp,ncp->nkc", held["Z"], phi)
    resid = ((pred - held["y"]) ** 2).sum()
    r2 = float(1 - resid / ((held["y"] - held["y"].mean((0, 1), keepdim=True)) ** 2).sum())
    out = {"deletion": [], "insertion": [], "rise_deletion": [], "rise_insertion": []}
    for scene in scenes:
        scorer = scorer_for()
        maps = {"": FastShapGrid(scorer, weights=ckpt).explain(scene.image).saliency,
                "rise_": Rise(scorer, center=True, perturbation=ckpt.perturbation.split("(")[0]).explain(
                    scene.image, budget=rise_budget, seed=0).saliency}
        for prefix, sal in maps.items():
            for mode in ("deletion", "insertion"):
                curve = deletion_insertion(scorer, scene.image, sal, mode=mode, steps=steps)
                out[prefix + mode] += curve.auc.tolist()
    med = {k: float(np.nanmedian(v)) for k, v in out.items()}
    return {"scenes": len(scenes), "targets": len(out["deletion"]), "deletion_auc_median": med["deletion"],
            "insertion_auc_median": med["insertion"], "rise_deletion_auc_median": med["rise_deletion"],
            "rise_insertion_auc_median": med["rise_insertion"], "rise_budget": rise_budget, "rise_center": True,
            "steps": steps,
            "coalition_r2": r2,
            **shapley_check(ckpt, scorer_for, [s.image for s in scenes[:SHAPLEY_CHECK_SCENES]],
                            SHAPLEY_CHECK_BUDGET)}


SHAPLEY_CHECK_SCENES = 12        # the first held-out scenes of the Shapley check (every class of each)
SHAPLEY_CHECK_BUDGET = 4000      # BayesShapley's forwards for its reference values (~ 2.3 ms each on the demo model)


def shapley_check(ckpt: FastShapGridCheckpoint, scorer_for, images: Sequence[torch.Tensor],
                  budget: int = SHAPLEY_CHECK_BUDGET) -> dict:
    """How far the network's cell values are from the grid game's Shapley values: per held-out (image, class) target
    the relative L2 error of :meth:`FastShapGrid.cell_values` against BayesShapley's at ``budget`` forwards (seed 0,
    the network's cells and perturbation; near-exact at 4,000 forwards on the demo classifier's 6 x 8 grid, whose
    deletion AUC then matches RISE@4000's: benchmarks/README.md), and its median: ``shapley_median_rel_l2``, the
    error :class:`~explainers.fastshap_grid.FastShapGridBayesShapley` weights the network's estimate by (targets
    whose reference is all zero have no relative error and are left out). Raises ValueError for no image, or when
    no target has a finite error."""
    from explainers.bayesian_shapley import bayes_shapley
    from explainers.metrics import relative_error

    if not images:
        raise ValueError("fastshap_grid: the Shapley check needs at least one held-out scene")
    errors = []
    for image in images:
        scorer = scorer_for()
        explainer = FastShapGrid(scorer, weights=ckpt)
        image = image.to(explainer.device)
        cells = grid_regions(*image.shape[-2:], *ckpt.grid, explainer.device)
        game = RegionGame(scorer, image, cells, explainer.perturbation, 64)
        with torch.inference_mode():
            est = bayes_shapley(game, cells.shape[0], budget, np.random.default_rng(0), explainer.device)
        net = explainer.cell_values(image, est.full.to(explainer.device), est.empty.to(explainer.device))
        errors += relative_error(net.double().cpu(), est.phi.double().cpu()).tolist()
    if not np.isfinite(errors).any():
        raise ValueError(f"fastshap_grid: the Shapley check has no finite error on its {len(errors)} targets (every "
                         f"reference all zero: the classifier does not react to hiding cells)")
    return {"shapley_median_rel_l2": float(np.nanmedian(errors)), "shapley_budget": budget,
            "shapley_scenes": len(images), "shapley_targets": len(errors)}


def train_grid_weights(model, config: FastShapGridNetParams, params, cache_dir: str | Path,
                       checkpoint_dir: str | Path | None = None, progress: bool = True) -> FastShapGridCheckpoint:
    """A FastShapGrid network for the classifier ``model`` (a ``detection.models.classifier`` model: ``num_classes``,
    ``input_size``) trained as the module docstring says on the training scenes ``params`` (``tasks.params.Params``)
    define, with the held-out check stored in it. The coalition cache under ``cache_dir`` (reused, completed),
    the training state under ``checkpoint_dir`` (resumed). Raises ValueError when the scene counts leave no training
    or held-out scene, and for a ``checkpoint_dir`` of another training."""
    from detection.scorers import ClassifierScorer
    from tasks.result_store import digest
    from tasks.rexl_train import training_scenes

    classes, grid = model.num_classes, tuple(int(g) for g in config.grid)
    perturbation = make_perturbation(config.perturbation)
    n = config.scenes or params.models.train_data.n_images
    n_train = n - config.heldout_scenes
    n_val = max(1, n_train // 10)
    if config.heldout_scenes < 1 or n_train - n_val < 1:
        raise ValueError(f"fastshap_grid: scenes {n} with heldout_scenes {config.heldout_scenes} leaves "
                         f"{n_train - n_val} training scenes (a tenth of the rest validates; need >= 1 held out and "
                         f">= 1 to train)")
    images = training_scenes(n, model.input_size, params)
    scenes = [Scene(i, img) for i, img in enumerate(images)]
    H, W = images[0].shape[-2:]
    model_sha = weights_fingerprint(ClassifierScorer(model))
    data_spec = {"data_seed": params.seed + params.models.train_data.seed_offset,
                 "generator": digest(params.pull.synthetic.model_dump(mode="json", exclude={"n_images"}))[:16]}
    cache = CoalitionCache(cache_dir, {"model_sha256": model_sha, "grid": list(grid), "image_size": [H, W],
                                       "perturbation": perturbation.describe(), "pairs": config.pairs,
                                       "seed": config.seed, "data": DATA, **data_spec}, key="scene_id")
    start = time.perf_counter()
    scorer = ClassifierScorer(model, chunk_size=16)
    cache.build(scenes, perturbation, progress=progress,
                rows_of=lambda s: scene_rows(s, scorer, grid, config.pairs, config.seed, perturbation, 16))
    cache_seconds = time.perf_counter() - start
    targets = scene_targets(cache.read(), grid[0] * grid[1])
    net_size = (8 * grid[0], 8 * grid[1])          # an 8 x 8 patch per grid cell
    blocks = tuple(int(b) for b in config.features)
    features = GridCellFeatures(model, grid, blocks) if blocks else None
    train = stacked(scenes[:n_train - n_val], targets, perturbation, net_size, features)
    val = stacked(scenes[n_train - n_val:n_train], targets, perturbation, net_size, features)
    state, summary = train_network(train, val, classes, grid, epochs=config.epochs, batch_size=config.batch,
                                   lr=config.lr, seed=config.seed, width=config.width, checkpoint_dir=checkpoint_dir,
                                   progress=progress,
                                   spec={**cache.spec, "model_sha256": model_sha, "train_scenes": n_train - n_val})
    training = {**summary, "data": DATA, **data_spec, "scenes": [0, n_train - n_val],
                "val_scenes": [n_train - n_val, n_train], "pairs": config.pairs, "seed": config.seed,
                "lr": config.lr, "batch": config.batch, "cache_seconds": cache_seconds,
                "model_forwards": n * (2 + 2 * config.pairs), "feature_forwards": n if features is not None else 0}
    ckpt = FastShapGridCheckpoint(model_sha, classes, (H, W), grid, perturbation.describe(), state,
                                  net_size=net_size, width=config.width, value_scale=summary["value_scale"],
                                  feature_blocks=blocks,
                                  feature_channels=0 if features is None else int(train["features"].shape[1]),
                                  training=training)
    held_scenes = scenes[n_train:]
    check_start = time.perf_counter()
    held = stacked(held_scenes, targets, perturbation, net_size, features)
    ckpt.heldout = {**heldout_check(ckpt, lambda: ClassifierScorer(model, chunk_size=16), held_scenes, held,
                                    config.rise, config.steps),
                    "scene_range": [n_train, n], "seconds": time.perf_counter() - check_start}
    return ckpt


OPTION_HELP = {"grid": "rows x cols cells",
               "scenes": "training scenes, the last --heldout-scenes held out (null: models.train_data.n_images)",
               "heldout_scenes": "last scenes kept for the held-out check",
               "pairs": "kernel coalition pairs per scene",
               "features": "the classifier's feature blocks the network reads, e.g. 2 3 (explainers.fastshap_grid."
                           "GridCellFeatures; none: pixels only)",
               "rise": "RISE masks of the held-out comparison",
               "steps": "deletion / insertion steps of the held-out check"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="the audited classifier (default: infer.classifier)")
    add_section_options(parser, FastShapGridNetParams, exclude={"weights"}, help=OPTION_HELP)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=".work/fastshap_grid/coalitions")
    parser.add_argument("--checkpoint-dir", default=None, help="resumable training state (last.pt)")
    parser.add_argument("--out", required=True, help="weights file (explainers.fastshap_grid.FastShapGridCheckpoint)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    config = section_from_args(args, FastShapGridNetParams, exclude={"weights"}, prog="fastshap_grid_train")
    torch.set_num_threads(args.threads)
    from tasks.model_cache import classifier_model
    from tasks.params import load_params

    params = load_params(check_files=False)
    spec = params.infer.classifier
    if args.weights:
        spec = spec.model_copy(update={"weights": args.weights})
    model = classifier_model(spec.model_dump_json(), "cpu", 16)
    try:
        ckpt = train_grid_weights(model, config, params, args.cache_dir, args.checkpoint_dir,
                                  progress=not args.no_progress)
    except ValueError as exc:
        raise SystemExit(f"fastshap_grid_train: {exc}") from None
    ckpt.save(args.out)
    training = {k: v for k, v in ckpt.training.items() if k != "history"}
    print(f"training: {training}\nheld-out check: {ckpt.heldout}\nwritten: {args.out}", flush=True)


if __name__ == "__main__":
    main()
