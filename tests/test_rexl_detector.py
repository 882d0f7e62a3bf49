"""RExL for detectors (explainers.rexl_detector, tasks.rexl_imitation.train_look_ahead_boxes): the per-cell state of a
detector's pass holds what it says (the pooled head inputs, the target's support map, its D-RISE score equal to the
scorer's), and a box-conditioned policy imitating the look-ahead teacher deletes first the only cell a toy detector
sees, with exactly its forwards, on an unseen scene; the guard refuses another detector's weights."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from detection.models.base import Candidates, Detections
from detection.models.letterbox import Letterbox
from detection.scorers import DRiseScorer
from explainers.rexl import PolicyCheckpoint, Rexl, cell_labels
from explainers.rexl_detector import STATE_EXTRA, DetectorCellFeatures, box_cell_state

GRID, SIZE, CELL, STRIDE = 4, 64, 5, 8
BOX = [16.0, 16.0, 48.0, 48.0]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


class OneCellDetector:
    """A detector adapter with the interface DetectorCellFeatures reads: the head's one input map is the image
    average-pooled by 8 (3 channels, one anchor per position, centres at (j + 0.5) 8); every anchor predicts ``BOX``,
    and its objectness is the brightness of its position when it lies in grid cell ``cell``, else 0: the D-RISE
    score of ``BOX`` sees that cell only."""

    class_names = ["person"]
    num_classes = 1
    batch_size = 32
    amp = False
    device = torch.device("cpu")

    def __init__(self, cell=CELL):
        self.model = nn.Module()
        self.model.register_buffer("cell", torch.tensor(float(cell)))          # the weights the guard hashes
        self.mask = (cell_labels(SIZE // STRIDE, SIZE // STRIDE, GRID) == cell).float().view(-1)

    head_channels = [3]

    def candidates_and_maps(self, images):
        B, _, H, W = images.shape
        fmap = F.avg_pool2d(images.float(), STRIDE)                              # [B, 3, 8, 8]
        bright = fmap.mean(1).flatten(1)                                         # [B, 64]
        objectness = torch.sigmoid(40 * (bright - 0.5)) * self.mask
        K = objectness.shape[1]
        cand = Candidates(boxes=torch.tensor(BOX).expand(B, K, 4), objectness=objectness,
                          class_probs=objectness[..., None], valid=torch.ones(B, K, dtype=torch.bool))
        return cand, [fmap], Letterbox(1.0, 0, 0, (H, W), (H, W), (H, W))

    def candidates(self, images):
        return self.candidates_and_maps(images)[0]

    @staticmethod
    def anchor_points(maps, box):
        h, w = maps[0].shape[-2:]
        ys, xs = torch.meshgrid((torch.arange(h) + 0.5) * STRIDE, (torch.arange(w) + 0.5) * STRIDE, indexing="ij")
        return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)

    def detect(self, images):
        score = self.candidates(images).objectness.amax(1)
        return [Detections(boxes=torch.tensor([BOX]), scores=s[None], labels=torch.zeros(1, dtype=torch.long),
                           class_probs=s[None, None]) for s in score]


def scene(seed, cell=CELL):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3, SIZE, SIZE, generator=g) * 0.2
    x[:, cell_labels(SIZE, SIZE, GRID) == cell] = 1.0
    return x


def scorer_of(detector, image):
    det = detector.detect(image[None])[0]
    return DRiseScorer(detector, det.boxes, det.class_probs)


def test_detector_cell_features_and_state_hold_what_they_say():
    det = OneCellDetector()
    scorer = scorer_of(det, scene(0))
    feats = DetectorCellFeatures(scorer, layers=[0], grid=GRID)
    x = torch.stack([scene(0), scene(1) * 0.5])
    scores, out = feats.run(x, torch.zeros(2, dtype=torch.long))
    n = GRID * GRID
    assert out.shape == (2, 3 * n + n + 1) and feats.dim == out.shape[1]
    torch.testing.assert_close(scores, scorer(x))                             # the scorer's own D-RISE scores
    torch.testing.assert_close(out[:, -1], scores[:, 0])                      # the row's target score, last
    torch.testing.assert_close(out[:, :3 * n], F.adaptive_avg_pool2d(x, GRID).flatten(1))   # pooled head input
    support = feats.support(out)
    others = [c for c in range(n) if c != CELL]
    assert support.argmax(1).tolist() == [CELL, CELL] and float(support[:, others].max()) == 0
    torch.testing.assert_close(support.amax(1), scores[:, 0])                 # the score is the support's max
    one, many = feats.run(x[:1], torch.zeros(3, dtype=torch.long))            # one canvas for several targets
    assert one.shape == (1, 1) and many.shape == (3, feats.dim)
    taken = torch.zeros(2, n, dtype=torch.bool)
    taken[0, [0, 1]] = True
    from explainers.rexl import box_condition
    cond = box_condition(torch.tensor([BOX, BOX]), SIZE, SIZE, GRID)
    state = box_cell_state(out, taken, cond, GRID)
    assert state.shape == (2, 3 + STATE_EXTRA, n)
    torch.testing.assert_close(state[:, 3], support)                                         # the support map
    torch.testing.assert_close(state[:, 5], cond[:, :n])                                     # the box's cover
    assert state[0, 6].tolist() == taken[0].float().tolist()
    assert float(state[0, 7, 4]) == pytest.approx(2 / 9)
    torch.testing.assert_close(state[:, -1, 0], scores[:, 0])
    with pytest.raises(ValueError, match="layers"):
        DetectorCellFeatures(scorer, layers=[1], grid=GRID)
    with pytest.raises(ValueError, match="D-RISE scorer|detector adapter"):
        DetectorCellFeatures(object(), layers=[0], grid=GRID)


def test_imitation_learns_the_only_cell_the_detector_sees(tmp_path):
    from tasks.rexl_imitation import train_look_ahead_boxes
    det = OneCellDetector()
    images = [scene(s) for s in range(4)]
    ckpt, summary = train_look_ahead_boxes(det, images, grid=GRID, layers=[0], min_height=10, rounds=2, per=3,
                                           epochs=40, seed=0)
    assert summary["pedestrians"] == 4 and [r["round"] for r in summary["rounds"]] == [1, 2]
    path = ckpt.save(tmp_path / "boxes.pt")
    loaded = PolicyCheckpoint.load(path)
    assert loaded.conditioning == "box" and loaded.features["kind"] == "detector_cells"
    unseen = scene(9)
    scorer = scorer_of(det, unseen)
    exp = Rexl(scorer, policy=path).explain(unseen)
    n = GRID * GRID
    assert int(exp.order[0, 0]) == CELL
    assert (exp.options["credit"], exp.options["upsample"]) == ("cumulative", "bilinear")   # a detector's default map
    assert sorted(exp.order[0].tolist()) == list(range(n))
    assert exp.n_forward == 2 + (n - 1) and exp.n_feature_forward == 1       # one detector pass a step
    again = Rexl(scorer, policy=loaded).explain(unseen)
    assert torch.equal(exp.order, again.order) and torch.equal(exp.saliency, again.saliency)
    separate = Rexl(scorer, policy=loaded)
    separate.fused = False                               # scores and features in separate passes: the same roll-out
    apart = separate.explain(unseen)
    assert apart.n_forward == exp.n_forward and apart.n_feature_forward == 1 + (n - 2)
    assert torch.equal(exp.order, apart.order)
    torch.testing.assert_close(exp.curve, apart.curve)
    other = [BOX[0] + 8, BOX[1], BOX[2] + 8, BOX[3]]                         # a second, different target
    two = DRiseScorer(det, torch.tensor([BOX, other]), torch.ones(2, 1))     # both in lockstep
    both = Rexl(two, policy=loaded).explain(unseen)
    assert both.n_forward == 2 + 2 * (n - 1) and both.n_feature_forward == 1 and both.saliency.shape == (2, SIZE, SIZE)
    for t, box in enumerate((BOX, other)):                                   # = each target explained alone
        alone = Rexl(DRiseScorer(det, torch.tensor([box]), torch.ones(1, 1)), policy=loaded).explain(unseen)
        assert torch.equal(both.order[t], alone.order[0])
        torch.testing.assert_close(both.curve[t], alone.curve[0])
    assert not torch.allclose(both.curve[0], both.curve[1])                 # the rows are different targets'
    with pytest.raises(ValueError, match="arch 'cells'"):                    # detector cell features need a cell policy
        PolicyCheckpoint(**{k: getattr(loaded, k) for k in ("model_sha256", "grid", "mode", "perturbation",
                                                           "conditioning", "features", "feature_dim", "state_dict")},
                         arch="mlp")
    with pytest.raises(ValueError, match="trained for model weights"):      # the guard: another detector's weights
        Rexl(scorer_of(OneCellDetector(cell=2), unseen), policy=path)
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "feature_dim": raw["feature_dim"] + n}, tmp_path / "dim.pt")
    with pytest.raises(ValueError, match=r"rexl policy: .*dim\.pt: .*disagree"):
        PolicyCheckpoint.load(tmp_path / "dim.pt")


def test_ppo_learns_the_only_cell_the_detector_sees_and_its_env_returns_the_cell_auc(tmp_path):
    """tasks.rexl_boxes_ppo: MaskablePPO on the box-conditioned game deletes first the only cell the toy detector sees
    on an unseen scene (an untrained policy of the same seed does not), with the imitation policy's forwards; the
    TeacherBatch's return of a fixed cell order is the deletion AUC of that order's score curve."""
    from tasks.rexl_boxes_ppo import TeacherBatch, train_boxes_ppo
    from tasks.rexl_imitation import BoxTeacher
    from tasks.rexl_train import detector_episodes
    det = OneCellDetector()
    images = [scene(s) for s in range(4)]
    n = GRID * GRID
    scorer, episodes = detector_episodes(det, images, GRID, 10)
    batch = TeacherBatch(BoxTeacher(DetectorCellFeatures(scorer, [0], GRID), GRID, "mean"))
    batch.start(episodes)
    order = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(i)) for i in range(4)], 1)
    for t in range(n):
        batch.step(order[t])
    curve = torch.stack(batch.curve, 1)
    torch.testing.assert_close(-batch.returns, torch.trapezoid(curve, dx=1 / n, dim=1), atol=1e-6, rtol=1e-6)
    assert batch.n_forward == 4 * (n + 1)
    options = dict(grid=GRID, layers=[0], min_height=10, n_envs=4, horizon=4, learning_rate=3e-3, width=8,
                   value_width=8, seed=1)
    untrained, _ = train_boxes_ppo(det, images, steps=16, **{**options, "learning_rate": 1e-12})
    unseen = scene(9)
    first = int(Rexl(scorer_of(det, unseen), policy=untrained).explain(unseen).order[0, 0])
    assert first != CELL                                                      # seed 1 starts elsewhere
    ckpt, summary = train_boxes_ppo(det, images, steps=60 * 16, checkpoint_dir=tmp_path / "ck", **options)
    assert summary["pedestrians"] == 4 and summary["steps"] == 60 * 16 and summary["gamma"] == 0.5
    assert summary["auc_last"] < summary["auc_first"]
    path = ckpt.save(tmp_path / "ppo_boxes.pt")
    loaded = PolicyCheckpoint.load(path)
    assert (loaded.conditioning, loaded.mode, loaded.arch) == ("box", "deletion", "cells")
    exp = Rexl(scorer_of(det, unseen), policy=path).explain(unseen)
    assert int(exp.order[0, 0]) == CELL and exp.n_forward == 2 + (n - 1) and exp.n_feature_forward == 1
    with pytest.raises(ValueError, match="horizon"):
        train_boxes_ppo(det, images, steps=16, **{**options, "horizon": n + 1})
    with pytest.raises(ValueError, match="mode"):
        train_boxes_ppo(det, images, steps=16, mode="both", **options)


def test_yolo_head_inputs_come_from_the_scoring_pass_and_threads_do_not_mix():
    """The demo YOLO: candidates_and_maps gives exactly candidates()'s candidates, one anchor per candidate, maps of
    the head's channels; two threads sharing the detector each get their own image's maps (no hook on the shared
    network), and a deep copy (the sanity check's randomised copies) works alike."""
    import copy
    from concurrent.futures import ThreadPoolExecutor

    from detection.models.yolo import YoloDetector
    from tests.conftest import REPO

    det = YoloDetector(REPO / "weights/demo/detector.pt", imgsz=320, device="cpu")
    g = torch.Generator().manual_seed(0)
    images = [torch.rand(1, 3, 240, 320, generator=g) for _ in range(2)]
    cand, maps, box = det.candidates_and_maps(images[0])
    plain = det.candidates(images[0])
    assert torch.equal(cand.boxes, plain.boxes) and torch.equal(cand.class_probs, plain.class_probs)
    assert [m.shape[1] for m in maps] == det.head_channels
    assert det.anchor_points(maps, box).shape[0] == cand.boxes.shape[1]
    alone = [det.candidates_and_maps(x)[1] for x in images]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            both = list(pool.map(lambda x: det.candidates_and_maps(x)[1], images * 2))
            for got, want in zip(both, alone * 2):
                assert all(torch.equal(a, b) for a, b in zip(got, want))
    twin = copy.deepcopy(det)
    assert all(torch.equal(a, b) for a, b in zip(twin.candidates_and_maps(images[1])[1], alone[1]))


def test_the_shipped_detector_policy_on_an_odd_sized_portrait_image():
    """The shipped policy with the demo YOLO on a 237 x 181 image (letterboxed with padding that is no multiple of
    the strides, sides no multiple of the grid): one detector pass a step, the same roll-out as separate passes, a
    map of the image's size; and a policy that reads another channel count is refused naming the file."""
    from detection.models.yolo import YoloDetector
    from tests.conftest import REPO

    det = YoloDetector(REPO / "weights/demo/detector.pt", imgsz=320, device="cpu")
    image = torch.rand(3, 237, 181, generator=torch.Generator().manual_seed(1))
    scorer = DRiseScorer(det, torch.tensor([[40.0, 30.0, 140.0, 220.0]]), torch.ones(1, 1))
    policy = REPO / "weights/demo/rexl_detector_deletion_cells.pt"
    fused = Rexl(scorer, policy=policy).explain(image)
    n = PolicyCheckpoint.load(policy).grid ** 2
    assert fused.n_forward == 2 + (n - 1) and fused.n_feature_forward == 1 and fused.saliency.shape == (1, 237, 181)
    assert sorted(fused.order[0].tolist()) == list(range(n)) and torch.isfinite(fused.saliency).all()
    separate = Rexl(scorer, policy=policy)
    separate.fused = False
    apart = separate.explain(image)
    assert torch.equal(fused.order, apart.order)
    torch.testing.assert_close(fused.curve, apart.curve)
    ckpt = PolicyCheckpoint.load(policy)
    ckpt.features = {**ckpt.features, "layers": [1]}        # says 96 channels; this detector's map 1 has 64
    with pytest.raises(ValueError, match="reads 96 channels .* have 64"):
        Rexl(scorer, policy=ckpt)


def test_an_insertion_policy_restores_first_the_only_cell_the_detector_sees(tmp_path):
    """Insertion mode: the canvas starts as the substrate, the teacher's gain is the rise of the target's log-odds,
    and the state also reads the image (its pooled maps and log support map, last): the trained policy restores the
    one cell the toy detector sees first, on an unseen scene, with 2 + (n - 1) model forwards and 2 feature passes
    (the image's and the first canvas's); its curve runs from the substrate's score to the image's."""
    from explainers.rexl_detector import box_cell_state
    from tasks.rexl_imitation import BoxTeacher, train_look_ahead_boxes
    from tasks.rexl_train import detector_episodes

    det = OneCellDetector()
    n = GRID * GRID
    scorer, episodes = detector_episodes(det, [scene(0)], GRID, 10, "person")
    teacher = BoxTeacher(DetectorCellFeatures(scorer, [0], GRID), GRID, "mean", mode="insertion")
    game, cond, cols = teacher.start(episodes)
    assert teacher.n_forward == 1 and game.mode == "insertion"               # the image's pass
    feats = teacher.run(game.canvas(), cols)
    gains = teacher.drops(game, feats, cols)[0]
    assert int(gains.argmax()) == CELL and float(gains[CELL]) > 5 and float(gains.abs().sort().values[-2]) < 1e-3
    state = teacher.state(feats, game.taken, cond)
    assert state.shape == (1, 2 * 3 + STATE_EXTRA + 1, n)
    torch.testing.assert_close(state[0, -1], torch.log(teacher.features.support(teacher.image_features)[0]
                                                       .clamp_min(1e-6)))
    torch.testing.assert_close(box_cell_state(feats, game.taken, cond, GRID), state[:, :3 + STATE_EXTRA])
    torch.testing.assert_close(state[0, 3 + STATE_EXTRA:-1], teacher.image_features[0, :3 * n].view(3, n))  # its maps
    with pytest.raises(ValueError, match="mode must be one of"):
        BoxTeacher(teacher.features, GRID, "mean", mode="deleting")
    assert float(teacher.image_features[0, -1]) > 0.9 and float(feats[0, -1]) < 1e-3      # the image vs the substrate

    images = [scene(s) for s in range(4)]
    ckpt, summary = train_look_ahead_boxes(det, images, grid=GRID, layers=[0], min_height=10, mode="insertion",
                                           rounds=2, per=3, epochs=40, seed=0)
    assert summary["mode"] == "insertion"
    path = ckpt.save(tmp_path / "insert.pt")
    loaded = PolicyCheckpoint.load(path)
    assert loaded.mode == "insertion" and loaded.cell_channels == 2 * 3 + STATE_EXTRA + 1
    with pytest.raises(ValueError, match="mode must be one of"):
        PolicyCheckpoint(**{**{k: getattr(loaded, k) for k in ("model_sha256", "grid", "perturbation", "conditioning",
                                                               "features", "feature_dim", "state_dict")},
                            "mode": "Insertion"}, arch="cells")
    unseen = scene(9)
    scorer = scorer_of(det, unseen)
    exp = Rexl(scorer, policy=path).explain(unseen)
    assert int(exp.order[0, 0]) == CELL and sorted(exp.order[0].tolist()) == list(range(n))
    assert exp.n_forward == 2 + (n - 1) and exp.n_feature_forward == 2
    torch.testing.assert_close(exp.curve[0, [0, n]], torch.stack([exp.empty_score[0], exp.full_score[0]]))
    assert float(exp.curve[0, 1]) > 0.9 * float(exp.full_score[0])          # one cell restores the detection
    assert int(exp.saliency[0].flatten().argmax()) in cell_labels(SIZE, SIZE, GRID).flatten().eq(CELL).nonzero()
    separate = Rexl(scorer, policy=loaded)
    separate.fused = False
    apart = separate.explain(unseen)
    assert torch.equal(exp.order, apart.order) and apart.n_feature_forward == 2 + (n - 2)
    torch.testing.assert_close(exp.curve, apart.curve)


def test_one_call_explains_each_pedestrian_over_its_own_parts():
    """Per-target regions [T, R, H, W] (each pedestrian's own parts): the T roll-outs advance together, one batched
    detector call a step (2 + T (k^2 - 1) forwards: the image and the baseline shared), each target's order and map
    those of its own call, and its relevance the mean of its own map over its own parts."""
    from detection.models.yolo import YoloDetector
    from tests.conftest import REPO

    det = YoloDetector(REPO / "weights/demo/detector.pt", imgsz=320, device="cpu")
    image = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(2))
    boxes = torch.tensor([[40.0, 30.0, 120.0, 220.0], [180.0, 60.0, 260.0, 230.0]])
    policy = REPO / "weights/demo/rexl_detector_deletion_cells.pt"
    n = PolicyCheckpoint.load(policy).grid ** 2
    masks = torch.zeros(2, 3, 240, 320, dtype=torch.bool)
    masks[0, 0, 30:90, 40:120], masks[0, 1, 90:220, 40:120] = True, True          # target 0: two parts
    masks[1, 2, 60:230, 180:260] = True                                          # target 1: one (others empty)
    both = Rexl(DRiseScorer(det, boxes, torch.ones(2, 1)), policy=policy).explain(image, masks)
    assert both.n_forward == 2 + 2 * (n - 1) and both.relevance.shape == (2, 3)
    for t in range(2):
        one = Rexl(DRiseScorer(det, boxes[t:t + 1], torch.ones(1, 1)), policy=policy).explain(image, masks[t])
        assert torch.equal(both.order[t], one.order[0])
        torch.testing.assert_close(both.saliency[t], one.saliency[0], atol=1e-5, rtol=1e-4)
        mine = masks[t].flatten(1).any(1)
        torch.testing.assert_close(both.relevance[t][mine], one.relevance[0][mine], atol=1e-5, rtol=1e-4)
        expected = (both.saliency[t] * masks[t].float()).flatten(1).sum(1) / masks[t].flatten(1).sum(1).clamp_min(1)
        torch.testing.assert_close(both.relevance[t], expected, atol=1e-5, rtol=1e-4)
    assert both.relevance[1, 0] == 0 and both.relevance[1, 1] == 0
