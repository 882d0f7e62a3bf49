"""The RExL cell game as a Gymnasium environment (``explainers.rexl`` has the game, the state and the policy).

:class:`RexlVecEnv` is a stable-baselines3 ``VecEnv`` whose N episodes advance in lockstep: every step scores the N
canvases in one batched scorer call (chunks of the scorer's ``chunk_size``) and computes their features in one
batched feature call, never one image per forward. Episodes have a fixed length (k^2 steps), so all N end together
and restart together (auto-reset, SB3 convention: ``infos[i]['terminal_observation']``). :class:`RexlEnv` is the
same game as a single ``gymnasium.Env`` (one episode), for checks and Gymnasium tooling.

Spaces: observation ``Box(-inf, inf, (obs_dim,), float32)`` (:func:`explainers.rexl.observation`), action
``Discrete(k^2)``; :meth:`action_masks` (sb3-contrib's MaskablePPO reads it) masks the cells already taken. Taking
a taken cell raises ValueError (use a masking learner). Reward sign * (s_{t-1} + s_t) / (2 k^2), gamma = 1: an
episode's return is sign * the trapezoid AUC of its score curve over k^2 + 1 points (``explainers.rexl`` docstring);
``infos[i]['auc']`` carries it at the episode's end and ``infos[i]['order']`` its cells in the order taken.

An :class:`Episode` is one explanation target to learn on: an image, the scorer column of its target (the class
index of a ``ClassifierScorer`` over every class, or the index of its reference detection in a ``DRiseScorer`` built
over every training pedestrian's detection) and its conditioning vector.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.vec_env import VecEnv

from explainers.perturb import Perturbation, make_perturbation
from explainers.rexl import CellFeatures, CellGame, cell_state, class_maps, fused_pass, observation


@dataclass
class Episode:
    """One target to learn on: ``image`` [3, H, W] (the scorer's input units), ``column`` of the scorer's scores,
    ``condition`` [c] (empty for an unconditioned agent)."""

    image: torch.Tensor
    column: int
    condition: torch.Tensor


def feature_stats(features, images: torch.Tensor, baselines: torch.Tensor, chunk: int = 32
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std [D] over the features of ``images`` and ``baselines`` [N, 3, H, W] (the two ends of
    every episode): the fixed standardisation stored with a policy. std is floored at 1e-3 of its mean over
    features (a dead feature is not blown up)."""
    with torch.inference_mode():
        f = torch.cat([features(x[s:s + chunk]) for x in (images, baselines) for s in range(0, len(x), chunk)])
    mean, std = f.mean(0), f.std(0)
    return mean, std.clamp_min(1e-3 * float(std.mean()) + 1e-12)


class EpisodeBatch:
    """N episodes of the cell game with their scores and states: :meth:`start` begins N given episodes, :meth:`step`
    takes N actions. Counts ``n_forward`` (canvases scored) and ``n_feature_forward`` (canvases featurised by a
    separate feature pass: 0 when ``fused``, i.e. features and scores came from one backbone pass, :func:`fused_pass`).
    """

    def __init__(self, scorer, features, *, grid: int, mode: str, perturbation: str | Perturbation,
                 norm: tuple[torch.Tensor, torch.Tensor] | None):
        self.scorer, self.features, self.grid, self.mode = scorer, features, int(grid), mode
        self.perturbation = make_perturbation(perturbation)
        self.device = torch.device(getattr(scorer, "device", "cpu"))
        self.chunk = int(getattr(scorer, "chunk_size", 32))
        self.norm = None if norm is None else (norm[0].to(self.device), norm[1].to(self.device))
        self.n_forward = self.n_feature_forward = 0
        self.game: CellGame | None = None
        self.maps = class_maps(getattr(features, "spec", {}))
        self.cells = isinstance(features, CellFeatures)       # a cell policy's state (explainers.rexl.cell_state)
        self._fused = fused_pass(scorer, features)
        self.fused: bool | None = None if self._fused is not None else False     # None: not checked yet
        self._cached: torch.Tensor | None = None        # features of the current canvases from the fused pass

    def _score(self, canvases: torch.Tensor) -> torch.Tensor:
        """Each episode's target score [N] of its canvas, in chunks of the scorer's chunk size (with the fused pass:
        the canvases' features are kept for :meth:`observe`)."""
        self.n_forward += canvases.shape[0]
        chunks = [canvases[s:s + self.chunk] for s in range(0, canvases.shape[0], self.chunk)]
        if self.fused is not False:
            both = [self._fused(c) for c in chunks]
            scores, self._cached = torch.cat([b[0] for b in both]), torch.cat([b[1] for b in both])
            if self.fused is None:                      # first call: the fused pass must give the scorer's scores
                with torch.inference_mode():
                    direct = self.scorer(chunks[0]).float()
                self.fused = bool(torch.allclose(direct, scores[:len(direct)], atol=1e-4, rtol=1e-4))
                self._cached = self._cached if self.fused else None
                scores = scores if self.fused else None
            if scores is not None:
                return scores.float().gather(1, self.columns[:, None])[:, 0]
        with torch.inference_mode():
            scores = torch.cat([self.scorer(c).float() for c in chunks])
        return scores.gather(1, self.columns[:, None])[:, 0]

    def _features(self, canvases: torch.Tensor) -> torch.Tensor:
        self.n_feature_forward += canvases.shape[0]
        with torch.inference_mode():
            return torch.cat([self.features(canvases[s:s + self.chunk]) for s in range(0, canvases.shape[0],
                                                                                        self.chunk)])

    def observe(self) -> torch.Tensor:
        """The current states [N, obs_dim] (features from the fused pass that scored these canvases, if any):
        :func:`~explainers.rexl.observation`, or for :class:`CellFeatures` the flattened, raw
        :func:`~explainers.rexl.cell_state` (conditions: the class one-hots) that a ``CellPolicy`` reads."""
        feats = self._cached if self._cached is not None else self._features(self.game.canvas())
        if self.cells:
            return cell_state(feats, self.game.taken, self.conditions, int(self.features.spec["classes"]),
                              self.grid).flatten(1)
        return observation(feats, self.image_features, self.game.taken, self.conditions, self.norm, self.maps)

    def start(self, episodes: Sequence[Episode]) -> torch.Tensor:
        """Begin ``episodes`` (one image size); returns their first states [N, obs_dim]. Raises ValueError for
        images of different sizes or an empty list."""
        if not episodes:
            raise ValueError("rexl env: no episodes to start")
        sizes = {tuple(e.image.shape) for e in episodes}
        if len(sizes) != 1:
            raise ValueError(f"rexl env: the episodes' images differ in shape {sorted(sizes)}: resize them to one size")
        images = torch.stack([e.image for e in episodes]).to(self.device, torch.float32)
        baselines = torch.stack([self.perturbation.baseline(x) for x in images])
        self.game = CellGame(images, baselines, self.mode, self.grid)
        self.columns = torch.tensor([int(e.column) for e in episodes], dtype=torch.long, device=self.device)
        self.conditions = torch.stack([torch.as_tensor(e.condition, dtype=torch.float32).view(-1)
                                       for e in episodes]).to(self.device)
        self.image_features = self._features(images) if self.mode == "insertion" else None
        self._cached = None
        self.prev = self._score(self.game.start())
        self.curve = [self.prev]
        self.returns = torch.zeros(len(episodes), device=self.device)
        return self.observe()

    def step(self, actions) -> tuple[torch.Tensor, bool]:
        """Take ``actions`` [N]; returns (rewards [N], whether the episodes ended)."""
        self._cached = None
        self.game.take(torch.as_tensor(np.asarray(actions).reshape(-1), dtype=torch.long))
        now = self._score(self.game.canvas())
        reward = self.game.reward(self.prev, now)
        self.prev = now
        self.curve.append(now)
        self.returns += reward
        return reward, self.game.steps == self.game.cells

    def masks(self) -> np.ndarray:
        """bool [N, k^2]: the cells still allowed."""
        return (~self.game.taken).cpu().numpy()


def _spaces(obs_dim: int, grid: int) -> tuple[gym.spaces.Box, gym.spaces.Discrete]:
    return (gym.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32), gym.spaces.Discrete(grid * grid))


SHAPING_UNITS = ("score", "log_odds")


def log_odds(p: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) of scores ``p`` clamped to [1e-6, 1 - 1e-6] (finite for scores of exactly 0 or 1)."""
    p = p.clamp(1e-6, 1 - 1e-6)
    return torch.log(p) - torch.log1p(-p)


class RexlVecEnv(VecEnv):
    """N episodes of the cell game advanced in lockstep (module docstring). ``episodes``: the pool; each round of N
    episodes takes the next N of a seeded shuffle of the pool (``sampling='random'``) or of the pool in order
    (``'cycle'``). ``features``: a feature module (``explainers.rexl.make_features``); ``norm``: its standardisation
    (:func:`feature_stats`; None: raw); ``obs_dim`` follows from the first states. ``reward_scale``: the rewards
    handed to the learner are multiplied by it (a learning-rate-free rescaling of the tiny per-step rewards, about
    score / k^2; ``infos``' ``auc`` and ``episode`` stay unscaled). ``horizon``: episodes end after this many steps
    (default k^2, the whole game); shorter, the return is the area under the first ``horizon`` steps of the score
    curve only (the end is terminal, not bootstrapped): the part of the curve where a pixel-level deletion AUC is
    decided, with more episodes per step budget. ``shaping``: potential-based reward shaping (Ng, Harada & Russell,
    ICML 1999, https://people.eecs.berkeley.edu/~russell/papers/icml99-shaping.pdf) with the potential
    Phi(s_t) = sign * score_t * (K - t) / K (K = k^2: the rest of the curve's area if the score stayed where it is;
    Phi = 0 at the game's end): the learner's reward for step t becomes r_t + Phi(s_t) - Phi(s_{t-1}) =
    sign * (score_t - score_{t-1}) * (K - t + 1/2) / K, the step's drop (deletion) or rise (insertion) weighted by
    the cells still to go. With gamma = 1 an episode's shaped return is its return minus sign * score_0, a constant
    per target, so the optimal policy is the same; the credit of a step is immediate instead of spread over the
    rest of the episode (with a ``horizon`` below K the last potential is not 0: the shaped return then also
    counts the flat rest of the curve). ``shaping_units='log_odds'``: the shaped step reward measures the change in
    the score's log-odds (``log_odds``: clamped to [1e-6, 1 - 1e-6]) instead, the signal of
    ``tasks.rexl_imitation``'s teacher; it is no longer a potential of the AUC (a saturated score's steps count), so
    the optimal policy may differ from the game's; meant for a myopic learner (small gamma). ``batch``: the game's
    engine if not an :class:`EpisodeBatch` of ``scorer`` and ``features`` (which are then unused), e.g.
    ``tasks.rexl_boxes_ppo.TeacherBatch`` for a detector's box-conditioned cell game. ``infos``' ``auc`` and
    ``episode`` stay the unshaped game's. Raises ValueError for an empty pool, an unknown sampling, a reward_scale
    <= 0, a horizon outside [1, k^2] or unknown shaping_units."""

    render_mode = None

    def __init__(self, scorer, episodes: Sequence[Episode], n_envs: int, features, *, grid: int = 7,
                 mode: str = "deletion", perturbation: str | Perturbation = "mean",
                 norm: tuple[torch.Tensor, torch.Tensor] | None = None, sampling: str = "random", seed: int = 0,
                 reward_scale: float = 1.0, horizon: int | None = None, shaping: bool = False,
                 shaping_units: str = "score", batch=None):
        if not episodes:
            raise ValueError("rexl env: the episode pool is empty")
        self.horizon = int(grid) ** 2 if horizon is None else int(horizon)
        if not 1 <= self.horizon <= int(grid) ** 2:
            raise ValueError(f"rexl env: horizon must be in [1, {int(grid) ** 2}] (grid {grid}), got {horizon!r}")
        if sampling not in ("random", "cycle"):
            raise ValueError(f"rexl env: sampling must be 'random' or 'cycle', got {sampling!r}")
        if not reward_scale > 0:
            raise ValueError(f"rexl env: reward_scale must be > 0, got {reward_scale!r}")
        self.pool, self.sampling, self.reward_scale = list(episodes), sampling, float(reward_scale)
        self.shaping = bool(shaping)
        if shaping_units not in SHAPING_UNITS:
            raise ValueError(f"rexl env: shaping_units must be one of {SHAPING_UNITS}, got {shaping_units!r}")
        self.shaping_units = shaping_units
        self.rng = np.random.default_rng(seed)
        self.batch = batch if batch is not None else EpisodeBatch(scorer, features, grid=grid, mode=mode,
                                                                  perturbation=perturbation, norm=norm)
        self._queue: list[int] = []
        self._actions = None
        self.grid = int(grid)
        first = self.batch.start([self.pool[i] for i in self._next(n_envs)])
        self._queue = []                          # the real first round starts in reset()
        self.rng = np.random.default_rng(seed)
        self.batch.n_forward = self.batch.n_feature_forward = 0
        self._taken_order: list[np.ndarray] = []
        self.obs_dim = first.shape[1]
        super().__init__(n_envs, *_spaces(self.obs_dim, grid))

    def _next(self, n: int) -> list[int]:
        while len(self._queue) < n:
            order = np.arange(len(self.pool))
            if self.sampling == "random":
                self.rng.shuffle(order)
            self._queue += order.tolist()
        out, self._queue = self._queue[:n], self._queue[n:]
        return out

    def _start_round(self) -> np.ndarray:
        self.current = self._next(self.num_envs)
        return self.batch.start([self.pool[i] for i in self.current]).cpu().numpy()

    def reset(self):
        self._taken_order = []
        return self._start_round()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(-1)

    def step_wait(self):
        actions = self._actions
        self._taken_order.append(actions.copy())
        before = self.batch.prev
        reward, ended = self.batch.step(actions)
        if self.shaping:
            game = self.batch.game
            after = self.batch.prev
            if self.shaping_units == "log_odds":
                before, after = log_odds(before), log_odds(after)
            reward = game.sign * (after - before) * ((game.cells - game.steps + 0.5) / game.cells)
        ended = ended or self.batch.game.steps == self.horizon
        obs = self.batch.observe().cpu().numpy()
        rewards = (reward * self.reward_scale).cpu().numpy().astype(np.float32)
        infos: list[dict] = [{} for _ in range(self.num_envs)]
        if not ended:
            return obs, rewards, np.zeros(self.num_envs, bool), infos
        sign = self.batch.game.sign
        order = np.stack(self._taken_order, 1)
        curve = torch.stack(self.batch.curve, 1).cpu().numpy()
        for i, info in enumerate(infos):
            info.update(terminal_observation=obs[i], auc=float(sign * self.batch.returns[i]), order=order[i],
                        curve=curve[i], episode_index=self.current[i],
                        episode={"r": float(self.batch.returns[i]), "l": self.batch.game.steps})
        obs = self.reset()
        return obs, rewards, np.ones(self.num_envs, bool), infos

    def action_masks(self) -> np.ndarray:
        """bool [N, k^2]: the cells each episode may still take."""
        return self.batch.masks()

    # -------------------------------------------------------------------------- VecEnv plumbing
    def close(self) -> None:
        pass

    def get_attr(self, attr_name, indices=None):
        value = getattr(self, attr_name)
        return [value for _ in self._get_indices(indices)]

    def set_attr(self, attr_name, value, indices=None) -> None:
        setattr(self, attr_name, value)

    def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
        if method_name == "action_masks":
            masks = self.action_masks()
            return [masks[i] for i in self._get_indices(indices)]
        result = getattr(self, method_name)(*method_args, **method_kwargs)
        return [result for _ in self._get_indices(indices)]

    def env_is_wrapped(self, wrapper_class, indices=None):
        return [False for _ in self._get_indices(indices)]


class RexlEnv(gym.Env):
    """One episode of the cell game as a ``gymnasium.Env`` (same game, state and unshaped reward as
    :class:`RexlVecEnv`).
    ``reset(options={'episode': i})`` starts pool episode i (default: one drawn by the env's seeded generator).
    ``info['auc']`` at the end, as the vectorised env's."""

    metadata: dict = {"render_modes": []}

    def __init__(self, scorer, episodes: Sequence[Episode], features, *, grid: int = 7, mode: str = "deletion",
                 perturbation: str | Perturbation = "mean", norm: tuple[torch.Tensor, torch.Tensor] | None = None):
        if not episodes:
            raise ValueError("rexl env: the episode pool is empty")
        self.pool = list(episodes)
        self.batch = EpisodeBatch(scorer, features, grid=grid, mode=mode, perturbation=perturbation, norm=norm)
        obs_dim = self.batch.start(self.pool[:1]).shape[1]
        self.observation_space, self.action_space = _spaces(obs_dim, grid)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        index = (options or {}).get("episode")
        index = int(self.np_random.integers(len(self.pool))) if index is None else int(index)
        self.order: list[int] = []
        return self.batch.start([self.pool[index]])[0].cpu().numpy(), {"episode_index": index}

    def step(self, action):
        self.order.append(int(action))
        reward, ended = self.batch.step([int(action)])
        obs = self.batch.observe()[0].cpu().numpy()
        info = {"auc": float(self.batch.game.sign * self.batch.returns[0]), "order": np.array(self.order)} \
            if ended else {}
        return obs, float(reward[0]), bool(ended), False, info

    def action_masks(self) -> np.ndarray:
        return self.batch.masks()[0]


__all__ = ["Episode", "EpisodeBatch", "RexlEnv", "RexlVecEnv", "feature_stats"]
