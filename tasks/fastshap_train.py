"""Training FastShapParts (``explainers.fastshap``) for the audited detector on the training split.

Data (``tasks.fastshap_data``): the persons of the first ``--scenes`` training scenes (``models.train_data``: the
generator of ``pull.synthetic`` with seed ``seed + seed_offset``, never the audited scenes); the last
``--heldout-scenes`` of them are held out from training for the exact check. Per person ``--pairs`` Shapley-kernel
coalitions and their complements, plus the empty and full coalition, evaluated by the region game (black box: the
detector is only run forward) and cached as Parquet under ``--cache-dir`` (resumable; epochs reuse it).

Objective (FastSHAP, Jethani et al. 2022, https://arxiv.org/abs/2107.07436; reference code iancovert/fastshap):
mean over persons x and their sampled coalitions S of (v_x(S) - v_x(none) - S . phi(x))^2, phi additively
efficiency-normalised (``explainers.fastshap.normalise``) inside training; sampling S from the Shapley kernel makes
the plain mean the kernel-weighted least squares, whose optimum is the Shapley values. Adam, the best epoch on a
validation tenth of the training persons (their cached coalitions) is kept. Seeded (torch, the epoch shuffles),
resumable (``--checkpoint-dir``: ``last.pt`` after every epoch with the optimiser state), progress bars (tqdm).

Held-out check: exact Shapley values by enumerating all 2^n coalitions (n <= 11 players with a pixel) of
``--heldout-persons`` persons of the held-out training scenes, against the trained explainer run as the explain stage
runs it; median / p90 relative L2 error and top-part agreement are stored in the weights file (``heldout``).

The pipeline's ``models_fastshap`` stage (``tasks.fastshap_stage``, ``xai-audit fastshap``) runs the same training
(:func:`train_weights`) with ``params.yaml``'s ``fastshap.detector`` (whose defaults reproduce the shipped
``weights/demo/fastshap_parts.pt``); by hand:

    python -m tasks.fastshap_train --persons 400 --heldout-persons 6 --out models/explainers/fastshap_parts.pt
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from explainers.fastshap import (
    Crop,
    FastShapCheckpoint,
    FastShapNet,
    FastShapParts,
    normalise,
    person_inputs,
    player_names,
    scalar_inputs,
)
from explainers.game import RegionGame
from explainers.metrics import relative_error
from explainers.perturb import Perturbation, make_perturbation
from explainers.shapley import all_coalitions, exact_coefficients
from explainers.trained import weights_fingerprint
from tasks.fastshap_data import CoalitionCache, Person, targets_by_person
from tasks.params import TRAINING_DATA


@dataclass
class Sample:
    """One person's training example: network input ``x`` [C, h, w], ``scalars`` [NUM_SCALARS], ``present`` [P]
    bool, coalitions ``Z`` [K, P] and targets ``y`` [K] = v(S) - v(none), ``gap`` = v(all) - v(none)."""

    person_id: str
    x: torch.Tensor
    scalars: torch.Tensor
    present: torch.Tensor
    Z: torch.Tensor
    y: torch.Tensor
    gap: float


def person_sample(person: Person, record: dict, crop: Crop, perturbation: Perturbation) -> Sample:
    """The network's inputs of ``person`` and its cached coalitions ``record`` (``targets_by_person``)."""
    image = person.image.float()
    x, height = person_inputs(image, perturbation.baseline(image), person.masks.float(), crop)
    full, empty = torch.tensor([record["full"]]), torch.tensor([record["empty"]])
    scalars = scalar_inputs(full, empty, torch.tensor([height]), torch.tensor([float(x[-1].mean())]))[0]
    present = torch.zeros(person.masks.shape[0], dtype=torch.bool)
    present[torch.from_numpy(person.present)] = True
    return Sample(person.person_id, x.cpu(), scalars, present, torch.from_numpy(record["Z"]),
                  torch.from_numpy(record["y"]).float(), float(record["full"] - record["empty"]))


def mirror_permutation(players: Sequence[str]) -> torch.Tensor | None:
    """For each player the index of its mirror image (``left_*`` <-> ``right_*``, others fixed); None when every
    player is its own mirror (nothing to swap, e.g. ``parts4``)."""
    index = {n: i for i, n in enumerate(players)}
    swap = {"left_": "right_", "right_": "left_"}
    perm = [index.get(next((swap[k] + n[len(k):] for k in swap if n.startswith(k)), n), i)
            for i, n in enumerate(players)]
    return None if perm == list(range(len(players))) else torch.tensor(perm)


def mirrored(sample: Sample, perm: torch.Tensor) -> Sample:
    """The sample of the horizontally mirrored person: the crop flipped, each player's mask channel, presence and
    coalition column moved to its mirror player (``perm``); the same game values (an augmentation: it assumes the
    detector's game is mirror-symmetric)."""
    P = len(perm)
    x = sample.x.flip(-1).clone()
    x[6:6 + P] = x[6:6 + P][perm]
    return Sample(sample.person_id + "/mirrored", x, sample.scalars, sample.present[perm], sample.Z[:, perm],
                  sample.y, sample.gap)


def _stack(samples: Sequence[Sample]) -> dict[str, torch.Tensor]:
    K = max(s.Z.shape[0] for s in samples)
    P = samples[0].present.shape[0]
    Z = torch.zeros(len(samples), K, P)
    y = torch.zeros(len(samples), K)
    w = torch.zeros(len(samples), K)
    for i, s in enumerate(samples):
        Z[i, :len(s.Z)], y[i, :len(s.y)], w[i, :len(s.y)] = s.Z, s.y, 1.0
    return {"x": torch.stack([s.x for s in samples]), "s": torch.stack([s.scalars for s in samples]),
            "present": torch.stack([s.present for s in samples]), "Z": Z, "y": y, "w": w,
            "gap": torch.tensor([s.gap for s in samples])}


def fastshap_loss(net: FastShapNet, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The FastSHAP objective of a batch (module docstring): mean squared error of S . phi against v(S) - v(none)
    over the sampled coalitions (``w`` masks padding), phi normalised."""
    phi = normalise(net(batch["x"], batch["s"]), batch["present"], batch["gap"])
    pred = torch.einsum("nkp,np->nk", batch["Z"], phi)
    return ((pred - batch["y"]) ** 2 * batch["w"]).sum() / batch["w"].sum().clamp_min(1)


def train_network(samples: Sequence[Sample], players: int, *, val: Sequence[Sample] = (), epochs: int = 40,
                  batch_size: int = 32, lr: float = 1e-3, seed: int = 0, width: int = 32, hidden: int = 128,
                  checkpoint_dir: str | Path | None = None, progress: bool = False,
                  mirror: torch.Tensor | None = None) -> tuple[dict, dict]:
    """Train a :class:`~explainers.fastshap.FastShapNet` on ``samples`` (persons with >= 2 players with a pixel),
    with their mirror images added where ``mirror`` (:func:`mirror_permutation`) is given.
    Returns (state dict: the best epoch on ``val`` or the last without it, summary: epochs, losses, seconds).
    Resumes from ``checkpoint_dir/last.pt`` when it exists. Raises ValueError without samples."""
    from tqdm import tqdm
    samples = [s for s in samples if len(s.y)]
    if not samples:
        raise ValueError("fastshap: no training person with >= 2 players with a pixel")
    if mirror is not None:
        samples = samples + [mirrored(s, mirror) for s in samples]
    torch.manual_seed(seed)
    net = FastShapNet(players, width, hidden)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, epochs))
    start_epoch, best, best_state, history = 0, float("inf"), None, []
    last = Path(checkpoint_dir) / "last.pt" if checkpoint_dir else None
    if last is not None and last.is_file():
        saved = torch.load(last, weights_only=True)
        net.load_state_dict(saved["net"])
        opt.load_state_dict(saved["opt"])
        sched.load_state_dict(saved["sched"])
        start_epoch, best, best_state, history = saved["epoch"], saved["best"], saved["best_state"], saved["history"]
    val_batch = _stack([s for s in val if len(s.y)]) if any(len(s.y) for s in val) else None
    start = time.perf_counter()
    bar = tqdm(range(start_epoch, epochs), desc="fastshap", unit="epoch", disable=not progress)
    for epoch in bar:
        order = np.random.default_rng([seed, epoch]).permutation(len(samples))
        net.train()
        losses = []
        for b in range(0, len(order), batch_size):
            loss = fastshap_loss(net, _stack([samples[i] for i in order[b:b + batch_size]]))
            opt.zero_grad()
            loss.backward()
            opt.step()
            losses.append(loss.item())
        sched.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(fastshap_loss(net, val_batch)) if val_batch is not None else float(np.mean(losses))
        history.append({"epoch": epoch + 1, "train": float(np.mean(losses)), "val": val_loss})
        if val_loss < best:
            best, best_state = val_loss, {k: v.detach().clone() for k, v in net.state_dict().items()}
        bar.set_postfix(train=f"{np.mean(losses):.2e}", val=f"{val_loss:.2e}")
        if last is not None:
            last.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                        "epoch": epoch + 1, "best": best, "best_state": best_state, "history": history},
                       last.with_suffix(".tmp"))
            last.with_suffix(".tmp").replace(last)
    summary = {"epochs": epochs, "persons": len(samples) // (2 if mirror is not None else 1),
               "mirror_augmentation": mirror is not None, "val_persons": len([s for s in val if len(s.y)]),
               "best_val_loss": best, "last": history[-1] if history else None,
               "train_seconds": time.perf_counter() - start}
    return best_state if best_state is not None else net.state_dict(), summary


def exact_check(ckpt: FastShapCheckpoint, persons: Sequence[Person], chunk_size: int = 64) -> dict:
    """Exact Shapley values of each person (all 2^n coalitions of its n players with a pixel) against the explainer
    with ``ckpt``: median / p90 relative L2 error, top-part agreement, and the same error of the uniform split
    (v(all) - v(none)) / n as a floor to beat."""
    errors, uniform, agree, forwards = [], [], [], 0
    for person in persons:
        present = person.present
        method = FastShapParts(person.scorer, weights=ckpt)
        exp = method.explain(person.image, person.masks.float())
        game = RegionGame(method.score, person.image, person.masks[present].float(), method.perturbation,
                          chunk_size)
        with torch.inference_mode():
            values = game(torch.from_numpy(all_coalitions(len(present))).to(person.image.device))[:, 0].double()
        forwards += 2 ** len(present)
        exact = torch.zeros(person.masks.shape[0], dtype=torch.float64)
        exact[present] = exact_coefficients(len(present)).T @ values.cpu()
        phi = exp.relevance[0].double()
        flat = torch.zeros_like(exact)
        flat[present] = (values[-1] - values[0]).item() / len(present)
        errors.append(float(relative_error(phi[None], exact[None])[0]))
        uniform.append(float(relative_error(flat[None], exact[None])[0]))
        agree.append(int(phi.argmax()) == int(exact.argmax()))
    if not errors:
        return {"persons": 0, "model_forwards": 0}
    return {"persons": len(errors), "median_rel_l2": float(np.nanmedian(errors)),
            "p90_rel_l2": float(np.nanquantile(errors, 0.9)), "top_part_agreement": float(np.mean(agree)),
            "uniform_split_median_rel_l2": float(np.nanmedian(uniform)), "model_forwards": forwards,
            "errors": errors}


def build_checkpoint(model_sha256: str, grouping: str, perturbation: Perturbation, state: dict, crop: Crop,
                     width: int, hidden: int, training: dict) -> FastShapCheckpoint:
    return FastShapCheckpoint(model_sha256=model_sha256, grouping=grouping, players=player_names(grouping),
                              perturbation=perturbation.describe(), state_dict=state, crop_size=crop.size,
                              crop_scale=crop.scale, width=width, hidden=hidden, training=training)


def samples_of(persons: Sequence[Person], cache: CoalitionCache, crop: Crop,
               perturbation: Perturbation) -> list[Sample]:
    """The training samples of ``persons`` from the cache's rows (a person missing from the cache: KeyError)."""
    records = targets_by_person(cache.read(), persons[0].masks.shape[0]) if persons else {}
    return [person_sample(p, records[p.person_id], crop, perturbation) for p in persons]


@dataclass(frozen=True)
class TrainConfig:
    """What :func:`train_weights` trains: the CLI's flags, the ``models_fastshap`` stage's ``fastshap.detector``
    params (``tasks.params.FastShapNetParams``) with ``parts.grouping``. ``scenes`` None: ``models.train_data``'s
    ``n_images``; training scenes are 0 .. scenes - heldout_scenes - 1, the rest held out for the exact check."""

    grouping: str = "parts10"
    scenes: int | None = None
    heldout_scenes: int = 60
    persons: int | None = None
    heldout_persons: int = 8
    min_height: float = 60.0
    pairs: int = 16
    epochs: int = 60
    batch: int = 16
    lr: float = 1e-3
    seed: int = 0
    perturbation: str = "blur"
    mirror: bool = False
    width: int = 32
    hidden: int = 128

    def scene_ranges(self, params) -> tuple[range, range]:
        """(training scenes, held-out scenes) as index ranges. Raises ValueError when no training scene is left."""
        n_scenes = self.scenes or params.models.train_data.n_images
        if self.heldout_scenes >= n_scenes:
            raise ValueError(f"fastshap: {self.heldout_scenes} held-out scenes leave none of {n_scenes} to train on")
        return range(0, n_scenes - self.heldout_scenes), range(n_scenes - self.heldout_scenes, n_scenes)


def cache_spec(model_sha256: str, config: TrainConfig, perturbation: Perturbation) -> dict:
    """What the coalition cache's values depend on (``tasks.fastshap_data.CoalitionCache``'s manifest)."""
    return {"model_sha256": model_sha256, "grouping": config.grouping, "perturbation": perturbation.describe(),
            "pairs": config.pairs, "seed": config.seed, "min_height": config.min_height,
            "data": "training scenes (pull.synthetic, seed + seed_offset)"}


def train_weights(detector, config: TrainConfig, params, cache_dir: str | Path,
                  checkpoint_dir: str | Path | None = None, progress: bool = False,
                  game: dict | None = None) -> tuple[FastShapCheckpoint, dict]:
    """Train FastShapParts for ``detector`` (a ``detection.models`` detector: ``detect``, ``class_names``, its
    torch weights fingerprinted by :func:`~explainers.trained.weights_fingerprint`) on the training persons of
    ``config`` (module docstring): coalitions evaluated into the Parquet cache ``cache_dir`` (resumed: cached persons
    are not evaluated again), the network trained seeded and resumable from ``checkpoint_dir/last.pt``, then the
    held-out exact check on ``config.heldout_persons`` persons (stored in the checkpoint's ``heldout``).
    ``params``: the validated params (training scenes' generator and seed, ``parts.match_iou`` /
    ``min_keypoints``). ``game``: the detector's game settings (``tasks.fastshap_data.detector_game``), recorded as
    ``training['detector']`` so the explain checks refuse the file for another input size or thresholds. Returns
    (checkpoint, metrics record: weights_sha256, model_sha256, grouping, training,
    heldout). Raises ValueError (unknown perturbation, no training scene, a cache of another setting, no training
    person)."""
    from tasks.fastshap_data import training_persons

    train_scenes, held_scenes = config.scene_ranges(params)
    perturbation, crop = make_perturbation(config.perturbation), Crop()
    players = player_names(config.grouping)
    start = time.perf_counter()

    def persons():
        return _limit(training_persons(detector, train_scenes, config.grouping, config.min_height, params),
                      config.persons)

    model_sha = weights_fingerprint(SimpleNamespace(model=detector))
    cache = CoalitionCache(cache_dir, cache_spec(model_sha, config, perturbation))
    cache.build(persons(), perturbation, progress=progress)
    cache_seconds = time.perf_counter() - start
    records = targets_by_person(cache.read(), len(players))
    samples = [person_sample(p, records[p.person_id], crop, perturbation) for p in persons()]
    if not samples:
        raise ValueError(f"fastshap: no training person (at least {config.min_height} px tall, matched) in training "
                         f"scenes {train_scenes.start}..{train_scenes.stop - 1}")
    n_val = max(1, len(samples) // 10)
    state, summary = train_network(samples[:-n_val], len(players), val=samples[-n_val:], epochs=config.epochs,
                                   batch_size=config.batch, lr=config.lr, seed=config.seed, width=config.width,
                                   hidden=config.hidden, checkpoint_dir=checkpoint_dir, progress=progress,
                                   mirror=mirror_permutation(players) if config.mirror else None)
    training = {**summary, "data": TRAINING_DATA, "scenes": [train_scenes.start, train_scenes.stop],
                "pairs": config.pairs, "seed": config.seed, "lr": config.lr, "batch": config.batch,
                "max_persons": config.persons, "min_height": config.min_height, "cache_seconds": cache_seconds,
                "model_forwards": sum(2 + len(s.y) for s in samples),
                **({"detector": game} if game is not None else {})}
    ckpt = build_checkpoint(model_sha, config.grouping, perturbation, state, crop, config.width, config.hidden,
                            training)
    held = list(_limit(training_persons(detector, held_scenes, config.grouping, config.min_height, params),
                       config.heldout_persons))
    check_start = time.perf_counter()
    ckpt.heldout = {**exact_check(ckpt, held), "scenes": [held_scenes.start, held_scenes.stop],
                    "seconds": time.perf_counter() - check_start}
    return ckpt, {"weights_sha256": ckpt.digest(), "model_sha256": model_sha, "grouping": config.grouping,
                  "training": training, "heldout": ckpt.heldout}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="the audited detector (default: infer.detectors[0])")
    parser.add_argument("--grouping", default="parts10", choices=("parts10", "parts6", "parts4"))
    parser.add_argument("--scenes", type=int, default=None, help="training scenes (default models.train_data)")
    parser.add_argument("--heldout-scenes", type=int, default=60, help="last scenes kept for the exact check")
    parser.add_argument("--persons", type=int, default=None, help="at most this many training persons")
    parser.add_argument("--heldout-persons", type=int, default=8)
    parser.add_argument("--min-height", type=float, default=60.0)
    parser.add_argument("--pairs", type=int, default=16, help="kernel coalition pairs per person")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--perturbation", default="blur")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cache-dir", default=".work/fastshap/coalitions")
    parser.add_argument("--checkpoint-dir", default=None, help="resumable training state (last.pt)")
    parser.add_argument("--out", required=True, help="weights file (explainers.fastshap.FastShapCheckpoint)")
    parser.add_argument("--metrics", default=None, help="JSON of the training and held-out records")
    parser.add_argument("--mirror", action="store_true",
                        help="add mirror images of the training persons with the same game values: only for a model "
                             "whose game is mirror-symmetric (the demo detector's is not: the exact values of a "
                             "mirrored pedestrian differ by a median 1.03x their norm, benchmarks/README.md)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    from detection.models.yolo import YoloDetector
    from tasks.fastshap_data import detector_game
    from tasks.params import load_params
    params = load_params(check_files=False)
    spec = params.infer.detectors[0]
    detector = YoloDetector(args.weights or spec.weights, imgsz=spec.imgsz, conf=spec.conf, iou=spec.iou,
                            device="cpu")
    config = TrainConfig(grouping=args.grouping, scenes=args.scenes, heldout_scenes=args.heldout_scenes,
                         persons=args.persons, heldout_persons=args.heldout_persons, min_height=args.min_height,
                         pairs=args.pairs, epochs=args.epochs, batch=args.batch, lr=args.lr, seed=args.seed,
                         perturbation=args.perturbation, mirror=args.mirror)
    try:
        ckpt, record = train_weights(detector, config, params, args.cache_dir, args.checkpoint_dir,
                                     progress=not args.no_progress, game=detector_game(spec))
    except ValueError as exc:
        raise SystemExit(f"fastshap_train: {exc}") from None
    ckpt.save(args.out)
    if args.metrics:
        from tasks.shards import write_json
        write_json(args.metrics, {"weights": args.out, **record})
    print(f"training: {record['training']}\nheld-out exact check: "
          f"{ {k: v for k, v in ckpt.heldout.items() if k != 'errors'} }\nwritten: {args.out}", flush=True)


def _limit(items, n: int | None):
    for k, item in enumerate(items):
        if n is not None and k >= n:
            return
        yield item


if __name__ == "__main__":
    main()
