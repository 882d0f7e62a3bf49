"""RExL: the environment's return is the deletion / insertion AUC of explainers.metrics, the vectorised env equals a
loop of single envs, a briefly trained policy finds the one cell a toy scorer sees, the roll-out is deterministic and
spends exactly its forwards, and a policy trained for other weights is refused."""
import numpy as np
import pytest
import torch
from torch import nn

from explainers.base import BudgetError
from explainers.metrics import deletion_insertion
from explainers.rexl import (
    FixedCNN,
    PolicyCheckpoint,
    Rexl,
    RexlPolicy,
    box_condition,
    cell_labels,
    cell_saliency,
)
from explainers.trained import weights_fingerprint
from tasks.rexl_env import Episode, RexlEnv, RexlVecEnv, feature_stats

GRID, SIZE = 7, 28          # 4-px cells: the metric's pixel fractions fall on cell boundaries
SMALL = {"kind": "fixed", "size": SIZE, "width": 8, "pool": 2}      # a cheap FixedCNN for the tests


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def small_features():
    return FixedCNN(size=SIZE, width=8, pool=2)


class ToyNet(nn.Module):
    """Two scores in (0, 1) from a fixed random linear map of the 7 x 7 average-pooled image."""

    def __init__(self, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(2, 3 * 49, generator=g) * 0.3, requires_grad=False)

    def forward(self, x):
        return torch.sigmoid(nn.functional.adaptive_avg_pool2d(x, 7).flatten(1) @ self.weight.T)


class OneCellNet(nn.Module):
    """Score = mean brightness of one cell of the ``grid`` x ``grid`` grid (the only pixels it sees)."""

    def __init__(self, cell, grid=GRID):
        super().__init__()
        mask = (cell_labels(SIZE, SIZE, grid) == cell).float()
        self.register_buffer("mask", mask / mask.sum())

    def forward(self, x):
        return (x.mean(1) * self.mask).sum((1, 2))[:, None]


class ModelScorer:
    """A Scorer around a torch module (its weights are what the guard fingerprints); counts the images it scores."""

    device = torch.device("cpu")
    chunk_size = 64

    def __init__(self, model):
        self.model = model
        self.num_targets = model(torch.zeros(1, 3, SIZE, SIZE)).shape[1]
        self.images = 0

    def __call__(self, images):
        self.images += images.shape[0]
        return self.model(images)


def image(seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, SIZE, SIZE, generator=g)


def order_map(order):
    """A saliency map [H, W] constant on each cell that ranks the cells in ``order`` (first = most salient)."""
    value = torch.empty(GRID * GRID)
    value[torch.as_tensor(order)] = torch.arange(GRID * GRID, 0, -1).float()
    return value[cell_labels(SIZE, SIZE, GRID)]


def random_policy(scorer, mode="deletion", conditioning="none", seed=0, **kw):
    feats = small_features()
    dim = feats.dim
    torch.manual_seed(seed)
    ckpt = PolicyCheckpoint(model_sha256=weights_fingerprint(scorer), grid=GRID, mode=mode,
                            perturbation="mean" if mode == "deletion" else "blur", conditioning=conditioning,
                            features=feats.spec, feature_dim=dim, state_dict={}, hidden=(32,), **kw)
    ckpt.state_dict = RexlPolicy(ckpt.obs_dim, GRID * GRID, (32,), feature_dim=dim).state_dict()
    return ckpt


@pytest.mark.parametrize("mode,substrate", [("deletion", "mean"), ("insertion", "blur")])
def test_env_return_is_the_metric_auc(mode, substrate):
    scorer = ModelScorer(ToyNet())
    img = image(1)
    env = RexlEnv(scorer, [Episode(img, 1, torch.zeros(0))], small_features(), grid=GRID, mode=mode,
                  perturbation=substrate)
    env.reset(options={"episode": 0})
    order = np.random.default_rng(3).permutation(GRID * GRID)
    total, info = 0.0, {}
    for a in order:
        assert env.action_masks()[a]
        _, reward, terminated, truncated, info = env.step(a)
        total += reward
    assert terminated and not truncated
    sal = order_map(order)[None].expand(2, -1, -1)
    auc = deletion_insertion(scorer, img, sal, mode=mode, substrate=substrate, steps=GRID * GRID).auc[1]
    sign = -1 if mode == "deletion" else 1
    assert total == pytest.approx(sign * float(auc), abs=1e-5)
    assert info["auc"] == pytest.approx(float(auc), abs=1e-5)
    assert list(info["order"]) == list(order)
    with pytest.raises(ValueError, match="already taken"):
        env.reset(options={"episode": 0})
        env.step(order[0])
        env.step(order[0])


def test_vector_env_equals_a_loop_of_single_envs():
    scorer = ModelScorer(ToyNet())
    pool = [Episode(image(s), s % 2, torch.eye(2)[s % 2]) for s in range(3)]
    feats = small_features()
    imgs = torch.stack([e.image for e in pool])
    norm = feature_stats(feats, imgs, imgs.mean((2, 3), keepdim=True).expand_as(imgs))
    vec = RexlVecEnv(scorer, pool, 3, feats, grid=GRID, norm=norm, sampling="cycle")
    orders = np.stack([np.random.default_rng(s).permutation(GRID * GRID) for s in range(3)], 1)   # [49, 3]
    obs = vec.reset()
    before = scorer.images
    vec_obs, vec_rewards = [obs], []
    for t in range(GRID * GRID):
        obs, rewards, dones, infos = vec.step(orders[t])
        vec_rewards.append(rewards)
        vec_obs.append(np.stack([i["terminal_observation"] for i in infos]) if dones.all() else obs)
    assert scorer.images - before == 3 * GRID * GRID + 3          # one batched call per step + the next round's start
    assert dones.all() and (obs.shape == vec_obs[0].shape)
    for i, episode in enumerate(pool):
        single = RexlEnv(scorer, pool, feats, grid=GRID, norm=norm)
        o, _ = single.reset(options={"episode": i})
        np.testing.assert_allclose(o, vec_obs[0][i], rtol=1e-5, atol=1e-5)
        for t in range(GRID * GRID):
            o, r, done, _, info = single.step(orders[t, i])
            assert r == pytest.approx(float(vec_rewards[t][i]), abs=1e-6)
            np.testing.assert_allclose(o, vec_obs[t + 1][i], rtol=1e-5, atol=1e-5)
        assert info["auc"] == pytest.approx(infos[i]["auc"], abs=1e-6)
        assert episode.column == i % 2


def test_a_shorter_horizon_ends_episodes_early_with_the_curves_first_area():
    scorer = ModelScorer(ToyNet())
    pool = [Episode(image(s), s % 2, torch.zeros(0)) for s in range(2)]
    feats = small_features()
    orders = np.stack([np.random.default_rng(s).permutation(GRID * GRID) for s in range(2)], 1)
    full = RexlVecEnv(scorer, pool, 2, feats, grid=GRID, sampling="cycle")
    short = RexlVecEnv(scorer, pool, 2, feats, grid=GRID, sampling="cycle", horizon=5)
    full.reset(), short.reset()
    total = np.zeros(2)
    for t in range(5):
        _, r_full, d_full, _ = full.step(orders[t])
        _, r_short, d_short, infos = short.step(orders[t])
        np.testing.assert_allclose(r_short, r_full, atol=1e-7)
        total += r_full
        assert not d_full.any() and d_short.all() == (t == 4) and d_short.any() == (t == 4)
    assert [i["episode"]["l"] for i in infos] == [5, 5]
    np.testing.assert_allclose([-i["auc"] for i in infos], total, atol=1e-6)   # deletion: return = -area
    assert [list(i["order"]) for i in infos] == [list(orders[:5, 0]), list(orders[:5, 1])]
    assert not short.batch.game.taken.any()                   # the next round started afresh
    for bad in (0, GRID * GRID + 1):
        with pytest.raises(ValueError, match="horizon"):
            RexlVecEnv(scorer, pool, 2, feats, grid=GRID, horizon=bad)


@pytest.mark.parametrize("mode", ["deletion", "insertion"])
def test_shaped_rewards_are_each_steps_change_and_sum_to_the_return_less_the_first_score(mode):
    """Potential-based shaping: every step's reward is sign * (s_t - s_{t-1}) * (K - t + 1/2) / K, an episode's shaped
    return is its unshaped return minus sign * s_0 (so every order keeps its rank), and ``infos`` keep the game's
    AUC; a wrong potential (or none) fails one of the three."""
    scorer = ModelScorer(ToyNet())
    pool = [Episode(image(s), s % 2, torch.zeros(0)) for s in range(2)]
    feats = small_features()
    cells = GRID * GRID
    orders = np.stack([np.random.default_rng(s).permutation(cells) for s in range(2)], 1)
    plain = RexlVecEnv(scorer, pool, 2, feats, grid=GRID, mode=mode, sampling="cycle")
    shaped = RexlVecEnv(scorer, pool, 2, feats, grid=GRID, mode=mode, sampling="cycle", shaping=True, reward_scale=3.0)
    plain.reset(), shaped.reset()
    sign = plain.batch.game.sign
    first = shaped.batch.prev.numpy().copy()
    previous, total_plain, total_shaped = first, np.zeros(2), np.zeros(2)
    for t in range(1, cells + 1):
        _, r_plain, _, infos_plain = plain.step(orders[t - 1])
        _, r_shaped, done, infos = shaped.step(orders[t - 1])
        now = np.array([i["curve"][-1] for i in infos]) if done.all() else shaped.batch.prev.numpy().copy()
        np.testing.assert_allclose(r_shaped, 3.0 * sign * (now - previous) * (cells - t + 0.5) / cells, atol=1e-6)
        previous = now
        total_plain += r_plain
        total_shaped += r_shaped / 3.0
    np.testing.assert_allclose(total_shaped, total_plain - sign * first, atol=1e-5)
    assert [i["auc"] for i in infos] == pytest.approx([i["auc"] for i in infos_plain], abs=1e-7)


def test_log_odds_shaping_rewards_each_steps_change_in_log_odds():
    """``shaping_units='log_odds'``: every step's reward is sign * (logit s_t - logit s_{t-1}) * (K - t + 1/2) / K
    (clamped as the imitation teacher's ``log_odds``), ``infos`` keep the game's AUC, and unknown units are refused
    by name; scores shaped in probability units instead fail the first check."""
    scorer = ModelScorer(ToyNet())
    pool = [Episode(image(s), s % 2, torch.zeros(0)) for s in range(2)]
    feats = small_features()
    cells = GRID * GRID
    orders = np.stack([np.random.default_rng(s).permutation(cells) for s in range(2)], 1)
    plain = RexlVecEnv(scorer, pool, 2, feats, grid=GRID, sampling="cycle")
    env = RexlVecEnv(scorer, pool, 2, feats, grid=GRID, sampling="cycle", shaping=True, shaping_units="log_odds",
                     reward_scale=2.0)
    plain.reset(), env.reset()

    def logit(p):
        p = np.clip(p, 1e-6, 1 - 1e-6)
        return np.log(p) - np.log1p(-p)

    previous = env.batch.prev.numpy().copy()
    for t in range(1, cells + 1):
        _, _, _, infos_plain = plain.step(orders[t - 1])
        _, r, done, infos = env.step(orders[t - 1])
        now = np.array([i["curve"][-1] for i in infos]) if done.all() else env.batch.prev.numpy().copy()
        expected = 2.0 * -1.0 * (logit(now) - logit(previous)) * (cells - t + 0.5) / cells
        np.testing.assert_allclose(r, expected, rtol=1e-4, atol=1e-5)
        previous = now
    assert [i["auc"] for i in infos] == pytest.approx([i["auc"] for i in infos_plain], abs=1e-7)
    with pytest.raises(ValueError, match="shaping_units"):
        RexlVecEnv(scorer, pool, 2, feats, grid=GRID, shaping=True, shaping_units="logit")


def test_shaped_rewards_with_a_shorter_horizon_also_count_the_flat_rest_of_the_curve():
    """With a horizon h < K the last potential is not 0: the shaped return is the first h steps' area less
    sign * s_0 plus sign * s_h * (K - h) / K (the rest of the curve held at s_h), as the env's docstring says."""
    scorer = ModelScorer(ToyNet())
    pool = [Episode(image(s), s % 2, torch.zeros(0)) for s in range(2)]
    cells, h = GRID * GRID, 6
    orders = np.stack([np.random.default_rng(s).permutation(cells) for s in range(2)], 1)
    env = RexlVecEnv(scorer, pool, 2, small_features(), grid=GRID, sampling="cycle", horizon=h, shaping=True)
    env.reset()
    total = np.zeros(2)
    for t in range(h):
        _, r, done, infos = env.step(orders[t])
        total += r
    assert done.all()
    curve = np.stack([i["curve"] for i in infos])                          # s_0 .. s_h
    sign = -1.0                                                             # deletion
    area = np.array([i["auc"] for i in infos])                              # the first h steps' area (unshaped)
    expected = sign * area - sign * curve[:, 0] + sign * curve[:, h] * (cells - h) / cells
    np.testing.assert_allclose(total, expected, atol=1e-5)


def test_rollout_is_deterministic_and_spends_exactly_its_forwards():
    scorer = ModelScorer(ToyNet())
    img = image(2)
    for mode in ("deletion", "insertion"):
        method = Rexl(scorer, policy=random_policy(scorer, mode))
        scorer.images = 0
        a = method.explain(img, seed=0)
        assert a.n_forward == scorer.images == 2 + 2 * (GRID * GRID - 1)
        features = 1 + 2 * (GRID * GRID - 2) + (mode == "insertion")     # first canvas, T (n - 2), the image
        assert a.options["n_feature_forward"] == a.n_feature_forward == features
        b = method.explain(img, seed=123)
        assert torch.equal(a.saliency, b.saliency) and torch.equal(a.order, b.order)
        assert sorted(a.order[0].tolist()) == list(range(GRID * GRID))           # every cell once
        assert a.saliency.shape == (2, SIZE, SIZE)
        start, end = (a.full_score, a.empty_score) if mode == "deletion" else (a.empty_score, a.full_score)
        assert torch.allclose(a.curve[:, 0], start) and torch.allclose(a.curve[:, -1], end)
        with pytest.raises(BudgetError, match="at least 98"):
            method.explain(img, budget=97)
    regions = torch.arange(SIZE * SIZE).view(SIZE, SIZE) % 3
    assert method.explain(img, regions).relevance.shape == (2, 3)
    nearest = Rexl(scorer, policy=method.ckpt, upsample="nearest").explain(img)       # constant on each cell
    cells = cell_labels(SIZE, SIZE, GRID)
    assert all(len(torch.unique(nearest.saliency[0][cells == c])) == 1 for c in range(GRID * GRID))


def test_credit_rules():
    order = torch.tensor([[2, 0, 1]])
    curve = torch.tensor([[1.0, 0.4, 0.3, 0.1]])                  # deletion: s_0 .. s_3
    cumulative = cell_saliency(order, curve, -1.0, "cumulative")
    single = cell_saliency(order, curve, -1.0, "single")
    # cell 2 (first) gets s_0 - s_3, cell 0 s_1 - s_3, cell 1 s_2 - s_3; single: each its own drop
    assert torch.allclose(cumulative, torch.tensor([[0.3, 0.2, 0.9]]))
    assert torch.allclose(single, torch.tensor([[0.1, 0.2, 0.6]]))
    assert torch.allclose(cell_saliency(order, curve, -1.0, "rank"), torch.tensor([[2 / 3, 1 / 3, 1.0]]))
    with pytest.raises(ValueError, match="credit"):
        cell_saliency(order, curve, -1.0, "other")


def test_guard_refuses_a_policy_for_other_weights(tmp_path):
    trained_for = ModelScorer(ToyNet(seed=0))
    audited = ModelScorer(ToyNet(seed=1))
    path = random_policy(trained_for).save(tmp_path / "policy.pt")
    Rexl(trained_for, policy=path)                                  # its own model: accepted
    with pytest.raises(ValueError) as err:
        Rexl(audited, policy=path)
    message = str(err.value)
    assert weights_fingerprint(trained_for)[:12] in message and weights_fingerprint(audited)[:12] in message
    unguarded = Rexl(audited, policy=path, check_weights=False)        # the sanity check's randomised copies
    assert unguarded.options()["check_weights"] is False
    with pytest.raises(ValueError, match="perturbation"):
        Rexl(trained_for, policy=path, perturbation="blur")
    (tmp_path / "junk.pt").write_bytes(b"not a policy")
    with pytest.raises(ValueError, match="junk.pt"):
        Rexl(trained_for, policy=tmp_path / "junk.pt")


def test_conditioned_policies_read_the_scorers_targets():
    scorer = ModelScorer(ToyNet())
    method = Rexl(scorer, policy=random_policy(scorer, conditioning="class", num_classes=2))
    with pytest.raises(ValueError, match="no targets"):
        method.explain(image())
    scorer.targets = torch.tensor([0, 1])
    assert method.explain(image()).saliency.shape == (2, SIZE, SIZE)
    cond = box_condition(torch.tensor([[0.0, 0.0, 8.0, 4.0]]), SIZE, SIZE, GRID)
    assert cond.shape == (1, GRID * GRID + 4)
    assert cond[0, :3].tolist() == [1.0, 1.0, 0.0] and cond[0, -2:].tolist() == pytest.approx([8 / 28, 4 / 28])


def test_exported_policy_matches_sb3(tmp_path):
    from sb3_contrib import MaskablePPO

    from tasks.rexl_train import export_policy
    scorer = ModelScorer(ToyNet())
    vec = RexlVecEnv(scorer, [Episode(image(), 0, torch.zeros(0))], 2, small_features(), grid=GRID)
    model = MaskablePPO("MlpPolicy", vec, n_steps=GRID * GRID, batch_size=GRID * GRID, seed=0, device="cpu",
                        policy_kwargs={"net_arch": {"pi": [32, 16], "vf": [32]}, "activation_fn": nn.Tanh})
    net = RexlPolicy(vec.obs_dim, GRID * GRID, (32, 16), feature_dim=small_features().dim)
    state = export_policy(model)
    net.load_state_dict({**state, "feature_mean": net.feature_mean, "feature_std": net.feature_std})
    obs = torch.as_tensor(vec.reset())
    with torch.no_grad():
        expected = model.policy.get_distribution(obs).distribution.logits
    torch.testing.assert_close(torch.log_softmax(net(obs), 1), expected, atol=1e-5, rtol=1e-5)


def test_a_trained_policy_deletes_the_only_cell_the_scorer_sees(tmp_path):
    """A 4 x 4 grid keeps the training brief (12 PPO roll-outs of 16 envs x 16 steps, about 10 s on 2 cores)."""
    from tasks.rexl_train import train_policy
    grid, cell = 4, 9
    scorer = ModelScorer(OneCellNet(cell, grid))
    seen = cell_labels(SIZE, SIZE, grid) == cell

    def scene(seed):                                  # a dark scene, the seen cell bright: deleting it drops the score
        x = image(seed) * 0.2
        x[:, seen] = 1.0
        return x
    pool = [Episode(scene(s), 0, torch.zeros(0)) for s in range(4)]
    options = dict(grid=grid, regime="class", steps=16 * 16 * 12, n_envs=16, hidden=(64,), learning_rate=3e-3,
                   seed=0, features=SMALL,
                   checkpoint_dir=tmp_path / "ckpt")
    ckpt, summary = train_policy(scorer, pool, **options)
    assert summary["auc_last"] < summary["auc_first"] - 0.1
    exp = Rexl(scorer, policy=ckpt).explain(scene(7))                  # a scene it was not trained on
    assert int(exp.order[0, 0]) == cell
    assert bool(seen.flatten()[exp.saliency[0].flatten().argmax()])
    # resumable: the checkpoint holds the steps done; asking for no more steps trains no further
    again, summary2 = train_policy(scorer, pool, **options)
    assert summary2["resumed"] and summary2["steps"] == summary["steps"] and summary2["episodes"] == 0
    for k, v in ckpt.state_dict.items():
        assert torch.equal(v, again.state_dict[k]), k


def test_fixed_features_are_seeded_and_batch_invariant():
    a, b, other = FixedCNN(seed=0, size=32), FixedCNN(seed=0, size=32), FixedCNN(seed=1, size=32)
    x = torch.stack([image(s) for s in range(5)])
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), other(x))
    assert torch.equal(a(x)[2:3], a(x[2:3]))                           # the batch does not change a canvas's features


@pytest.mark.parametrize("cam", [False, True])
def test_classifier_backbone_features_and_the_fused_pass_agree(cam):
    """A tiny SceneNet behind ClassifierScorer: features come from its own backbone (with cam: and its class maps);
    the env's fused pass (scores and features from one backbone pass) gives the same states and rewards as separate
    scorer and feature calls."""
    from detection.models.classifier import ImageClassifier
    from detection.models.scene_classifier import SceneNet
    from detection.scorers import ClassifierScorer
    from explainers.rexl import BackboneFeatures, make_features
    torch.manual_seed(0)
    clf = ImageClassifier(SceneNet(3, width=4).eval(), ["a", "b", "c"], multi_label=True, mean=(0.0, 0.0, 0.0),
                          std=(1.0, 1.0, 1.0), device="cpu")
    scorer = ClassifierScorer(clf)
    feats = make_features(scorer, {"kind": "backbone", "pool": 4, "cam": GRID} if cam else "auto")
    assert isinstance(feats, BackboneFeatures) and feats.spec["network"] == "SceneNet"
    assert feats.spec.get("classes") == (3 if cam else None)
    pool = [Episode(image(s), s % 3, torch.eye(3)[s % 3]) for s in range(4)]
    orders = np.stack([np.random.default_rng(s).permutation(GRID * GRID) for s in range(4)], 1)
    runs = []
    for fused in (True, False):
        env = RexlVecEnv(scorer, pool, 4, feats, grid=GRID, sampling="cycle")
        if not fused:
            env.batch._fused, env.batch.fused = None, False
        obs, rewards = [env.reset()], []
        for t in range(GRID * GRID):
            o, r, _, infos = env.step(orders[t])
            obs.append(o)
            rewards.append(r)
        runs.append((np.stack(obs), np.stack(rewards), env.batch.fused, env.batch.n_feature_forward))
    (obs_f, rew_f, used, nf_f), (obs_s, rew_s, _, nf_s) = runs
    assert used is True and nf_f == 0 and nf_s > 0
    np.testing.assert_allclose(obs_f, obs_s, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rew_f, rew_s, rtol=1e-6, atol=1e-7)
    # the explainer reads the scorer's class targets for a class-conditioned policy of this classifier
    ckpt = random_policy(scorer, conditioning="class", num_classes=3)
    ckpt.features, ckpt.feature_dim = feats.spec, feats(image()[None]).shape[1]
    ckpt.state_dict = RexlPolicy(ckpt.obs_dim, GRID * GRID, (32,), feature_dim=ckpt.feature_dim).state_dict()
    method = Rexl(scorer, policy=ckpt)
    exp = method.explain(image())
    assert exp.saliency.shape == (3, SIZE, SIZE) and exp.options["features"] == "backbone"
    assert method.fused is True and exp.n_feature_forward == 1        # scores and features from one pass
    separate = Rexl(scorer, policy=ckpt)
    separate.fused = False
    apart = separate.explain(image())
    assert apart.n_forward == exp.n_forward and apart.n_feature_forward == 1 + 3 * (GRID * GRID - 2)
    assert torch.equal(exp.order, apart.order)
    torch.testing.assert_close(exp.curve, apart.curve)

    class Tempered(SceneNet):          # logits not head(mean(features)) (a temperature): the fused pass is wrong
        def forward(self, x):
            return 2 * self.head(self.features(x).mean((2, 3)))
    other = Tempered(3, width=4).eval()
    other.load_state_dict(clf.model.state_dict())
    tempered = ClassifierScorer(ImageClassifier(other, ["a", "b", "c"], multi_label=True, mean=(0.0, 0.0, 0.0),
                                                  std=(1.0, 1.0, 1.0), device="cpu"))
    checked = Rexl(tempered, policy=ckpt, check_weights=False)
    assert checked._fused is None                 # its logits are not head(mean(features)): refused at setup
    got = checked.explain(image())
    assert checked.fused is False and got.n_feature_forward == 1 + 3 * (GRID * GRID - 2)
    torch.testing.assert_close(got.curve[:, 0], tempered(image()[None])[0])   # the scorer's, not the fused pass'
    with torch.no_grad():                         # near-zero logits: probabilities agree on some canvases, not all
        other.head.bias.zero_()
        other.head.weight.mul_(300)
    near_zero = Rexl(tempered, policy=ckpt, check_weights=False)
    assert near_zero._fused is None


def test_class_maps_are_the_heads_evidence_per_cell_and_the_state_holds_the_targets():
    """BackboneFeatures with cam: the class maps of a feature map already on the k x k grid are the head's class
    weights per position (their mean + bias = the logits); the state appends the target class's map, standardised
    over its cells, chosen by the one-hot conditioning."""
    from detection.models.classifier import ImageClassifier
    from detection.models.scene_classifier import SceneNet
    from explainers.rexl import BackboneFeatures, class_maps, observation
    torch.manual_seed(0)
    net = SceneNet(3, width=4).eval()
    clf = ImageClassifier(net, ["a", "b", "c"], multi_label=True, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                          device="cpu")
    feats = BackboneFeatures(clf, pool=2, cam=GRID)
    assert class_maps(feats.spec) == 3 and class_maps({"kind": "backbone", "pool": 4}) == 0
    fmap = torch.randn(2, 32, GRID, GRID)
    out = feats.from_map(fmap)
    n = GRID * GRID
    assert out.shape == (2, 32 * 4 + 3 * n)
    maps = out[:, -3 * n:].view(2, 3, n)
    with torch.no_grad():
        logits = net.head(fmap.mean((2, 3)))
    torch.testing.assert_close(maps.mean(2) + net.head.bias, logits, rtol=1e-5, atol=1e-5)
    taken = torch.zeros(2, n, dtype=torch.bool)
    cond = torch.eye(3)[[2, 0]]
    obs = observation(out, None, taken, cond, None, maps=3)
    assert obs.shape == (2, out.shape[1] + n + 3 + n)
    for row, cls in ((0, 2), (1, 0)):
        m = maps[row, cls]
        torch.testing.assert_close(obs[row, -n:], (m - m.mean()) / (m.std() + 1e-6))
    with pytest.raises(ValueError, match="classes"):
        BackboneFeatures(clf, cam=GRID, classes=5)
