"""Training RExL policies (``explainers.rexl``) with stable-baselines3 on the training split.

Learner: **MaskablePPO** (sb3-contrib, stable-baselines3's companion library by the same maintainers). The paper
used ACER (stable-baselines 2), which stable-baselines3 does not have. Of SB3's on-policy learners for a discrete
action space, PPO's clipped updates are the usual choice and are more stable than A2C's single gradient step per
roll-out; the *maskable* variant adds invalid-action masking (a taken cell has probability 0, in training and in the
explainer's arg-max roll-out alike), so every episode orders all k^2 cells and its return is exactly the AUC. The
reference env instead lets a re-picked cell do nothing, which wastes steps and leaves cells unranked. Defaults: gamma
1 (the return is the AUC), GAE lambda 0.95, lr 3e-4, n_steps = k^2 (one episode per env per roll-out), 4 epochs,
MLP [256, 128] with tanh (the paper's policy MLP; SB3's default activation), entropy 0.01.

The shipped demo classifier policy (``weights/demo/rexl_classifier_deletion.pt``; its manifest entry has the exact
command) uses a recipe tuned with 20k-step runs scored by deterministic roll-outs on a training-split validation
subset (training scenes 896..911, never in the RL pool of scenes 0..255; never the val / audited / held-out scenes):
backbone features with the class maps (``--cam --pool 1``: the state is the globally pooled features, the taken
cells, the class one-hot and the target's standardised class map), a *linear* policy (``--hidden ''``: the map to the
logits is one layer, so "delete where the target's evidence is" is one weight per cell) with a [128, 128] value MLP,
GAE lambda 0.5 (the default 0.95 left the advantages dominated by the 48 later random picks of an untrained policy:
its policy weights barely moved in 20k steps), lr 1e-3, 32 envs x 16 steps per roll-out, 10 epochs of batches of
128, no entropy bonus, rewards x 10. Validation cell-granularity deletion AUC (mean over 64 targets, lower is
better) after 20k steps: paper-like defaults (4x4-pooled features, MLP [256, 128], lambda 0.95) 0.68-0.72,
+ class maps 0.69-0.72, linear + lambda 0.95 0.69, linear + lambda 0.5 0.62; references: a random order 0.70,
always the cell of the highest current class map (no learning) 0.47. ``time_limit_s`` (``--time-limit``) stops a
run at the issue's wall-time budget.

Regimes (the paper's three): ``dataset`` (every (training scene, class) pair, class one-hot conditioning: one agent
for the classifier), ``class`` (every training scene for one class, unconditioned), ``image`` (one image and class:
an explanation-time optimisation of that image, the expensive baseline; the only regime that sees the image it
explains, like any perturbation method does).

Data: the classifier's training scenes, rendered by the generator of ``params.yaml``'s ``pull.synthetic`` with seed
``seed + models.train_data.seed_offset`` (the scenes of ``data/train`` that the demo models were trained on; never
the audited / val scenes), resized to the classifier's input size.

Reproducible (seeded: torch, NumPy, SB3's own seeding, the env's episode stream), resumable (``checkpoint_dir``:
SB3's ``last.zip`` with the optimiser state and the step count, written between roll-outs every
``checkpoint_every`` steps; a rerun with the same arguments continues from it to ``steps``; the episode stream then
restarts from seed + steps done),
progress bar (SB3's, tqdm / rich). The result is a :class:`~explainers.rexl.PolicyCheckpoint` (the plain torch MLP:
``Rexl`` needs no RL library).

    python -m tasks.rexl_train --regime dataset --steps 20000 --images 64 --out models/rexl/classifier_deletion.pt
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sb3_contrib import MaskablePPO
from stable_baselines3.common.callbacks import BaseCallback
from torch import nn

from explainers.metrics import default_substrate
from explainers.perturb import make_perturbation
from explainers.rexl import PolicyCheckpoint, condition_dim, make_features
from explainers.trained import weights_fingerprint
from tasks.params import TRAINING_DATA
from tasks.rexl_env import Episode, RexlVecEnv, feature_stats

REGIMES = ("dataset", "class", "image")
ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}
ALGORITHM = "MaskablePPO (sb3-contrib)"


class _LastCheckpoint(BaseCallback):
    """Saves the model to ``dir/last.zip`` (atomically) once ``every`` steps have passed, at the start of a roll-out
    (SB3 collects a roll-out, then trains on it: a save in between would count steps the model never trained on,
    and a resumed run would skip them), keeps the episode AUCs and stops training (SB3: ``_on_step`` returns False)
    once ``time_limit_s`` seconds have passed since ``start``."""

    def __init__(self, directory: Path | None, every: int | None, time_limit_s: float | None = None,
                 start: float | None = None):
        super().__init__()
        self.directory, self.every, self.last = directory, every, 0
        self.time_limit_s, self.start = time_limit_s, time.perf_counter() if start is None else start
        self.aucs: list[float] = []
        self.stopped = False

    def _on_training_start(self) -> None:
        self.last = self.num_timesteps              # a resumed run counts from where it resumed

    def _on_rollout_start(self) -> None:
        if self.directory is not None and self.every and self.num_timesteps - self.last >= self.every:
            self.last = self.num_timesteps
            save_last(self.model, self.directory)

    def _on_step(self) -> bool:
        for info in self.locals.get("infos", []):
            if "auc" in info:
                self.aucs.append(info["auc"])
        if self.time_limit_s is not None and time.perf_counter() - self.start > self.time_limit_s:
            self.stopped = True             # SB3 stops learn() when a callback returns False
            return False
        return True


def save_last(model, directory: Path) -> Path:
    """``directory/last.zip``, written to a temporary name first (a crash never leaves half a checkpoint)."""
    directory.mkdir(parents=True, exist_ok=True)
    tmp = directory / "last.tmp.zip"
    model.save(tmp)
    tmp.replace(directory / "last.zip")
    return directory / "last.zip"


def export_policy(model) -> dict[str, torch.Tensor]:
    """The SB3 actor's weights as :class:`~explainers.rexl.RexlPolicy`'s ``net.*`` state dict: the Linear layers of
    ``mlp_extractor.policy_net`` then ``action_net``. Raises ValueError when the policy has another shape (a
    shared feature extractor other than flattening, or non-Linear layers)."""
    policy = model.policy
    if type(policy.features_extractor).__name__ != "FlattenExtractor":
        raise ValueError(f"rexl: cannot export a policy with features extractor "
                         f"{type(policy.features_extractor).__name__} (expected FlattenExtractor)")
    linears = [m for m in policy.mlp_extractor.policy_net if isinstance(m, nn.Linear)] + [policy.action_net]
    out = {}
    for i, layer in enumerate(linears):
        out[f"net.{2 * i}.weight"] = layer.weight.detach().cpu().clone()
        out[f"net.{2 * i}.bias"] = layer.bias.detach().cpu().clone()
    return out


def train_policy(scorer, episodes: Sequence[Episode], *, grid: int = 7, mode: str = "deletion",
                 perturbation: str = "mean", conditioning: str = "none", num_classes: int | None = None,
                 features: str | dict = "auto", regime: str = "dataset", steps: int = 20_000, n_envs: int = 16,
                 seed: int = 0, learning_rate: float = 3e-4, n_steps: int | None = None, batch_size: int = 256,
                 n_epochs: int = 4, hidden: Sequence[int] = (256, 128), ent_coef: float = 0.01,
                 checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = None,
                 progress: bool = False, training: dict | None = None, reward_scale: float = 1.0,
                 gae_lambda: float = 0.95, activation: str = "tanh", time_limit_s: float | None = None,
                 value_hidden: Sequence[int] | None = None) -> tuple[PolicyCheckpoint, dict]:
    """Train a policy for ``scorer`` on ``episodes`` (:class:`~tasks.rexl_env.Episode`, conditioning vectors of
    ``conditioning``'s length) for ``steps`` environment steps (one step = one canvas of one env). Returns the
    checkpoint and a summary (steps done, seconds, forwards, mean AUC of the first and last 10 % of the episodes).

    Raises ValueError for an unknown regime / mode / conditioning, conditioning vectors of the wrong length, or
    fewer steps than one roll-out (n_envs * n_steps)."""
    if regime not in REGIMES:
        raise ValueError(f"rexl: regime must be one of {REGIMES}, got {regime!r}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"rexl: activation must be one of {sorted(ACTIVATIONS)}, got {activation!r}")
    want = condition_dim(conditioning, grid, num_classes)
    bad = [i for i, e in enumerate(episodes) if torch.as_tensor(e.condition).numel() != want]
    if bad:
        raise ValueError(f"rexl: episodes {bad[:5]} have conditioning vectors of the wrong length (expected {want} "
                         f"for conditioning {conditioning!r})")
    n_steps = int(n_steps or grid * grid)
    if steps < n_envs * n_steps:
        raise ValueError(f"rexl: steps {steps} < one roll-out (n_envs {n_envs} x n_steps {n_steps})")
    torch.manual_seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    feats = make_features(scorer, features)
    device = torch.device(getattr(scorer, "device", "cpu"))
    distinct = list({id(e.image): e.image for e in episodes}.values())[:64]     # dataset regime: one per class
    pool = torch.stack(distinct).to(device, torch.float32)
    sub = make_perturbation(perturbation)
    norm = feature_stats(feats, pool, torch.stack([sub.baseline(x) for x in pool]))
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    last = None if directory is None else directory / "last.zip"
    resumed = last is not None and last.is_file()
    done_before = 0
    if resumed:
        done_before = int(MaskablePPO.load(last, device="cpu").num_timesteps)
    env = RexlVecEnv(scorer, episodes, n_envs, feats, grid=grid, mode=mode, perturbation=perturbation, norm=norm,
                     seed=seed + done_before, reward_scale=reward_scale)
    if resumed:
        model = MaskablePPO.load(last, env=env, device="cpu")
    else:
        model = MaskablePPO("MlpPolicy", env, gamma=1.0, gae_lambda=gae_lambda, learning_rate=learning_rate,
                            n_steps=n_steps, batch_size=min(batch_size, n_envs * n_steps), n_epochs=n_epochs,
                            ent_coef=ent_coef, seed=seed, device="cpu", verbose=0,
                            policy_kwargs={"net_arch": {"pi": list(hidden),
                                                        "vf": list(hidden if value_hidden is None else value_hidden)},
                                           "activation_fn": ACTIVATIONS[activation]})
    callback = _LastCheckpoint(directory, checkpoint_every, time_limit_s, start)
    remaining = max(0, steps - int(model.num_timesteps))
    if remaining:
        model.learn(total_timesteps=remaining, reset_num_timesteps=not resumed, progress_bar=progress,
                    callback=callback)
    if directory is not None:
        save_last(model, directory)
    state = export_policy(model)
    state["feature_mean"], state["feature_std"] = norm[0].cpu(), norm[1].cpu()
    aucs = callback.aucs
    tenth = max(1, len(aucs) // 10)
    summary = {"algorithm": ALGORITHM, "regime": regime, "steps": int(model.num_timesteps), "resumed": resumed,
               "seconds": round(time.perf_counter() - start, 1),
               "stopped_by_time_limit": callback.stopped, "time_limit_s": time_limit_s,
               "n_forward": env.batch.n_forward,
               "n_feature_forward": env.batch.n_feature_forward, "fused": env.batch.fused, "episodes": len(aucs),
               "auc_first": float(np.mean(aucs[:tenth])) if aucs else None,
               "auc_last": float(np.mean(aucs[-tenth:])) if aucs else None, "seed": seed, "n_envs": n_envs,
               "learning_rate": learning_rate, "pool": len(episodes), "n_steps": n_steps, "batch_size": batch_size,
               "n_epochs": n_epochs, "hidden": list(hidden), "activation": activation,
               "value_hidden": list(hidden if value_hidden is None else value_hidden), "ent_coef": ent_coef,
               "gae_lambda": gae_lambda, "reward_scale": reward_scale, "features": dict(feats.spec),
               "threads": torch.get_num_threads()}
    ckpt = PolicyCheckpoint(model_sha256=weights_fingerprint(scorer), grid=grid, mode=mode, perturbation=perturbation,
                            perturbation_describe=sub.describe(), conditioning=conditioning, num_classes=num_classes,
                            features=dict(feats.spec), feature_dim=int(norm[0].numel()), state_dict=state,
                            hidden=tuple(hidden), activation=activation, training={**(training or {}), **summary})
    return ckpt, summary


# ------------------------------------------------------------------------------------------- classifier data
def training_scenes(n: int, size: tuple[int, int] | None = None, params=None) -> list[torch.Tensor]:
    """The first ``n`` training scenes (module docstring) as float images [3, H, W] in [0, 1], resized (bilinear)
    to ``size`` (H, W) where given."""
    from detection.datasets.imageio import to_batch
    from detection.datasets.synthetic import render_scene
    from tasks.params import load_params
    params = params or load_params(check_files=False)
    cfg = params.pull.synthetic
    seed = params.seed + params.models.train_data.seed_offset
    out = []
    for index in range(n):
        img = to_batch([render_scene(cfg, seed, index).image])[0]
        if size is not None and tuple(img.shape[-2:]) != tuple(size):
            img = F.interpolate(img[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
        out.append(img.contiguous())
    return out


def classifier_episodes(images: Sequence[torch.Tensor], num_classes: int, regime: str,
                        target: int | None = None) -> tuple[list[Episode], str]:
    """Episodes and conditioning of a regime for a classifier scorer over all ``num_classes`` classes (column =
    class): ``dataset``: every (image, class), one-hot; ``class``: every image for class ``target``; ``image``: the
    first image for class ``target``. Raises ValueError for a missing / out-of-range target."""
    if regime == "dataset":
        eye = torch.eye(num_classes)
        return [Episode(img, c, eye[c]) for img in images for c in range(num_classes)], "class"
    if target is None or not 0 <= target < num_classes:
        raise ValueError(f"rexl: regime {regime!r} needs a target class in [0, {num_classes}), got {target}")
    chosen = images if regime == "class" else images[:1]
    return [Episode(img, target, torch.zeros(0)) for img in chosen], "none"


def detector_episodes(detector, images: Sequence[torch.Tensor], grid: int, min_height: float = 60.0,
                      person: str = "person") -> tuple[object, list[Episode]]:
    """The dataset-wide detector regime: every ``person`` detection at least ``min_height`` px tall that the detector
    finds on the training ``images`` is one episode, box-conditioned (``explainers.rexl.box_condition``); the scorer is
    one ``DRiseScorer`` over all of them (column = the detection's index), so that a batch of canvases from different
    scenes is scored in one detector call. Returns (scorer, episodes). Raises ValueError when none is found."""
    from detection.scorers import DRiseScorer
    from explainers.rexl import box_condition
    cls = detector.class_names.index(person) if person in detector.class_names else 0
    boxes, probs, episodes = [], [], []
    for img in images:
        dets = detector.detect(img[None].to(detector.device))[0]
        class_probs = dets.class_probs if dets.class_probs is not None else \
            F.one_hot(dets.labels, detector.num_classes).float() * dets.scores[:, None]
        for d in (dets.labels == cls).nonzero()[:, 0].tolist():
            box = dets.boxes[d].float().cpu()
            if float(box[3] - box[1]) < min_height:
                continue
            cond = box_condition(box[None], img.shape[-2], img.shape[-1], grid)[0]
            episodes.append(Episode(img, len(boxes), cond))
            boxes.append(box)
            probs.append(class_probs[d].float().cpu())
    if not episodes:
        raise ValueError(f"rexl: the detector found no {person!r} of >= {min_height} px on {len(images)} training "
                         "scenes")
    return DRiseScorer(detector, torch.stack(boxes), torch.stack(probs), chunk_size=16), episodes


def add_cell_policy_arguments(parser: argparse.ArgumentParser, images: int | None, grid: int | None = 7) -> None:
    """The options the cell-policy trainers' CLIs share (``tasks.rexl_cells_ppo``, ``tasks.rexl_imitation``): the
    classifier, its training scenes (default ``images``), the grid (default ``grid``; None: the caller fills it in),
    the feature blocks, seed, threads, the output file and the progress bar (read back by
    :func:`cell_policy_setup`)."""
    parser.add_argument("--weights", default=None, help="the classifier: a file detection.models.scene_classifier."
                                                        "load_classifier reads (TorchScript, its <name>.json beside "
                                                        "it); default: weights/demo/classifier.pt")
    parser.add_argument("--images", type=int, default=images, help="training scenes (x every class)")
    parser.add_argument("--grid", type=int, default=grid, help=f"k x k cells (default: {grid or 'per model'})")
    parser.add_argument("--blocks", default="2,3", help="feature blocks pooled to the grid (comma-separated)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="policy file (explainers.rexl.PolicyCheckpoint, arch cells)")
    parser.add_argument("--no-progress", action="store_true")


def cell_policy_setup(args: argparse.Namespace) -> tuple[object, list[torch.Tensor], list[int], dict]:
    """The options of :func:`add_cell_policy_arguments` put to work: sets the torch threads, loads the classifier
    (CPU) and renders its training scenes; returns (a ``ClassifierScorer`` over its classes, the images, the
    blocks, the common ``training`` record)."""
    from detection.models.scene_classifier import load_classifier
    from detection.scorers import ClassifierScorer
    torch.set_num_threads(args.threads)
    clf = load_classifier(args.weights or "weights/demo/classifier.pt", device="cpu")
    blocks = [int(b) for b in args.blocks.split(",")]
    training = {"model": "classifier", "weights": args.weights, "images": args.images, "data": TRAINING_DATA}
    return ClassifierScorer(clf), training_scenes(args.images, clf.input_size), blocks, training


def _classifier_setup(args):
    """(scorer, episodes, conditioning, num_classes) of the classifier regimes."""
    from detection.models.scene_classifier import load_classifier
    from detection.scorers import ClassifierScorer
    clf = load_classifier(args.weights or "weights/demo/classifier.pt", device="cpu")
    target = None if args.target is None else clf.class_names.index(args.target)
    images = training_scenes(args.images if args.regime != "image" else args.image_index + 1, clf.input_size)
    if args.regime == "image":
        images = images[args.image_index:]
    episodes, conditioning = classifier_episodes(images, clf.num_classes, args.regime, target)
    return ClassifierScorer(clf), episodes, conditioning, clf.num_classes if conditioning == "class" else None


def params_detector(weights: str | None = None):
    """The detector of params.yaml's ``infer.detectors[0]`` as infer runs it (imgsz, conf, NMS IoU; CPU), with other
    ``weights`` where given, and its spec (``person_class``, ``weights``): what the trainers' ``--model detector``
    CLIs train for."""
    from detection.models.yolo import YoloDetector
    from tasks.params import load_params
    spec = load_params(check_files=False).infer.detectors[0]
    detector = YoloDetector(weights or spec.weights, imgsz=spec.imgsz, conf=spec.conf, iou=spec.iou, device="cpu")
    return detector, spec


def _detector_setup(args):
    """(scorer, episodes, 'box', None) of the dataset-wide detector regime (the demo detector as infer runs it)."""
    if args.regime != "dataset":
        raise SystemExit("rexl_train: the detector has the dataset regime only (one box-conditioned agent)")
    detector, spec = params_detector(args.weights)
    scorer, episodes = detector_episodes(detector, training_scenes(args.images), args.grid,
                                         person=spec.person_class)
    return scorer, episodes, "box", None


def _widths(text: str) -> tuple[int, ...]:
    return tuple(int(h) for h in text.split(",") if h.strip())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=("classifier", "detector"), default="classifier")
    parser.add_argument("--weights", default=None, help="the audited model (default: the demo classifier, or the "
                                                        "detector of params.yaml's infer.detectors[0])")
    parser.add_argument("--regime", choices=REGIMES, default="dataset")
    parser.add_argument("--target", default=None, help="class name (regimes class / image)")
    parser.add_argument("--images", type=int, default=64, help="training scenes")
    parser.add_argument("--image-index", type=int, default=0, help="regime image: which training scene")
    parser.add_argument("--mode", choices=("deletion", "insertion"), default="deletion")
    parser.add_argument("--perturbation", default=None, help="default: mean (deletion), blur (insertion)")
    parser.add_argument("--features", default="auto", choices=("auto", "backbone", "fixed"))
    parser.add_argument("--grid", type=int, default=7)
    parser.add_argument("--pool", type=int, default=4, help="backbone features: average pool size")
    parser.add_argument("--cam", action="store_true", help="backbone features + the class maps on the grid "
                                                          "(explainers.rexl.BackboneFeatures; classifier only)")
    parser.add_argument("--hidden", default="256,128", help="policy MLP widths, comma-separated ('' = linear)")
    parser.add_argument("--value-hidden", default=None, help="value MLP widths (default: --hidden)")
    parser.add_argument("--activation", choices=sorted(ACTIVATIONS), default="tanh")
    parser.add_argument("--n-steps", type=int, default=None, help="PPO roll-out length per env (default k^2)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--ent-coef", type=float, default=0.01)
    parser.add_argument("--gae-lambda", type=float, default=0.95)
    parser.add_argument("--reward-scale", type=float, default=1.0, help="rewards x this for the learner")
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (budget)")
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", required=True, help="policy file (explainers.rexl.PolicyCheckpoint)")
    parser.add_argument("--checkpoint-dir", default=None, help="SB3 checkpoints (resumes from last.zip there)")
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    setup = _classifier_setup if args.model == "classifier" else _detector_setup
    scorer, episodes, conditioning, num_classes = setup(args)
    perturbation = args.perturbation or default_substrate(args.mode)
    features = args.features
    if args.cam or args.pool != 4:
        if args.model != "classifier" or args.features == "fixed":
            raise SystemExit("rexl_train: --cam / --pool are options of the classifier's backbone features")
        features = {"kind": "backbone", "pool": args.pool, **({"cam": args.grid} if args.cam else {})}
    ckpt, summary = train_policy(
        scorer, episodes, grid=args.grid, mode=args.mode, perturbation=perturbation, conditioning=conditioning,
        num_classes=num_classes, features=features, regime=args.regime, steps=args.steps, n_envs=args.n_envs,
        seed=args.seed, learning_rate=args.lr, checkpoint_dir=args.checkpoint_dir, n_steps=args.n_steps,
        batch_size=args.batch_size, n_epochs=args.n_epochs, ent_coef=args.ent_coef, gae_lambda=args.gae_lambda,
        hidden=_widths(args.hidden), activation=args.activation,
        value_hidden=None if args.value_hidden is None else _widths(args.value_hidden),
        reward_scale=args.reward_scale, time_limit_s=args.time_limit,
        checkpoint_every=args.checkpoint_every, progress=not args.no_progress,
        training={"model": args.model, "weights": args.weights, "images": args.images, "target": args.target,
                  "data": TRAINING_DATA})
    ckpt.save(args.out)
    print(summary, flush=True)


if __name__ == "__main__":
    main()
