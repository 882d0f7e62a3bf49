"""RExL cell policies trained by stable-baselines3 (tasks.rexl_cells_ppo): the environment's cell state and fused
scores are the explainer's, the SB3 policy's action distribution is the cell policy's, PPO from scratch learns to
delete first the only cell a toy classifier sees, fine-tuning keeps the actor frozen during the critic's warm-up,
training resumes, and a policy for another model or game is refused as a start."""
import numpy as np
import pytest
import torch

from detection.scorers import ClassifierScorer
from explainers.rexl import CellFeatures, PolicyCheckpoint, Rexl, cell_state
from tasks.rexl_env import Episode, EpisodeBatch
from tests.test_rexl_cells import CELL, GRID, classifier, scene

pytestmark = pytest.mark.usefixtures("one_torch_thread")
N = GRID * GRID


def test_env_state_is_the_cell_state_and_scores_come_from_the_same_pass():
    clf = classifier()
    scorer = ClassifierScorer(clf)
    features = CellFeatures(clf, blocks=(0, 1), grid=GRID)
    batch = EpisodeBatch(scorer, features, grid=GRID, mode="deletion", perturbation="mean", norm=None)
    episodes = [Episode(scene(s), 0, torch.ones(1)) for s in range(3)]
    obs = batch.start(episodes)
    batch.step(np.array([CELL, 0, 3]))
    obs = batch.observe()
    canvases = batch.game.canvas()
    expected = cell_state(features(canvases), batch.game.taken, torch.ones(3, 1), 1, GRID).flatten(1)
    torch.testing.assert_close(obs, expected)
    torch.testing.assert_close(batch.prev, scorer(canvases)[:, 0])
    assert batch.fused is True and batch.n_feature_forward == 0 and batch.n_forward == 6
    assert float(batch.prev[0]) < float(batch.prev[1])         # deleting the seen cell drops the score


def test_sb3_policy_is_the_cell_policy_with_masks():
    from sb3_contrib import MaskablePPO

    from tasks.rexl_cells_ppo import CellActorCriticPolicy
    from tasks.rexl_env import RexlVecEnv
    clf = classifier()
    env = RexlVecEnv(ClassifierScorer(clf), [Episode(scene(0), 0, torch.ones(1))], 2,
                     CellFeatures(clf, blocks=(0, 1), grid=GRID), grid=GRID)
    channels = env.obs_dim // N
    model = MaskablePPO(CellActorCriticPolicy, env, n_steps=N, batch_size=2 * N, seed=0, device="cpu",
                        policy_kwargs={"cell_kwargs": {"channels": channels, "grid": GRID, "width": 8,
                                                       "classes": 1}})
    obs = torch.as_tensor(env.reset())
    masks = np.ones((2, N), bool)
    masks[:, CELL] = False
    dist = model.policy.get_distribution(obs, action_masks=masks)
    actor = model.policy.mlp_extractor.actor
    logits = actor(obs)
    probs = dist.distribution.probs
    assert float(probs[:, CELL].detach().max()) == 0.0
    keep = torch.ones(N, dtype=torch.bool)
    keep[CELL] = False
    torch.testing.assert_close(probs[:, keep], torch.softmax(logits[:, keep], 1))


def test_ppo_learns_the_only_cell_the_classifier_sees_and_resumes(tmp_path):
    from tasks.rexl_cells_ppo import train_cells_ppo
    clf = classifier()
    scorer = ClassifierScorer(clf)
    images = [scene(s) for s in range(4)]
    options = dict(grid=GRID, blocks=(0, 1), n_envs=8, learning_rate=3e-3, clip_range=0.2, width=8, value_width=8,
                   seed=3, checkpoint_dir=tmp_path / "ck", checkpoint_every=8 * N)
    untrained, _ = train_cells_ppo(scorer, images, steps=8 * N, **{**options, "learning_rate": 1e-12,
                                                                   "checkpoint_dir": None})
    assert int(Rexl(scorer, policy=untrained).explain(scene(9)).order[0, 0]) != CELL     # seed 3 starts elsewhere
    ckpt, summary = train_cells_ppo(scorer, images, steps=20 * 8 * N, **options)
    assert summary["steps"] == 20 * 8 * N and summary["fused"] is True and summary["init"] is None
    assert summary["auc_last"] < summary["auc_first"]            # deletion AUC: the policy improved
    path = ckpt.save(tmp_path / "ppo.pt")
    exp = Rexl(scorer, policy=path).explain(scene(9))             # an unseen scene
    assert int(exp.order[0, 0]) == CELL and exp.n_forward == 2 + (N - 1)
    again = Rexl(scorer, policy=PolicyCheckpoint.load(path)).explain(scene(9))
    assert torch.equal(exp.order, again.order) and torch.equal(exp.saliency, again.saliency)
    more, summary2 = train_cells_ppo(scorer, images, steps=22 * 8 * N, **options)    # resumes from last.zip
    assert summary2["resumed"] is True and summary2["steps"] == 22 * 8 * N and summary2["episodes"] == 2 * 8
    from sb3_contrib import MaskablePPO

    # the default discount (0.5) reaches the learner and its checkpoint
    assert summary["gamma"] == 0.5 and MaskablePPO.load(tmp_path / "ck" / "last.zip", device="cpu").gamma == 0.5


def test_fine_tune_freezes_the_actor_during_warmup_and_refuses_another_start(tmp_path, monkeypatch):
    import tasks.rexl_cells_ppo as ppo
    from tasks.rexl_imitation import train_look_ahead
    clf = classifier()
    scorer = ClassifierScorer(clf)
    images = [scene(s) for s in range(4)]
    init, _ = train_look_ahead(scorer, images, grid=GRID, blocks=(0, 1), rounds=1, per=3, epochs=20, width=8)
    phases = []                                  # per learn() call: the actor's weights before / after, steps after
    real_learn = ppo.MaskablePPO.learn

    def recording_learn(model, *args, **kwargs):
        actor = model.policy.mlp_extractor.actor
        before = {k: v.clone() for k, v in actor.state_dict().items()}
        out = real_learn(model, *args, **kwargs)
        phases.append((before, {k: v.clone() for k, v in actor.state_dict().items()}, model.num_timesteps))
        return out

    monkeypatch.setattr(ppo.MaskablePPO, "learn", recording_learn)
    tuned, summary = ppo.train_cells_ppo(scorer, images, init=init, grid=GRID, blocks=(0, 1), n_envs=8,
                                         steps=3 * 8 * N, warmup_steps=2 * 8 * N, learning_rate=1e-2, width=99)
    assert summary["init"] == init.digest() and summary["width"] == 8      # the width is the initial policy's
    (warm_before, warm_after, warm_steps), (_, _, end_steps) = phases
    assert warm_steps == 2 * 8 * N and end_steps == 3 * 8 * N
    for k, v in warm_before.items():
        assert torch.equal(v, warm_after[k]), k                            # the warm-up left the actor alone
    for k, v in init.state_dict.items():
        assert torch.equal(v, warm_before[k]), k                           # it started from the initial policy
    assert any(not torch.equal(v, tuned.state_dict[k]) for k, v in init.state_dict.items())   # then it trained
    with pytest.raises(ValueError, match="warm-up"):                       # a warm-up as long as the run
        ppo.train_cells_ppo(scorer, images, init=init, grid=GRID, blocks=(0, 1), n_envs=8, steps=2 * 8 * N)
    train_cells_ppo = ppo.train_cells_ppo
    with pytest.raises(ValueError, match="model_sha256"):                  # trained for another classifier
        train_cells_ppo(ClassifierScorer(classifier(cell=2)), images, init=init, grid=GRID, blocks=(0, 1),
                        n_envs=8, steps=8 * N)
    with pytest.raises(ValueError, match="blocks"):
        train_cells_ppo(scorer, images, init=init, grid=GRID, blocks=(0,), n_envs=8, steps=8 * N)
    with pytest.raises(ValueError, match="one roll-out"):
        train_cells_ppo(scorer, images, grid=GRID, blocks=(0, 1), n_envs=8, steps=10)


def test_a_killed_run_resumes_at_a_roll_out_boundary_and_stops_at_its_steps(tmp_path, monkeypatch):
    """Checkpoints are taken between roll-outs (never with steps the model has not trained on), so a run killed after
    one resumes to exactly the steps asked for, whatever checkpoint_every is."""
    import tasks.rexl_train
    from tasks.rexl_cells_ppo import train_cells_ppo
    clf = classifier()
    scorer = ClassifierScorer(clf)
    images = [scene(s) for s in range(4)]
    rollout = 8 * N
    options = dict(grid=GRID, blocks=(0, 1), n_envs=8, width=8, value_width=8, seed=0,
                   checkpoint_dir=tmp_path / "ck", checkpoint_every=rollout + 5)
    real_save = tasks.rexl_train.save_last

    def save_then_die(model, directory):
        real_save(model, directory)
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks.rexl_train, "save_last", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_cells_ppo(scorer, images, steps=4 * rollout, **options)
    from sb3_contrib import MaskablePPO
    saved = MaskablePPO.load(tmp_path / "ck" / "last.zip", device="cpu").num_timesteps
    assert saved == 2 * rollout                                  # the first roll-out boundary after rollout + 5 steps
    monkeypatch.setattr(tasks.rexl_train, "save_last", real_save)
    _, summary = train_cells_ppo(scorer, images, steps=4 * rollout + 7, **options)   # rounded down to 4 roll-outs
    assert summary["resumed"] is True and summary["steps"] == 4 * rollout
