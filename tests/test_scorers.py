"""Scorers: D-RISE against a hand-computed example, batch invariance, the classifier target probabilities."""
import pytest
import torch
from torch import nn

from detection.models import CallableDetector, ImageClassifier, YoloDetector
from detection.models.base import Candidates
from detection.scorers import ClassifierScorer, DRiseScorer, drise_similarity


def test_drise_similarity_hand_computed():
    targets = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 40]])
    target_probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cand = Candidates(
        boxes=torch.tensor([[[0.0, 0, 10, 5], [0, 0, 10, 10], [20, 20, 30, 30]],
                            [[100.0, 100, 110, 110], [0, 0, 0, 0], [0, 0, 0, 0]]]),
        objectness=torch.tensor([[0.8, 0.5, 0.9], [0.99, 1.0, 1.0]]),
        class_probs=torch.tensor([[[0.6, 0.8], [1.0, 0.0], [0.0, 2.0]], [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]]),
        valid=torch.tensor([[True, True, True], [True, False, False]]))
    # image 0, target 0: candidate 0 -> IoU 0.5 * obj 0.8 * cos 0.6 = 0.24; candidate 1 -> 1 * 0.5 * 1 = 0.5
    # image 0, target 1: candidate 2 -> IoU 100/200 * obj 0.9 * cos 1 = 0.45
    # image 1: the only valid candidate overlaps nothing -> 0 (padding never counts)
    expected = torch.tensor([[0.5, 0.45], [0.0, 0.0]])
    assert torch.allclose(drise_similarity(targets, target_probs, cand), expected, atol=1e-6)


def test_drise_scorer_on_black_box_detector():
    def detector(images):                   # finds a box where the image is bright, scored by brightness
        out = []
        for img in images:
            s = float(img[:, 10:20, 10:20].mean())
            out.append({"boxes": [[10, 10, 20, 20]], "scores": [s], "labels": [0]})
        return out

    det = CallableDetector(detector, ["person"])
    ref = det.detect(torch.ones(1, 3, 32, 32))[0]
    scorer = DRiseScorer.for_detections(det, ref)
    images = torch.ones(4, 3, 32, 32) * torch.tensor([1.0, 0.5, 0.25, 0.0]).view(4, 1, 1, 1)
    assert torch.allclose(scorer(images)[:, 0], torch.tensor([1.0, 0.5, 0.25, 0.0]))


def test_scorers_are_batch_invariant():
    torch.manual_seed(0)
    yolo = YoloDetector("yolov8n.yaml", nc=2, imgsz=160, conf=0.0, device="cpu", batch_size=3)
    ref = yolo.detect(torch.rand(1, 3, 96, 128))[0]
    det_scorer = DRiseScorer.for_detections(yolo, ref, index=range(5))
    clf = ImageClassifier(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.AdaptiveAvgPool2d(1),
                                        nn.Flatten(), nn.Linear(4, 3)), ["a", "b", "c"], device="cpu")
    clf_scorer = ClassifierScorer(clf, targets=[2, 0], chunk_size=3)
    images = torch.rand(7, 3, 96, 128)
    for scorer, T in ((det_scorer, 5), (clf_scorer, 2)):
        together = scorer(images)
        one_by_one = torch.cat([scorer(images[i:i + 1]) for i in range(7)])
        assert together.shape == (7, T)
        assert torch.allclose(together, one_by_one, atol=1e-5)


def test_classifier_scorer_selects_target_probabilities():
    clf = ImageClassifier(nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), ["a", "b", "c"], multi_label=True,
                          device="cpu")
    images = torch.rand(4, 3, 8, 8)
    probs = clf.classify(images)
    assert torch.allclose(ClassifierScorer(clf, targets=[1])(images), probs[:, [1]])
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\]"):
        ClassifierScorer(clf)(torch.rand(3, 8, 8))
