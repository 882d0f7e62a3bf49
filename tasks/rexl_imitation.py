"""Training a RExL *cell policy* (``explainers.rexl.CellPolicy``) by imitating a one-step look-ahead teacher (DAgger).

Why imitation as well as PPO: the shipped MLP policy (``tasks.rexl_train``, MaskablePPO) learns little beyond its
state in the issue's 20-minute budget (held-out cell deletion AUC 0.53 against 0.49 for the no-learning class-map
rule and 0.12 for the greedy search). ``benchmarks/bench_rexl_state.py`` showed that the state was the limit, not
only the learner: the demo classifier's last feature map is 4 x 5, coarser than the 7 x 7 game grid. A cell policy reads
earlier blocks of the classifier pooled to the grid (``explainers.rexl.CellFeatures``) with one weight-shared
network per cell. Its teacher is the cheapest strong signal the game offers: at a state, delete each free cell next
in turn and score it (one forward per free cell), and learn to put the cell that drops the target's log-odds most
first. The same cell policy trained by MaskablePPO from the reward alone (``tasks.rexl_cells_ppo``, 2 x 10^5 steps)
orders cells better than the MLP; with the whole game's return (gamma 1) it stayed behind this teacher's student, with
a short discount (gamma 0.5, the shipped classifier policy since 2026-12-04) it ties the student per target
(``benchmarks/bench_rexl_ppo.py``; the numbers are in ``benchmarks/README.md``, "RExL" and "A myopic PPO").

Algorithm (DAgger, Ross et al., AISTATS 2011, https://arxiv.org/abs/1011.0686): round 1 rolls out the class-map rule
(the target's class map of the current canvas, highest first; with probability ``eps`` a random cell) on every
(training scene, class); at ``per`` random steps of each roll-out the teacher scores every free cell. Each later
round rolls out the policy trained so far (its own mistakes' states) and adds the teacher's answers there; the
policy is retrained on everything collected. ``early`` draws the teacher's steps from the first ``early`` steps of
each roll-out only (the roll-outs then stop after the last of them): the deletion AUC of a pixel map is mostly
decided by its first few cells, and a late state, after the target's score has already fallen, teaches little. Loss:
cross-entropy of the policy's softmax over the free cells to softmax(drop / ``tau``) (the teacher's drops in
log-odds, ``tau`` in the same units): a soft target that says how much better each cell is, not only which one is
best. Adam, lr 1e-3, weight decay 1e-4, batches of 128.

Data: the classifier's training scenes (``tasks.rexl_train.training_scenes``: the stream the demo models were trained
on, never the audited / val / held-out scenes). Seeded (torch generator, the network's initialisation), resumable
(``checkpoint_dir``: each finished round's teacher rows and policy are saved, a rerun with the same settings, the
same images, the same code of this module and ``explainers.rexl`` and the same thread count skips them),
progress bar per round. Cost (exact, in ``training``): forwards of roll-outs plus look-ahead canvases.

The shipped imitation policy (``weights/demo/rexl_classifier_deletion_cells.pt``; the ``rexl`` job's default until
2026-12-04, now the SB3 policy's) is these defaults with ``--rounds 3`` (3 rounds over 2 chosen on training scenes
896..911; its manifest entry has the command and the numbers).

    python -m tasks.rexl_imitation --images 48 --rounds 3 --out models/rexl/classifier_deletion_cells.pt

Detectors (``--model detector``, :func:`train_look_ahead_boxes`): the same DAgger loop with a box-conditioned cell
policy (``explainers.rexl_detector``) whose targets are the detector's person detections on the training scenes;
the teacher's drop is in the log-odds of the detection's D-RISE score, round 1 follows the target's support map. The
shipped demo policy (``weights/demo/rexl_detector_deletion_cells.pt``) is its defaults (192 scenes, a 9 x 9 grid, 3
rounds, 2 teacher steps per roll-out from its first 8 steps, layers 0, 1) with 2 threads:

    python -m tasks.rexl_imitation --model detector --threads 2 --out models/rexl/detector_deletion_cells.pt

``--mode insertion`` (detectors): the canvas starts as the substrate and each step restores a cell; the teacher's
gain is the rise of the detection's log-odds, the state also reads the whole image's maps and support map (one more
detector pass per pedestrian and roll-out), round 1 follows the image's support map, and the substrate defaults to
blur (as the stage's). The shipped insertion policy (``weights/demo/rexl_detector_insertion_cells.pt``) is the
detector defaults on the mean substrate (the benchmark's one substrate for every method):

    python -m tasks.rexl_imitation --model detector --mode insertion --perturbation mean --threads 2 \
        --out models/rexl/detector_insertion_cells.pt
"""
from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from explainers import rexl, rexl_detector
from explainers.metrics import default_substrate
from explainers.perturb import make_perturbation
from explainers.rexl import CellFeatures, CellGame, CellPolicy, PolicyCheckpoint, cell_state
from explainers.rexl_detector import STATE_EXTRA, box_cell_state
from explainers.trained import tensors_sha256, weights_fingerprint
from tasks.result_store import files_digest
from tasks.rexl_env import log_odds

ALGORITHM = "DAgger (one-step look-ahead teacher), cell policy"


def check_mode(mode: str) -> None:
    """Raises ValueError unless ``mode`` is one of ``explainers.rexl.MODES``."""
    if mode not in rexl.MODES:
        raise ValueError(f"rexl imitation: mode must be one of {rexl.MODES}, got {mode!r}")


class Teacher:
    """The cell game of N (image, class) targets with the classifier's :class:`~explainers.rexl.CellFeatures`: one
    pass gives a canvas's features and its class probabilities; counts forwards. ``guide``: the state channel of
    the target's class map (round 1's rule)."""

    def __init__(self, features: CellFeatures, grid: int, perturbation: str, chunk: int = 64):
        self.features, self.grid, self.chunk = features, int(grid), int(chunk)
        self.classes = int(features.spec["classes"])
        self.substrate = make_perturbation(perturbation)
        self.n_forward = 0
        self.guide = -(self.classes + 4)                            # cell_state's target-map channel

    def run(self, canvases: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Features [B, F k^2 + C] (the probabilities last; ``cols``, the rows' targets, are in the state)."""
        self.n_forward += canvases.shape[0]
        return torch.cat([self.features(canvases[s:s + self.chunk]) for s in range(0, len(canvases), self.chunk)])

    def score(self, feats: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The rows' target scores [B] in :meth:`run`'s features."""
        return feats[:, -self.classes:].gather(1, cols[:, None])[:, 0]

    def state(self, feats: torch.Tensor, taken: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return cell_state(feats, taken, condition, self.classes, self.grid)

    def start(self, images: Sequence[torch.Tensor]) -> tuple[CellGame, torch.Tensor, torch.Tensor]:
        """Every (image, class) target: the game [N = len(images) C], the class one-hots [N, C], the columns [N]."""
        x = torch.stack([img for img in images for _ in range(self.classes)]).float()
        cols = torch.arange(self.classes).repeat(len(images))
        game = CellGame(x, torch.stack([self.substrate.baseline(i) for i in x]), "deletion", self.grid)
        return game, F.one_hot(cols, self.classes).float(), cols

    def drops(self, game: CellGame, feats: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The teacher [N, k^2]: the gain in the game's reward when each free cell is taken next (NaN: taken):
        deletion, the drop in the target's log-odds; insertion, its rise."""
        n = game.cells
        current = log_odds(self.score(feats, cols))
        out = torch.full((len(cols), n), float("nan"))
        H, W = game.images.shape[-2:]
        shown, hidden = (game.images, game.baselines) if game.mode == "deletion" else (game.baselines, game.images)
        for i in range(len(cols)):
            free = (~game.taken[i]).nonzero()[:, 0]
            trial = game.taken[i][None].repeat(len(free), 1)
            trial[torch.arange(len(free)), free] = True
            canvases = torch.where(trial[:, game.labels].view(len(free), 1, H, W), hidden[i:i + 1], shown[i:i + 1])
            mine = cols[i:i + 1].expand(len(free))
            out[i, free] = game.sign * (log_odds(self.score(self.run(canvases, mine), mine)) - current[i])
        return out


class BoxTeacher(Teacher):
    """The cell game of a detector's training pedestrians (box-conditioned, one column each of the features'
    ``DRiseScorer``) with its :class:`~explainers.rexl_detector.DetectorCellFeatures`: one detector pass gives a
    canvas's features, its target's support map and D-RISE score. ``mode``: deletion, or insertion (the state also
    reads the whole image's features: one more pass per target at :meth:`start`). ``guide``: the state channel of
    the support map (deletion: the current canvas's; insertion: the image's, as its log)."""

    def __init__(self, features, grid: int, perturbation: str, chunk: int = 16, mode: str = "deletion"):
        check_mode(mode)
        self.features, self.grid, self.chunk, self.mode = features, int(grid), int(chunk), mode
        self.classes = 0
        self.substrate = make_perturbation(perturbation)
        self.n_forward = 0
        self.guide = -STATE_EXTRA if mode == "deletion" else -1
        self.image_features: torch.Tensor | None = None

    def run(self, canvases: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Features [B, F k^2 + k^2 + 1] of row i's target ``cols[i]`` (its D-RISE score last)."""
        self.n_forward += canvases.shape[0]
        return torch.cat([self.features.run(canvases[s:s + self.chunk], cols[s:s + self.chunk])[1]
                          for s in range(0, len(canvases), self.chunk)])

    def score(self, feats: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        return feats[:, -1]

    def state(self, feats: torch.Tensor, taken: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        return box_cell_state(feats, taken, condition, self.grid, self.image_features)

    def start(self, episodes: Sequence) -> tuple[CellGame, torch.Tensor, torch.Tensor]:
        """Every pedestrian (``tasks.rexl_train.Episode``: image, column, box conditioning): the game [N], the
        conditioning [N, k^2 + 4], the columns [N] (insertion: and the images' features, N passes)."""
        x = torch.stack([e.image for e in episodes]).float()
        cols = torch.tensor([e.column for e in episodes])
        game = CellGame(x, torch.stack([self.substrate.baseline(i) for i in x]), self.mode, self.grid)
        self.image_features = self.run(x, cols) if self.mode == "insertion" else None
        return game, torch.stack([e.condition for e in episodes]).float(), cols


def guide_rule(channel: int, eps: float):
    """Round 1's behaviour: the state's ``channel`` (the target's class map of the current canvas, or a detector
    target's support map), highest first; a random cell w.p. eps."""
    def pick(state: torch.Tensor, taken: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        target_map = state[:, channel]
        explore = torch.rand(len(state), 1, generator=generator) < eps
        values = torch.where(explore, torch.rand(target_map.shape, generator=generator), target_map)
        return values.masked_fill(taken, -torch.inf).argmax(1)
    return pick


def policy_rule(policy: CellPolicy):
    def pick(state: torch.Tensor, taken: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        with torch.no_grad():
            return policy.act(state.flatten(1), taken)
    return pick


def collect(teacher: Teacher, images: Sequence[torch.Tensor], pick, per: int, generator: torch.Generator,
            progress: bool = False, early: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Teacher rows along ``pick``'s roll-outs: states [M, S, k^2] (raw), drops [M, k^2], taken [M, k^2] at ``per``
    random steps (the same steps for every target) of the first k^2 - 1, or of the first ``early`` (then the
    roll-outs stop after the last of them: the steps after it would give no row)."""
    game, condition, cols = teacher.start(images)
    n = game.cells
    first = n - 1 if early is None else int(early)
    at = set(torch.randperm(first, generator=generator)[:per].tolist())
    feats = teacher.run(game.canvas(), cols)
    rows = []
    steps = range(n)
    if progress:
        from tqdm import tqdm
        steps = tqdm(steps, desc="rexl imitation: roll-out steps", leave=False)
    for t in steps:
        state = teacher.state(feats, game.taken, condition)
        if t in at:
            rows.append((state, teacher.drops(game, feats, cols), game.taken.clone()))
        if early is not None and t == max(at):
            break
        game.take(pick(state, game.taken, generator))
        feats = teacher.run(game.canvas(), cols)
    return tuple(torch.cat([r[i] for r in rows]) for i in range(3))


def fit(policy: CellPolicy, data, tau: float, epochs: int, generator: torch.Generator) -> float:
    """Train ``policy`` on teacher rows (module docstring); returns the last epoch's mean loss."""
    states, drops, taken = data
    goal = torch.softmax(drops.clone().nan_to_num(-1e9) / tau, 1)
    obs = states.flatten(1).clone()          # the features came from inference mode: a normal tensor to train on
    opt = torch.optim.Adam(policy.parameters(), 1e-3, weight_decay=1e-4)
    policy.train()
    loss_sum = 0.0
    for _ in range(epochs):
        perm = torch.randperm(len(obs), generator=generator)
        loss_sum = 0.0
        for s in range(0, len(perm), 128):
            idx = perm[s:s + 128]
            logp = torch.log_softmax(policy(obs[idx]).masked_fill(taken[idx], -1e9), 1)
            loss = -(goal[idx] * logp).sum(1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += float(loss.detach()) * len(idx)
    policy.eval()
    return loss_sum / max(1, len(obs))


def rollout(teacher: Teacher, data: Sequence, pick, generator: torch.Generator | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """``pick``'s roll-outs of every target of ``data`` (:meth:`Teacher.start`'s): cell orders [N, k^2] and the
    targets' scores along them [N, k^2 + 1] (k^2 + 1 passes of N canvases)."""
    generator = generator or torch.Generator().manual_seed(0)
    game, condition, cols = teacher.start(data)
    feats = teacher.run(game.canvas(), cols)
    curve, order = [teacher.score(feats, cols)], []
    for _ in range(game.cells):
        actions = pick(teacher.state(feats, game.taken, condition), game.taken, generator)
        game.take(actions)
        order.append(actions)
        feats = teacher.run(game.canvas(), cols)
        curve.append(teacher.score(feats, cols))
    return torch.stack(order, 1), torch.stack(curve, 1)


def train_look_ahead(scorer, images: Sequence[torch.Tensor], *, grid: int = 7, blocks: Sequence[int] = (2, 3),
                     perturbation: str = "mean", rounds: int = 2, per: int = 6, eps: float = 0.3, tau: float = 0.3,
                     epochs: int = 150, width: int = 64, early: int | None = None, seed: int = 0,
                     checkpoint_dir: str | Path | None = None, progress: bool = False,
                     training: dict | None = None) -> tuple[PolicyCheckpoint, dict]:
    """A cell policy for ``scorer``'s classifier (a ``ClassifierScorer`` over its classes) on ``images`` [3, H, W]
    (training scenes, one size): ``rounds`` of DAgger (module docstring). Returns the checkpoint (deletion, class
    conditioning, features ``cells``) and a summary. Raises ValueError for rounds / per / epochs < 1, tau <= 0 or
    no images."""
    if not images:
        raise ValueError("rexl imitation: no training images")
    features = CellFeatures(getattr(scorer, "model", None), blocks, grid)
    teacher = Teacher(features, grid, perturbation)
    settings = {"grid": grid, "blocks": list(blocks), "perturbation": perturbation, "images": len(images)}
    return _dagger(teacher, images, scorer, settings, tensors_sha256({str(i): x for i, x in enumerate(images)}),
                   rounds=rounds, per=per, eps=eps, tau=tau, epochs=epochs, width=width, seed=seed,
                   checkpoint_dir=checkpoint_dir, progress=progress, training=training, early=early)


def train_look_ahead_boxes(detector, images: Sequence[torch.Tensor], *, grid: int = 7,
                           layers: Sequence[int] = (0, 1), min_height: float = 60.0, person: str = "person",
                           perturbation: str = "mean", mode: str = "deletion",
                           rounds: int = 3, per: int = 2, eps: float = 0.3, tau: float = 0.3, epochs: int = 150,
                           width: int = 64, early: int | None = None, seed: int = 0,
                           checkpoint_dir: str | Path | None = None,
                           progress: bool = False, training: dict | None = None) -> tuple[PolicyCheckpoint, dict]:
    """A box-conditioned cell policy for a detector (a ``detection.models.yolo.YoloDetector``): its ``person``
    detections >= ``min_height`` px on the training ``images`` (``tasks.rexl_train.detector_episodes``) are the
    targets, each deleted (``mode`` 'insertion': restored from the substrate) cell by cell with the D-RISE score of
    its detection (the teacher's gain: the drop, or the rise, of its log-odds), the state
    ``explainers.rexl_detector.box_cell_state`` of the head's input maps ``layers`` (insertion: also the image's).
    ``rounds`` of DAgger (module docstring; round 1 follows the target's support map: deletion, the current
    canvas's; insertion, the image's). Returns the checkpoint (``mode``, box conditioning, features
    ``detector_cells``) and a summary. Raises ValueError as :func:`train_look_ahead`, for an unknown mode and when
    the detector finds no pedestrian."""
    from explainers.rexl_detector import DetectorCellFeatures
    from tasks.rexl_train import detector_episodes
    if not images:
        raise ValueError("rexl imitation: no training images")
    check_recipe(rounds, per, epochs, tau, early, grid)         # before the detector runs over every image
    check_mode(mode)                                            # before the detector runs too
    scorer, episodes = detector_episodes(detector, images, grid, min_height, person)
    features = DetectorCellFeatures(scorer, layers, grid)
    teacher = BoxTeacher(features, grid, perturbation, mode=mode)
    settings = {"grid": grid, "layers": list(layers), "min_height": min_height, "perturbation": perturbation,
                "images": len(images), "pedestrians": len(episodes), **({} if mode == "deletion" else {"mode": mode})}
    return _dagger(teacher, episodes, scorer, settings, tensors_sha256({str(i): x for i, x in enumerate(images)}),
                   rounds=rounds, per=per, eps=eps, tau=tau, epochs=epochs, width=width, seed=seed,
                   checkpoint_dir=checkpoint_dir, progress=progress, training=training, early=early)


def check_recipe(rounds: int, per: int, epochs: int, tau: float, early: int | None = None, grid: int = 7) -> None:
    """Raises ValueError unless rounds, per, epochs >= 1, tau > 0 and early is None / 0 (every step) or in [per,
    grid^2 - 1] (the teacher's steps per roll-out come from the first ``early`` of the grid^2 - 1 with a choice)."""
    if (rounds < 1 or per < 1 or epochs < 1 or not tau > 0 or (early or 0) < 0
            or (early and not per <= early <= grid * grid - 1)):
        raise ValueError(f"rexl imitation: need rounds, per, epochs >= 1, tau > 0 and early 0 / null (every step) or "
                         f"from per to grid^2 - 1 = {grid * grid - 1}; got rounds {rounds}, per {per}, epochs "
                         f"{epochs}, tau {tau}, early {early}")


def _dagger(teacher: Teacher, data: Sequence, scorer, settings: dict, images_sha256: str, *, rounds: int, per: int,
            eps: float, tau: float, epochs: int, width: int, seed: int, checkpoint_dir, progress: bool,
            training: dict | None, early: int | None = None) -> tuple[PolicyCheckpoint, dict]:
    """DAgger rounds (module docstring) of ``teacher`` on ``data`` (its :meth:`Teacher.start` input)."""
    check_recipe(rounds, per, epochs, tau, early, teacher.grid)
    early = early or None                                       # 0: every step
    start = time.perf_counter()
    grid, classes, boxes = teacher.grid, teacher.classes, isinstance(teacher, BoxTeacher)
    settings = {**settings, "per": per, "eps": eps, "tau": tau, "epochs": epochs, "width": width, "seed": seed,
                **({} if early is None else {"early": int(early)}), "model_sha256": weights_fingerprint(scorer)}
    resume_key = {**settings, "images_sha256": images_sha256,
                  "code": files_digest([Path(__file__), Path(rexl.__file__), Path(rexl_detector.__file__)]),
                  "threads": torch.get_num_threads()}
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    data_rows, policy, log = None, None, []
    pick = guide_rule(teacher.guide, eps)
    for r in range(rounds):
        saved = None if directory is None else directory / f"round{r + 1}.pt"
        blob = torch.load(saved, weights_only=True) if saved is not None and saved.is_file() else None
        if blob is not None and blob.get("key") == json.loads(json.dumps(resume_key)):
            data_rows, log = blob["data"], blob["log"]
            policy = CellPolicy(data_rows[0].shape[1], grid, width, classes, boxes)
            policy.load_state_dict(blob["policy"])
            generator.set_state(blob["generator"])
            teacher.n_forward = blob["log"][-1]["forwards_total"]
            pick = policy_rule(policy.eval())
            continue
        t0 = time.perf_counter()
        new = collect(teacher, data, pick, per, generator, progress, early)
        data_rows = new if data_rows is None else tuple(torch.cat([a, b]) for a, b in zip(data_rows, new))
        policy = CellPolicy(data_rows[0].shape[1], grid, width, classes, boxes)
        with torch.no_grad():
            policy.state_mean.copy_(data_rows[0].mean((0, 2)))
            policy.state_std.copy_(data_rows[0].std((0, 2)).clamp_min(1e-3))
        loss = fit(policy, data_rows, tau, epochs, generator)
        log.append({"round": r + 1, "teacher_states": int(len(data_rows[0])), "loss": round(loss, 4),
                    "seconds": round(time.perf_counter() - t0, 1), "forwards_total": teacher.n_forward})
        if progress:
            print(f"rexl imitation: {log[-1]}", flush=True)
        pick = policy_rule(policy)
        if saved is not None:
            directory.mkdir(parents=True, exist_ok=True)
            torch.save({"key": resume_key, "data": data_rows, "log": log, "policy": policy.state_dict(),
                        "generator": generator.get_state()}, saved.with_suffix(".tmp"))
            saved.with_suffix(".tmp").replace(saved)
    summary = {"algorithm": ALGORITHM, "regime": "dataset", "rounds": log, "n_forward": teacher.n_forward,
               "steps": teacher.n_forward,     # canvases scored (roll-outs and look-ahead): the environment's steps
               "seconds": round(sum(r["seconds"] for r in log), 1),      # every round's, restored ones included
               "seconds_this_run": round(time.perf_counter() - start, 1), **{k: v for k, v in settings.items()
                                                                    if k != "model_sha256"},
               "threads": torch.get_num_threads()}
    ckpt = PolicyCheckpoint.for_cell_policy(policy, teacher.features, model_sha256=settings["model_sha256"],
                                            perturbation=settings["perturbation"],
                                            training={**(training or {}), **summary},
                                            mode=getattr(teacher, "mode", "deletion"))
    return ckpt, summary


def detector_setup(args: argparse.Namespace):
    """The detector of a ``--model detector`` run (``--weights``, else params.yaml's ``infer.detectors[0]`` as infer
    runs it, CPU), its training scenes, its person class name and the training record."""
    from tasks.params import TRAINING_DATA
    from tasks.rexl_train import params_detector, training_scenes
    detector, spec = params_detector(args.weights)
    training = {"model": "detector", "weights": args.weights or spec.weights, "images": args.images,
                "data": TRAINING_DATA}
    return detector, training_scenes(args.images), spec.person_class, training


# per model, what the command line leaves out (the detector's: its shipped policy's recipe; early None: all steps)
DEFAULTS = {"classifier": {"images": 48, "grid": 7, "rounds": 2, "per": 6, "early": None},
            "detector": {"images": 192, "grid": 9, "rounds": 3, "per": 2, "early": 8}}


def main(argv: list[str] | None = None) -> None:
    from tasks.rexl_train import add_cell_policy_arguments, cell_policy_setup
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_policy_arguments(parser, images=None, grid=None)
    parser.add_argument("--model", choices=tuple(DEFAULTS), default="classifier",
                        help="detector: a box-conditioned policy for params.yaml's infer.detectors[0] (--weights: "
                             "another YOLO .pt; --blocks is the classifier's, --layers the detector's)")
    parser.add_argument("--layers", default="0,1", help="detector: the head's input maps pooled to the grid")
    parser.add_argument("--min-height", type=float, default=60.0, help="detector: smallest pedestrian (px)")
    parser.add_argument("--mode", choices=rexl.MODES, default="deletion",
                        help="detector: insertion trains a policy that restores the pedestrian from the substrate")
    parser.add_argument("--perturbation", default=None,
                        help="the substrate (explainers.perturb; default: mean for deletion, blur for insertion)")
    parser.add_argument("--rounds", type=int, default=None, help="default: 2 (classifier), 3 (detector)")
    parser.add_argument("--per", type=int, default=None, help="teacher steps per roll-out (default: 6 / 2)")
    parser.add_argument("--eps", type=float, default=0.3, help="round 1: random-cell probability")
    parser.add_argument("--tau", type=float, default=0.3, help="teacher softmax temperature (log-odds)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--early", type=int, default=None,
                        help="teacher steps from the first EARLY (>= --per) steps of each roll-out (0: any step; "
                             "default: any for the classifier, 8 for the detector)")
    parser.add_argument("--checkpoint-dir", default=None, help="finished rounds (a rerun resumes after them)")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.model].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    common = dict(grid=args.grid, rounds=args.rounds, per=args.per, eps=args.eps, early=args.early,
                  tau=args.tau, epochs=args.epochs, width=args.width, seed=args.seed,
                  checkpoint_dir=args.checkpoint_dir, progress=not args.no_progress)
    common["perturbation"] = args.perturbation or default_substrate(args.mode)
    if args.model == "detector":
        torch.set_num_threads(args.threads)
        detector, images, person, training = detector_setup(args)
        ckpt, summary = train_look_ahead_boxes(detector, images, layers=[int(x) for x in args.layers.split(",")],
                                               min_height=args.min_height, person=person, training=training,
                                               mode=args.mode, **common)
    else:
        if args.mode != "deletion":
            parser.error("--mode insertion: cell policies of a classifier are deletion-only (use --model detector, "
                         "or tasks.rexl_train's MLP policy)")
        scorer, images, blocks, training = cell_policy_setup(args)
        ckpt, summary = train_look_ahead(scorer, images, blocks=blocks, training=training, **common)
    ckpt.save(args.out)
    print(summary, flush=True)


if __name__ == "__main__":
    main()
