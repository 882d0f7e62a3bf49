"""Training a RExL *cell policy* (``explainers.rexl.CellPolicy``) with stable-baselines3: MaskablePPO whose actor is
the cell policy itself.

Learner: **MaskablePPO** (sb3-contrib), as ``tasks.rexl_train``, on the same vectorised environment
(``tasks.rexl_env.RexlVecEnv``: every step scores N canvases in one batched pass of the classifier, whose
``CellFeatures`` give the state and the class probabilities at once). What differs is the policy network: an SB3
``MaskableActorCriticPolicy`` (:class:`CellActorCriticPolicy`) whose actor logits are a
:class:`~explainers.rexl.CellPolicy` (one weight-shared scorer per cell, ``action_net`` is the identity) and whose
critic reads the same per-cell state through its own small convolution, mean- and max-pooled over the cells. The
exported actor is what ``explainers.rexl.Rexl`` rolls out, with no RL library.

Two starts:

* ``init=None``: PPO from scratch (PyTorch's default initialisation; the state standardisation is measured on the
  states of a seeded random roll-out of the first pool episodes).
* ``init=<cell PolicyCheckpoint>`` (the DAgger policy of ``tasks.rexl_imitation``, trained on the same training
  scenes): PPO *fine-tunes* it (behaviour cloning then PPO, as e.g. AlphaStar and most RL-from-demonstration recipes
  do). The critic is fitted alone first (``warmup_steps`` with the actor frozen: PPO's advantages from an untrained
  critic would push a good actor anywhere), then both train. The checkpoint must be for the same classifier
  (weights fingerprint), grid, perturbation and feature blocks: ValueError otherwise.

Reward: the environment's, sign * (s_{t-1} + s_t) / (2 k^2) (with gamma 1 the return is the cell-granularity
deletion AUC, negated), by default shaped (``shaping``: potential-based, each step's reward sign * (s_t - s_{t-1}) *
(k^2 - t + 1/2) / k^2, the return the AUC term less sign * s_0; with gamma 1 over the whole game the same optimal
policy), times ``reward_scale`` for the learner; ``shaping_units='log_odds'`` measures the step's change in the
score's log-odds (the imitation teacher's units) instead. **Discount:** ``gamma`` 0.5 by default, a short horizon:
with the shaped reward a step's advantage is mostly its own score drop (the next steps' weigh 1/2, 1/4, ...), less
the critic's estimate. At gamma 0 (a *myopic* PPO, no bootstrapped future) that is the objective of the DAgger
teacher (``tasks.rexl_imitation``: the cell that drops the score most now) learned from one sampled action per
state; either has far less variance than a 48-step return, and neither is the game's optimum in general (a cell
worth deleting only together with a later one is credited little); the paper's gamma 1 is ``--gamma 1``. Data: the
classifier's training scenes only (``tasks.rexl_train.training_scenes``), every (scene, class) pair, class one-hot
conditioning (the dataset-wide regime). Seeded, resumable (``checkpoint_dir/last.zip``, SB3's, at the first roll-out
boundary after every ``checkpoint_every`` steps; a resumed run is repeatable but not identical to an uninterrupted
one: SB3 reseeds torch and the episode stream restarts from seed + steps done), progress bar, ``time_limit_s`` stops
a run at a wall-time budget. The summary's ``n_forward`` counts the environment's canvases (not the few of the
standardisation probe).

Recipe (this module's defaults and ``params.yaml``'s ``rexl.classifier`` with ``weights: null``; the shipped
``weights/demo/rexl_classifier_deletion_cells_ppo.pt``, the ``rexl`` job's default policy, is what it trained,
199,136 steps in 843 s beside another training): from scratch, 256 training scenes x 4 classes, 2 x 10^5 steps, 32
envs x 49 steps per roll-out, lr 3e-4, 4 epochs of batches of 256, clip 0.2, **gamma 0.5** with **potential-based
reward shaping** (``RexlVecEnv``), GAE lambda 0.5, no entropy bonus, rewards x 10. Chosen on training scenes
896..911 x 4 classes (never trained on; mean / median cell deletion AUC of the deterministic roll-out, lower is
better): gamma 0.5: 0.312 / 0.178; gamma 0: 0.314 / 0.193; gamma 0 with 8 epochs: 0.335 / 0.199; gamma 0, shaped in
log-odds (rewards x 1): 0.319 / 0.196; the DAgger policy 0.321 / 0.203. With gamma 1 before them: shaped, lambda
0.5: 0.342 / 0.227; shaped, lambda 0.95 / 0.2: 0.396 / 0.269, 0.356 / 0.260; shaped, lambda 0.5, 8 epochs: 0.362 /
0.273; unshaped, lambda 0.95: 0.394 / 0.249; lr 1e-3 with 10 epochs 0.488 / 0.439; lr 1e-3, 16-step roll-outs,
lambda 0.5, 10 epochs 0.386 / 0.274; PPO fine-tuning the DAgger policy 0.323 / 0.192 (lr 1e-4, clip 0.1, 40k steps),
0.342 / 0.220 (lr 3e-4, 10 epochs, 50k of 80k steps), 0.327 / 0.196 (logits x 5 first, 60k steps).
``benchmarks/bench_rexl_ppo.py`` scores policy files that way.

    python -m tasks.rexl_cells_ppo --out F.pt         # the recipe (its defaults)
    python -m tasks.rexl_cells_ppo --init weights/demo/rexl_classifier_deletion_cells.pt --init-sharpen 5 \\
        --steps 60000 --lr 1e-4 --clip-range 0.1 --no-shaping --gamma 1 --gae-lambda 0.95 --out F.pt
                                     # a fine-tune of the DAgger policy as measured above (before shaping)
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from sb3_contrib import MaskablePPO
from sb3_contrib.common.maskable.policies import MaskableActorCriticPolicy
from torch import nn

from explainers.rexl import CellFeatures, CellPolicy, PolicyCheckpoint
from explainers.trained import weights_fingerprint
from tasks.rexl_env import SHAPING_UNITS, Episode, EpisodeBatch, RexlVecEnv
from tasks.rexl_train import (
    _LastCheckpoint,
    add_cell_policy_arguments,
    cell_policy_setup,
    classifier_episodes,
    save_last,
)

ALGORITHM = "MaskablePPO (sb3-contrib), cell-policy actor"


class CellActorCritic(nn.Module):
    """SB3's ``mlp_extractor`` for a cell policy: ``forward_actor`` obs [N, S k^2] -> the :class:`CellPolicy` logits
    [N, k^2] (latent_dim_pi = k^2; the policy's ``action_net`` is the identity), ``forward_critic`` -> [N, 2 w]: the
    standardised state through 1 x 1 conv S -> w, ReLU, 3 x 3 conv, ReLU, then the mean and the max over cells."""

    def __init__(self, channels: int, grid: int, width: int, classes: int, value_width: int = 32,
                 boxes: bool = False):
        super().__init__()
        self.actor = CellPolicy(channels, grid, width, classes, boxes)
        self.critic = nn.Sequential(nn.Conv2d(channels, value_width, 1), nn.ReLU(),
                                    nn.Conv2d(value_width, value_width, 3, padding=1), nn.ReLU())
        self.latent_dim_pi, self.latent_dim_vf = grid * grid, 2 * value_width

    def forward_actor(self, obs: torch.Tensor) -> torch.Tensor:
        return self.actor(obs)

    def forward_critic(self, obs: torch.Tensor) -> torch.Tensor:
        a = self.actor
        s = obs.view(obs.shape[0], a.channels, a.grid, a.grid)
        s = (s - a.state_mean.view(1, -1, 1, 1)) / a.state_std.view(1, -1, 1, 1)
        h = self.critic(s)
        return torch.cat([h.mean((2, 3)), h.amax((2, 3))], 1)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.forward_actor(obs), self.forward_critic(obs)


class CellActorCriticPolicy(MaskableActorCriticPolicy):
    """MaskablePPO's policy with a :class:`CellActorCritic` extractor (``cell_kwargs``: channels, grid, width,
    classes, value_width, boxes) and the identity as ``action_net``; no orthogonal initialisation."""

    def __init__(self, *args, cell_kwargs: dict, **kwargs):
        self.cell_kwargs = dict(cell_kwargs)
        kwargs["ortho_init"] = False
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        self.mlp_extractor = CellActorCritic(**self.cell_kwargs)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        self.action_net = nn.Identity()                  # the actor's logits are the cell policy's own
        self.optimizer = self.optimizer_class(self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _get_constructor_parameters(self) -> dict:
        return {**super()._get_constructor_parameters(), "cell_kwargs": self.cell_kwargs}


def random_state_stats(batch: EpisodeBatch, episodes: Sequence[Episode], seed: int) -> tuple[torch.Tensor, ...]:
    """Per-channel mean and std [S] (std floored at 1e-3) of the cell states along a seeded random roll-out of
    ``episodes``: the fixed standardisation of a policy trained from scratch."""
    g = torch.Generator().manual_seed(seed)
    states = [batch.start(episodes)]
    for _ in range(batch.game.cells - 1):
        free = (~batch.game.taken).float()
        batch.step(torch.multinomial(free, 1, generator=g)[:, 0].numpy())
        states.append(batch.observe())
    s = torch.cat(states)
    channels = s.shape[1] // batch.game.cells
    s = s.view(len(s), channels, batch.game.cells)
    return s.mean((0, 2)), s.std((0, 2)).clamp_min(1e-3)


def rollout_auc(batch: EpisodeBatch, episodes: Sequence[Episode], policy: CellPolicy) -> torch.Tensor:
    """The cell-granularity deletion AUC [N] of ``policy``'s deterministic roll-out of each episode (the env's
    return, sign-corrected): the selection score of a training run."""
    obs = batch.start(episodes)
    for _ in range(batch.game.cells):
        with torch.no_grad():
            actions = policy.act(obs, batch.game.taken)
        batch.step(actions.cpu().numpy())
        obs = batch.observe()
    return batch.game.sign * batch.returns


def check_init(init: PolicyCheckpoint, fingerprint: str, grid: int, perturbation: str, blocks: Sequence[int]) -> None:
    """Raises ValueError naming what differs when ``init`` is not a cell policy for this classifier and game."""
    wrong = {k: (got, want) for k, got, want in (
        ("arch", init.arch, "cells"), ("model_sha256", init.model_sha256, fingerprint), ("grid", init.grid, grid),
        ("perturbation", init.perturbation, perturbation),
        ("blocks", list(init.features.get("blocks", [])), list(blocks))) if got != want}
    if wrong:
        raise ValueError("rexl ppo: the initial policy does not fit this training run: " +
                         ", ".join(f"{k} {g!r} (here {w!r})" for k, (g, w) in wrong.items()))


def train_cells_ppo(scorer, images: Sequence[torch.Tensor], *, init: PolicyCheckpoint | None = None,
                    grid: int = 7, blocks: Sequence[int] = (2, 3), perturbation: str = "mean", steps: int = 200_000,
                    n_envs: int = 32, n_steps: int | None = None, learning_rate: float = 3e-4,
                    batch_size: int = 256, n_epochs: int = 4, clip_range: float = 0.2, ent_coef: float = 0.0,
                    gae_lambda: float = 0.5, reward_scale: float = 10.0, width: int = 64, value_width: int = 32,
                    horizon: int | None = None, shaping: bool = True, shaping_units: str = "score",
                    gamma: float = 0.5, warmup_steps: int | None = None,
                    init_sharpen: float = 1.0, seed: int = 0,
                    checkpoint_dir: str | Path | None = None, checkpoint_every: int | None = 10_000,
                    time_limit_s: float | None = None, progress: bool = False,
                    training: dict | None = None) -> tuple[PolicyCheckpoint, dict]:
    """A cell policy for ``scorer``'s classifier (a ``ClassifierScorer`` over its classes) trained by MaskablePPO on
    every (image, class) of ``images`` [3, H, W] (training scenes, one size) for ``steps`` environment steps (one
    step = one canvas of one env; rounded down to whole roll-outs of n_envs x n_steps). ``init``: a cell policy to
    fine-tune (module docstring); ``warmup_steps``: steps with the actor frozen (default: 4 roll-outs when
    fine-tuning, 0 from scratch); ``init_sharpen``: the initial policy's logits are multiplied by it (the same
    arg-max; PPO then samples close to the deterministic roll-out that ships instead of from the imitation target's
    soft distribution). Returns the checkpoint (arch 'cells', deletion, class conditioning) and a summary. Raises
    ValueError for an ``init`` that does not fit, fewer steps than one roll-out, or a fine-tune's warm-up as long as
    its steps. ``horizon``: the environment's episodes end after this many steps (``RexlVecEnv``; default k^2, the
    whole game; the summary's ``auc_first`` / ``auc_last`` are then areas of the first ``horizon`` cells); the
    roll-out length ``n_steps`` defaults to it. ``shaping``: the environment's potential-based reward shaping
    (``RexlVecEnv``: each step's score change weighted by the cells to go; at gamma 1, over the whole game, the same
    optimal policy); it applies to fine-tunes too; ``shaping_units``: 'score' or 'log_odds' (``RexlVecEnv``). ``gamma``:
    PPO's discount (0: myopic, module docstring; 1: the game's return). A resumed run keeps the horizon and shaping
    it is given (not checked against the saved model's) and the PPO settings saved in ``last.zip`` (SB3's load
    restores them, gamma included)."""
    horizon = grid * grid if horizon is None else int(horizon)
    n_steps = int(n_steps or horizon)
    rollout = n_envs * n_steps
    if steps < rollout:
        raise ValueError(f"rexl ppo: steps {steps} < one roll-out (n_envs {n_envs} x n_steps {n_steps})")
    steps = steps // rollout * rollout            # whole roll-outs, never more than asked (SB3 would round up)
    fingerprint = weights_fingerprint(scorer)
    if init is not None:
        check_init(init, fingerprint, grid, perturbation, blocks)
        width = int(init.width)
    warmup = int((4 * rollout if init is not None else 0) if warmup_steps is None else warmup_steps)
    if init is not None and warmup >= steps:
        raise ValueError(f"rexl ppo: a fine-tune's warm-up ({warmup} steps, the actor frozen) must be shorter than "
                         f"its {steps} steps (whole roll-outs of {rollout}), or the actor never trains")
    torch.manual_seed(seed)
    np.random.seed(seed)
    start = time.perf_counter()
    features = CellFeatures(scorer.model, blocks, grid)
    classes = int(features.spec["classes"])
    episodes, _ = classifier_episodes(images, classes, "dataset")

    def make_batch():
        return EpisodeBatch(scorer, features, grid=grid, mode="deletion", perturbation=perturbation, norm=None)

    return run_ppo(make_batch, episodes, features, fingerprint=fingerprint, perturbation=perturbation, grid=grid,
                   classes=classes, init=init, warmup=warmup, init_sharpen=init_sharpen, steps=steps, n_envs=n_envs,
                   n_steps=n_steps, learning_rate=learning_rate, batch_size=batch_size, n_epochs=n_epochs,
                   clip_range=clip_range, ent_coef=ent_coef, gamma=gamma, gae_lambda=gae_lambda,
                   reward_scale=reward_scale, width=width, value_width=value_width, horizon=horizon, shaping=shaping,
                   shaping_units=shaping_units, seed=seed, checkpoint_dir=checkpoint_dir,
                   checkpoint_every=checkpoint_every, time_limit_s=time_limit_s, progress=progress, start=start,
                   summary_extra={"blocks": list(blocks), "images": len(images)}, training=training)


def run_ppo(make_batch, episodes: Sequence[Episode], features, *, fingerprint: str, perturbation: str, grid: int,
            classes: int, init: PolicyCheckpoint | None, warmup: int, init_sharpen: float, steps: int, n_envs: int,
            n_steps: int, learning_rate: float, batch_size: int, n_epochs: int, clip_range: float, ent_coef: float,
            gamma: float, gae_lambda: float, reward_scale: float, width: int, value_width: int, horizon: int,
            shaping: bool, shaping_units: str, seed: int, checkpoint_dir, checkpoint_every: int | None,
            time_limit_s: float | None, progress: bool, start: float, summary_extra: dict,
            training: dict | None, mode: str = "deletion", boxes: bool = False) -> tuple[PolicyCheckpoint, dict]:
    """MaskablePPO of a :class:`CellActorCriticPolicy` on the cell game of ``episodes``, whose engine
    ``make_batch()`` builds (an ``EpisodeBatch``, or for a detector a ``tasks.rexl_boxes_ppo.TeacherBatch``; one for
    the environment, one for the from-scratch standardisation probe): the part :func:`train_cells_ppo` and
    ``tasks.rexl_boxes_ppo.train_boxes_ppo`` share (their docstrings have the arguments). Returns the checkpoint of
    the trained actor and the run's summary."""
    directory = None if checkpoint_dir is None else Path(checkpoint_dir)
    last = None if directory is None else directory / "last.zip"
    resumed = last is not None and last.is_file()
    done_before = int(MaskablePPO.load(last, device="cpu").num_timesteps) if resumed else 0
    env = RexlVecEnv(None, episodes, n_envs, None, grid=grid, mode=mode, seed=seed + done_before,
                     reward_scale=reward_scale, horizon=horizon, shaping=shaping, shaping_units=shaping_units,
                     batch=make_batch())
    channels = env.obs_dim // (grid * grid)
    if resumed:
        model = MaskablePPO.load(last, env=env, device="cpu")
    else:
        model = MaskablePPO(CellActorCriticPolicy, env, gamma=gamma, gae_lambda=gae_lambda,
                            learning_rate=learning_rate, n_steps=n_steps, batch_size=min(batch_size, n_envs * n_steps),
                            n_epochs=n_epochs, clip_range=clip_range, ent_coef=ent_coef, seed=seed, device="cpu",
                            verbose=0, policy_kwargs={"cell_kwargs": {"channels": channels, "grid": grid,
                                                                      "width": width, "classes": classes,
                                                                      "value_width": value_width, "boxes": boxes}})
        actor = model.policy.mlp_extractor.actor
        if init is not None:
            actor.load_state_dict(init.state_dict)
            with torch.no_grad():                 # sharpen: the same arg-max, a sampled policy close to it
                actor.net[-1].weight.mul_(init_sharpen)
                actor.net[-1].bias.mul_(init_sharpen)
        else:
            mean, std = random_state_stats(make_batch(), episodes[:n_envs], seed)
            actor.state_mean.copy_(mean)
            actor.state_std.copy_(std)
    actor = model.policy.mlp_extractor.actor
    callback = _LastCheckpoint(directory, checkpoint_every, time_limit_s, start)
    for phase_end, frozen in ((warmup, True), (steps, False)):
        remaining = max(0, phase_end - int(model.num_timesteps))
        if not remaining or callback.stopped:
            continue
        for p in actor.parameters():
            p.requires_grad_(not frozen)      # frozen: no gradient, so Adam leaves the actor's weights alone
        model.learn(total_timesteps=remaining, reset_num_timesteps=False, progress_bar=progress, callback=callback)
    for p in actor.parameters():
        p.requires_grad_(True)
    if directory is not None:
        save_last(model, directory)
    aucs = callback.aucs
    tenth = max(1, len(aucs) // 10)
    summary = {"algorithm": ALGORITHM, "regime": "dataset", "init": None if init is None else init.digest(),
               "init_training_seconds": None if init is None else init.training.get("seconds"),
               "init_training_steps": None if init is None else init.training.get("steps"),
               "steps": int(model.num_timesteps), "warmup_steps": warmup, "init_sharpen": init_sharpen,
               "resumed": resumed,
               "seconds": round(time.perf_counter() - start, 1), "stopped_by_time_limit": callback.stopped,
               "time_limit_s": time_limit_s, "n_forward": env.batch.n_forward,
               "n_feature_forward": env.batch.n_feature_forward, "fused": env.batch.fused, "episodes": len(aucs),
               "auc_first": float(np.mean(aucs[:tenth])) if aucs else None,
               "auc_last": float(np.mean(aucs[-tenth:])) if aucs else None, "seed": seed, "n_envs": n_envs,
               "n_steps": n_steps, "horizon": horizon, "shaping": shaping,
               "shaping_units": shaping_units, "gamma": float(model.gamma), "learning_rate": learning_rate,
               "batch_size": batch_size, "n_epochs": n_epochs,
               "clip_range": clip_range, "ent_coef": ent_coef, "gae_lambda": gae_lambda, "reward_scale": reward_scale,
               "width": width, "value_width": value_width, **summary_extra, "threads": torch.get_num_threads()}
    ckpt = PolicyCheckpoint.for_cell_policy(actor, features, model_sha256=fingerprint, perturbation=perturbation,
                                            training={**(training or {}), **summary}, mode=mode)
    return ckpt, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_cell_policy_arguments(parser, images=256)
    parser.add_argument("--init", default=None, help="a cell policy file to fine-tune (default: from scratch)")
    parser.add_argument("--steps", type=int, default=200_000)
    parser.add_argument("--warmup-steps", type=int, default=None)
    parser.add_argument("--init-sharpen", type=float, default=1.0, help="the initial policy's logits x this")
    parser.add_argument("--n-envs", type=int, default=32)
    parser.add_argument("--n-steps", type=int, default=None, help="roll-out length per env (default: the horizon)")
    parser.add_argument("--horizon", type=int, default=None,
                        help="episodes end after this many cells (default k^2: the whole game)")
    parser.add_argument("--shaping", action=argparse.BooleanOptionalAction, default=True,
                        help="potential-based reward shaping (tasks.rexl_env.RexlVecEnv): each step's drop, weighted "
                             "by the cells to go, as its reward; with --gamma 1, over the whole game, the same "
                             "optimal policy (default: on)")
    parser.add_argument("--shaping-units", choices=SHAPING_UNITS, default="score",
                        help="the shaped reward's units: the score, or its log-odds (the imitation teacher's)")
    parser.add_argument("--gamma", type=float, default=0.5,
                        help="PPO's discount (default 0.5: a short horizon; 0: each step's shaped reward alone, a "
                             "myopic learner; 1: the return is the AUC)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=3e-4)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--clip-range", type=float, default=0.2)
    parser.add_argument("--ent-coef", type=float, default=0.0)
    parser.add_argument("--gae-lambda", type=float, default=0.5)
    parser.add_argument("--reward-scale", type=float, default=10.0)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--time-limit", type=float, default=None, help="stop after this many seconds (budget)")
    parser.add_argument("--checkpoint-dir", default=None, help="SB3 checkpoints (resumes from last.zip there)")
    parser.add_argument("--checkpoint-every", type=int, default=10_000)
    args = parser.parse_args(argv)
    scorer, images, blocks, training = cell_policy_setup(args)
    ckpt, summary = train_cells_ppo(
        scorer, images, init=None if args.init is None else PolicyCheckpoint.load(args.init), grid=args.grid,
        blocks=blocks, steps=args.steps, warmup_steps=args.warmup_steps,
        init_sharpen=args.init_sharpen,
        n_envs=args.n_envs, n_steps=args.n_steps, horizon=args.horizon, shaping=args.shaping,
        shaping_units=args.shaping_units, gamma=args.gamma, batch_size=args.batch_size, learning_rate=args.lr,
        n_epochs=args.n_epochs, clip_range=args.clip_range,
        ent_coef=args.ent_coef, gae_lambda=args.gae_lambda, reward_scale=args.reward_scale, width=args.width,
        seed=args.seed, checkpoint_dir=args.checkpoint_dir, checkpoint_every=args.checkpoint_every,
        time_limit_s=args.time_limit, progress=not args.no_progress,
        training={**training, "init_file": args.init})
    ckpt.save(args.out)
    print(summary, flush=True)


if __name__ == "__main__":
    main()
