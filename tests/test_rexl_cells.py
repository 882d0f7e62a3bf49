"""RExL cell policies (explainers.rexl.CellFeatures / CellPolicy, tasks.rexl_imitation): the per-cell state holds
what it says, a policy imitating the one-step look-ahead teacher deletes the only cell a toy classifier sees, training
resumes to the same weights, the file round-trips and the roll-out spends exactly its forwards."""
import pytest
import torch
from torch import nn

from detection.models.classifier import ImageClassifier
from detection.scorers import ClassifierScorer
from explainers.rexl import CellFeatures, PolicyCheckpoint, Rexl, cell_labels, cell_state

GRID, SIZE, CELL = 4, 64, 5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class MaskMul(nn.Module):
    def __init__(self, mask):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, x):
        return x * self.mask


class OneCellNet(nn.Module):
    """A classifier network with the shape CellFeatures reads (``features`` blocks, a Linear ``head`` on their global
    mean) whose evidence is the brightness of one grid cell: 8 x 8 average pool, a 1 x 1 conv, the cell's mask."""

    def __init__(self, cell=CELL):
        super().__init__()
        mask = (cell_labels(8, 8, GRID) == cell).float()
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.fill_(1 / 3)
            conv.bias.zero_()
        self.features = nn.Sequential(nn.AvgPool2d(8), conv, MaskMul(mask))
        self.head = nn.Linear(2, 1)
        with torch.no_grad():
            self.head.weight.fill_(40.0)
            self.head.bias.fill_(-4.0)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def classifier(cell=CELL):
    return ImageClassifier(OneCellNet(cell).eval(), ["a"], multi_label=True, mean=(0.0, 0.0, 0.0),
                           std=(1.0, 1.0, 1.0), device="cpu")


def scene(seed, cell=CELL):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, SIZE, SIZE, generator=g) * 0.2
    x[:, cell_labels(SIZE, SIZE, GRID) == cell] = 1.0
    return x


def test_cell_features_and_state_hold_what_they_say():
    clf = classifier()
    feats = CellFeatures(clf, blocks=(0, 1), grid=GRID)
    x = torch.stack([scene(0), scene(1)])
    out = feats(x)
    n = GRID * GRID
    channels = 3 + 2 + 1                                     # block 0 (3 ch), block 1 (2 ch), 1 class map
    assert out.shape == (2, channels * n + 1)
    torch.testing.assert_close(out[:, -1:], ClassifierScorer(clf)(x))       # the probabilities of the same pass
    taken = torch.zeros(2, n, dtype=torch.bool)
    taken[0, [0, 1]] = True
    state = cell_state(out, taken, torch.ones(2, 1), classes=1, grid=GRID)
    assert state.shape == (2, channels + 1 + 4, n)
    torch.testing.assert_close(state[:, channels], out[:, (channels - 1) * n:channels * n])   # the target's map
    assert state[0, channels + 1].tolist() == taken[0].float().tolist()
    assert float(state[0, channels + 2, 4]) == pytest.approx(2 / 9)          # cell 4's 3 x 3 neighbours 0, 1 taken
    torch.testing.assert_close(state[:, -1, 0], out[:, -1])                  # the target's current probability
    assert int(state[0, channels].argmax()) == CELL                          # the evidence sits in the seen cell
    with pytest.raises(ValueError, match="blocks"):
        CellFeatures(clf, blocks=(2,), grid=GRID)            # the last block is the class maps' own
    with pytest.raises(ValueError, match="cell policy"):
        PolicyCheckpoint(model_sha256="x", grid=GRID, mode="deletion", perturbation="mean", conditioning="class",
                         features={"kind": "backbone"}, feature_dim=1, state_dict={}, num_classes=1, arch="cells")


def test_early_teacher_steps_come_from_the_first_steps_and_the_roll_outs_stop_after_them():
    from tasks.rexl_imitation import Teacher, check_recipe, collect, guide_rule
    n, images = GRID * GRID, [scene(s) for s in range(3)]
    for early in (None, 3):
        teacher = Teacher(CellFeatures(classifier(), (0, 1), GRID), GRID, "mean")
        states, drops, taken = collect(teacher, images, guide_rule(teacher.guide, 0.3), per=2,
                                       generator=torch.Generator().manual_seed(0), early=early)
        at = sorted(set(taken.sum(1).tolist()))             # the teacher's steps: cells taken before each row
        assert len(at) == 2 and len(states) == 2 * len(images) and torch.equal(drops.isnan(), taken)
        passes = n + 1 if early is None else at[-1] + 1     # roll-out passes of the 3 canvases
        assert early is None or at[-1] < early
        assert teacher.n_forward == len(images) * (passes + sum(n - t for t in at))
    check_recipe(1, 2, 1, 0.3, early=0)                         # 0: every step
    check_recipe(1, 2, 1, 0.3, early=48, grid=7)                # every step with a choice
    for early in (1, -1, 49):                                   # fewer steps than per, negative, more than there are
        with pytest.raises(ValueError, match="early 0 / null"):
            check_recipe(1, 2, 1, 0.3, early=early, grid=7)


def test_imitation_learns_the_only_cell_the_classifier_sees_and_resumes(tmp_path):
    from tasks.rexl_imitation import train_look_ahead
    clf = classifier()
    scorer = ClassifierScorer(clf)
    images = [scene(s) for s in range(4)]
    options = dict(grid=GRID, blocks=(0, 1), rounds=2, per=3, epochs=40, seed=0, checkpoint_dir=tmp_path / "ck")
    ckpt, summary = train_look_ahead(scorer, images, **options)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    path = ckpt.save(tmp_path / "cells.pt")
    loaded = PolicyCheckpoint.load(path)
    assert loaded.arch == "cells" and loaded.features["kind"] == "cells"
    exp = Rexl(scorer, policy=path).explain(scene(9))          # an unseen scene; the default map: rank / nearest
    n = GRID * GRID
    assert int(exp.order[0, 0]) == CELL and exp.options["credit"] == "rank" and exp.options["upsample"] == "nearest"
    # one pass of the classifier gives the scores and the cell features: one feature forward (the first canvas)
    assert exp.n_forward == 2 + (n - 1) and exp.n_feature_forward == 1
    again = Rexl(scorer, policy=loaded).explain(scene(9))
    assert torch.equal(exp.order, again.order) and torch.equal(exp.saliency, again.saliency)
    separate = Rexl(scorer, policy=loaded)
    separate.fused = False                                 # what a classifier without the fused pass gets
    apart = separate.explain(scene(9))
    assert apart.n_forward == exp.n_forward and apart.n_feature_forward == 1 + (n - 2)
    assert torch.equal(exp.order, apart.order)
    torch.testing.assert_close(exp.curve, apart.curve) and torch.testing.assert_close(exp.saliency, apart.saliency)
    odd = torch.nn.functional.interpolate(scene(9)[None], size=(67, 71), mode="bilinear")[0]   # sides not k-multiples
    fused_odd, apart_odd = Rexl(scorer, policy=loaded).explain(odd), separate.explain(odd)
    assert fused_odd.saliency.shape == (1, 67, 71) and fused_odd.n_feature_forward == 1
    assert torch.equal(fused_odd.order, apart_odd.order)
    torch.testing.assert_close(fused_odd.curve, apart_odd.curve)
    resumed, summary2 = train_look_ahead(scorer, images, **options)         # both rounds restored, nothing retrained
    assert summary2["rounds"] == summary["rounds"]
    for k, v in ckpt.state_dict.items():
        assert torch.equal(v, resumed.state_dict[k]), k
    # killed after round 1: a rerun trains round 2 on top of the saved round 1 and gets the same weights
    (tmp_path / "ck" / "round2.pt").unlink()
    partial, summary3 = train_look_ahead(scorer, images, **options)
    assert summary3["n_forward"] == summary["n_forward"]
    for k, v in ckpt.state_dict.items():
        assert torch.equal(v, partial.state_dict[k]), k
    # other images (same count) never resume these rounds
    other, summary4 = train_look_ahead(scorer, [scene(s + 20) for s in range(4)], **options)
    assert summary4["seconds_this_run"] > 0 and any(not torch.equal(v, other.state_dict[k])
                                                    for k, v in ckpt.state_dict.items())
    with pytest.raises(ValueError, match="trained for model weights"):      # the guard: another classifier's weights
        Rexl(ClassifierScorer(classifier(cell=2)), policy=path)
    # a file whose settings disagree, or whose weights do not fit its network, is refused naming the file
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "num_classes": 2}, tmp_path / "classes.pt")
    with pytest.raises(ValueError, match=r"rexl policy: .*classes\.pt: .*disagree"):
        PolicyCheckpoint.load(tmp_path / "classes.pt")
    torch.save({**raw, "width": 32}, tmp_path / "width.pt")
    with pytest.raises(ValueError, match=r"rexl policy: .*width\.pt: the weights do not fit its network"):
        PolicyCheckpoint.load(tmp_path / "width.pt")
