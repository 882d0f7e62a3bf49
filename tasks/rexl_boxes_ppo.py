"""Training a RExL *box-conditioned cell policy* for a detector with stable-baselines3: MaskablePPO whose actor is
the cell policy (``explainers.rexl.CellPolicy`` with ``boxes``), as ``tasks.rexl_cells_ppo`` trains a classifier's.

The game is the one ``tasks.rexl_imitation``'s detector recipe plays (:class:`~tasks.rexl_imitation.BoxTeacher`):
every ``person`` detection at least ``min_height`` px tall that the detector finds on its training scenes
(``tasks.rexl_train.detector_episodes``: one ``DRiseScorer`` over all of them, so canvases of different scenes are
scored in one detector call) is one episode; a step deletes (``mode`` 'insertion': restores from the substrate) one
cell of a k x k grid and the detector's pass of the new canvases gives both the detection's D-RISE score and the
policy's state (``explainers.rexl_detector.box_cell_state``: the head's input maps ``layers`` pooled to the grid,
the target's support map, the box's cover of each cell, the taken cells, the score). :class:`TeacherBatch` gives
that game the interface of ``tasks.rexl_env.EpisodeBatch``, so the environment is the same
``tasks.rexl_env.RexlVecEnv`` (N episodes in lockstep, one batched detector call a step) and the learner the same
``tasks.rexl_cells_ppo.run_ppo``: MaskablePPO (sb3-contrib; ACER, the paper's learner, is not in SB3, and masking
the taken cells is what the game needs) with the shaped reward (potential-based, each step's score change weighted
by the cells to go) and a short discount (gamma 0.5), the classifier recipe chosen on its select scenes
(``benchmarks/README.md``, "A myopic PPO").

Why a ``horizon``: with the mean colour this detector's score has fallen to near zero within the first few cells of
any sensible order, so a pixel deletion AUC is decided there (the imitation recipe draws its teacher states from the
first 8 steps for the same reason). Episodes end after ``horizon`` cells (default 16 of 81): a roll-out of 32 envs
is 512 detector forwards, and the step budget holds five times more episodes. The policy is still rolled out over
every cell when it explains (the late cells then carry almost no credit).

Data: the detector's training scenes only (``tasks.rexl_train.training_scenes``), never the audited / val / held-out
scenes. Seeded, resumable (SB3's ``checkpoint_dir/last.zip``), progress bar, ``time_limit_s`` (the issue's 20-minute
budget). ``n_forward`` in the summary counts the detector's canvases (insertion: one more pass per episode, the
image's).

    python -m tasks.rexl_boxes_ppo --threads 2 --time-limit 1170 --out F.pt            # deletion
    python -m tasks.rexl_boxes_ppo --mode insertion --perturbation mean --threads 2 --out F.pt
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

import numpy as np
import torch

from explainers.metrics import default_substrate
from explainers.rexl import MODES, PolicyCheckpoint
from explainers.rexl_detector import DetectorCellFeatures
from explainers.trained import weights_fingerprint
from tasks.rexl_cells_ppo import run_ppo
from tasks.rexl_env import SHAPING_UNITS, Episode, EpisodeBatch
from tasks.rexl_imitation import BoxTeacher, detector_setup


class TeacherBatch(EpisodeBatch):
    """``tasks.rexl_env.EpisodeBatch`` over a :class:`~tasks.rexl_imitation.BoxTeacher`'s game: its own
    :meth:`start`, :meth:`observe` and scoring pass (one detector pass per step gives the canvases' scores and
    states: ``fused``, no separate feature pass); :meth:`~tasks.rexl_env.EpisodeBatch.step` and ``masks`` are the
    base class's."""

    fused = True

    def __init__(self, teacher: BoxTeacher):             # no scorer / features of its own: the teacher's
        self.teacher = teacher
        self.n_feature_forward = 0
        self.game = None

    @property
    def n_forward(self) -> int:
        return self.teacher.n_forward

    @n_forward.setter
    def n_forward(self, value: int) -> None:
        self.teacher.n_forward = int(value)

    def _score(self, canvases: torch.Tensor) -> torch.Tensor:
        """The targets' scores [N] of ``canvases`` [N, 3, H, W]; keeps their features for :meth:`observe`."""
        self.feats = self.teacher.run(canvases, self.cols)
        return self.teacher.score(self.feats, self.cols)

    def start(self, episodes: Sequence[Episode]) -> torch.Tensor:
        """Begin ``episodes`` (one image size); returns their first states [N, S k^2]."""
        if not episodes:
            raise ValueError("rexl boxes ppo: no episodes to start")
        self.game, self.condition, self.cols = self.teacher.start(episodes)
        self.prev = self._score(self.game.canvas())
        self.curve = [self.prev]
        self.returns = torch.zeros(len(episodes))
        return self.observe()

    def observe(self) -> torch.Tensor:
        return self.teacher.state(self.feats, self.game.taken, self.condition).flatten(1)


def train_boxes_ppo(detector, images: Sequence[torch.Tensor], *, mode: str = "deletion",
                    perturbation: str | None = None, grid: int = 9, layers: Sequence[int] = (0, 1),
                    min_height: float = 60.0, person: str = "person", steps: int = 200_000, n_envs: int = 32,
                    horizon: int | None = 16, n_steps: int | None = None, learning_rate: float = 3e-4,
                    batch_size: int = 256, n_epochs: int = 4, clip_range: float = 0.2, ent_coef: float = 0.0,
                    gamma: float = 0.5, gae_lambda: float = 0.5, reward_scale: float = 10.0, shaping: bool = True,
                    shaping_units: str = "score", width: int = 64, value_width: int = 32, seed: int = 0,
                    checkpoint_dir=None, checkpoint_every: int | None = 10_000, time_limit_s: float | None = None,
                    progress: bool = False, training: dict | None = None) -> tuple[PolicyCheckpoint, dict]:
    """A box-conditioned cell policy for ``detector`` (a ``detection.models.yolo.YoloDetector``) trained by
    MaskablePPO from scratch on its ``person`` detections >= ``min_height`` px in the training ``images`` [3, H, W]
    (module docstring) for at most ``steps`` environment steps (detector canvases; whole roll-outs of ``n_envs`` x
    ``n_steps``, default the horizon) or ``time_limit_s`` seconds. ``mode``: 'deletion' or 'insertion';
    ``perturbation``: the substrate (default: mean for deletion, blur for insertion); ``horizon``: cells per episode
    (None: every cell); the PPO settings as ``tasks.rexl_cells_ppo.train_cells_ppo``'s. Returns the checkpoint
    (``mode``, box conditioning, features ``detector_cells``, arch 'cells') and a summary. Raises ValueError for an
    unknown mode, a horizon outside [1, grid^2], fewer steps than one roll-out, and when the detector finds no
    pedestrian."""
    from tasks.rexl_train import detector_episodes
    if mode not in MODES:
        raise ValueError(f"rexl boxes ppo: mode must be one of {MODES}, got {mode!r}")
    perturbation = perturbation or default_substrate(mode)
    horizon = grid * grid if horizon is None else int(horizon)
    if not 1 <= horizon <= grid * grid:
        raise ValueError(f"rexl boxes ppo: horizon must be in [1, {grid * grid}] (grid {grid}), got {horizon}")
    n_steps = int(n_steps or horizon)
    rollout = n_envs * n_steps
    if steps < rollout:
        raise ValueError(f"rexl boxes ppo: steps {steps} < one roll-out (n_envs {n_envs} x n_steps {n_steps})")
    steps = steps // rollout * rollout
    torch.manual_seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    scorer, episodes = detector_episodes(detector, images, grid, min_height, person)
    features = DetectorCellFeatures(scorer, layers, grid)

    def make_batch():
        return TeacherBatch(BoxTeacher(features, grid, perturbation, mode=mode))

    extra = {"layers": list(layers), "min_height": min_height, "images": len(images), "pedestrians": len(episodes),
             "perturbation": perturbation, "mode": mode}
    return run_ppo(make_batch, episodes, features, fingerprint=weights_fingerprint(scorer),
                   perturbation=perturbation, grid=grid, classes=0, init=None, warmup=0, init_sharpen=1.0,
                   steps=steps, n_envs=n_envs, n_steps=n_steps, learning_rate=learning_rate, batch_size=batch_size,
                   n_epochs=n_epochs, clip_range=clip_range, ent_coef=ent_coef, gamma=gamma, gae_lambda=gae_lambda,
                   reward_scale=reward_scale, width=width, value_width=value_width, horizon=horizon,
                   shaping=shaping, shaping_units=shaping_units, seed=seed, checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, time_limit_s=time_limit_s, progress=progress, start=start,
                   summary_extra=extra, training=training, mode=mode, boxes=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", default=None, help="the detector (default: params.yaml's infer.detectors[0])")
    parser.add_argument("--images", type=int, default=192, help="training scenes")
    parser.add_argument("--mode", choices=MODES, default="deletion")
    parser.add_argument("--perturbation", default=None, help="default: mean (deletion), blur (insertion)")
    parser.add_argument("--grid", type=int, default=9)
    parser.add_argument("--layers", default="0,1", help="the head's input maps pooled to the grid")
    parser.add_argument("--min-height", type=float, default=60.0)
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--n-envs", type=int, default=32)
    parser.add_argument("--horizon", type=int, default=16, help="cells per episode (0: every cell)")
    parser.add_argument("--gamma", type=float, default=0.5)
    parser.add_argument("--gae-lambda", type=float, default=0.5)
    parser.add_argument("--shaping", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--shaping-units", choices=SHAPING_UNITS, default="score")
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--reward-scale", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (budget)")
    parser.add_argument("--checkpoint-dir", default=None, help="SB3 checkpoints (resumes from last.zip there)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    detector, images, person, training = detector_setup(args)
    ckpt, summary = train_boxes_ppo(
        detector, images, mode=args.mode, perturbation=args.perturbation, grid=args.grid,
        layers=[int(x) for x in args.layers.split(",")], min_height=args.min_height, person=person,
        steps=args.steps, n_envs=args.n_envs, horizon=args.horizon or None, gamma=args.gamma,
        gae_lambda=args.gae_lambda, shaping=args.shaping, shaping_units=args.shaping_units, learning_rate=args.lr,
        n_epochs=args.n_epochs, reward_scale=args.reward_scale, seed=args.seed, checkpoint_dir=args.checkpoint_dir,
        time_limit_s=args.time_limit, progress=not args.no_progress, training=training)
    ckpt.save(args.out)
    print(summary, flush=True)


if __name__ == "__main__":
    main()
