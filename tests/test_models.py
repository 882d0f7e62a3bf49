"""Model adapters on tiny models built here: shapes, coordinates, errors that name the weights file."""
import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet, ssdlite320_mobilenet_v3_large
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign

from detection.models import CallableDetector, ImageClassifier, TorchvisionDetector, WeightsError, YoloDetector
from detection.models.letterbox import letterbox


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def test_letterbox_maps_boxes_back():
    img = torch.zeros(1, 3, 240, 320)
    img[..., 40:100, 200:260] = 1.0                       # a white square at x 200..260, y 40..100
    x, box = letterbox(img, imgsz=160, stride=32)
    assert x.shape[-2:] == (128, 160) and box.scale == 0.5
    ys, xs = torch.nonzero(x[0, 0] > 0.9, as_tuple=True)
    found = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
    assert torch.allclose(box.boxes_to_original(found), torch.tensor([[200.0, 40, 260, 100]]), atol=2)


@pytest.mark.parametrize("cfg, pose", [("yolov8n.yaml", False), ("yolov8n-pose.yaml", True)])
def test_yolo_from_yaml(cfg, pose):
    det = YoloDetector(cfg, nc=2, imgsz=160, conf=0.0, device="cpu")
    images = torch.rand(2, 3, 120, 160)
    cand = det.candidates(images)
    A = 20 * 16 + 10 * 8 + 5 * 4                          # anchors of a 160x128 input at strides 8/16/32
    assert cand.boxes.shape == (2, A, 4) and cand.class_probs.shape == (2, A, 2)
    assert torch.equal(cand.objectness, cand.class_probs.amax(-1))
    dets = det.detect(images)
    assert len(dets) == 2 and dets[0].class_probs.shape[1] == 2
    assert (dets[0].keypoints is not None) == pose
    if pose:
        assert dets[0].keypoints.shape[1:] == (17, 3)


def test_yolo_channels_last_gives_the_same_outputs():
    """Channels-last weights (the CPU default: faster convolutions) change neither the outputs beyond float
    rounding nor the weights' values."""
    torch.manual_seed(0)
    plain = YoloDetector("yolov8n.yaml", nc=2, imgsz=160, conf=0.0, device="cpu", channels_last=False)
    fast = YoloDetector("yolov8n.yaml", nc=2, imgsz=160, conf=0.0, device="cpu")
    fast.model.load_state_dict(plain.model.state_dict())
    weight = next(p for p in fast.model.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not next(p for p in plain.model.parameters() if p.ndim == 4).is_contiguous(
        memory_format=torch.channels_last)
    images = torch.rand(3, 3, 120, 160)
    a, b = plain.candidates(images), fast.candidates(images)
    torch.testing.assert_close(b.class_probs, a.class_probs, atol=1e-5, rtol=0)
    torch.testing.assert_close(b.boxes, a.boxes, atol=1e-3, rtol=1e-5)


def test_yolo_weight_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        YoloDetector(tmp_path / "missing.pt")
    (tmp_path / "corrupt.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(WeightsError, match="corrupt.pt"):
        YoloDetector(tmp_path / "corrupt.pt")


def _tiny_backbone():
    backbone = nn.Sequential(nn.Conv2d(3, 32, 3, stride=4, padding=1), nn.ReLU())
    backbone.out_channels = 32
    return backbone


def _tiny(kind: str) -> nn.Module:
    small = dict(min_size=64, max_size=96)
    if kind == "fasterrcnn":
        return FasterRCNN(_tiny_backbone(), num_classes=3,
                          rpn_anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)),
                          box_roi_pool=MultiScaleRoIAlign(["0"], 7, 2), box_score_thresh=0.0, **small)
    if kind == "retinanet":
        return RetinaNet(_tiny_backbone(), num_classes=3,
                         anchor_generator=AnchorGenerator(((16, 32),), ((0.5, 1.0, 2.0),)), score_thresh=0.0, **small)
    return FCOS(_tiny_backbone(), num_classes=3, anchor_generator=AnchorGenerator(((8,),), ((1.0,),)),
                score_thresh=0.0, **small)


@pytest.mark.parametrize("kind", ["fasterrcnn", "retinanet", "fcos"])
def test_torchvision_detectors(kind):
    det = TorchvisionDetector(model=_tiny(kind), class_names=["__background__", "person", "car"], device="cpu")
    images = torch.rand(2, 3, 60, 80)
    dets = det.detect(images)
    assert len(dets) == 2 and dets[0].boxes.shape[1] == 4
    cand = det.candidates(images)
    assert cand.boxes.shape[:2] == cand.objectness.shape == cand.valid.shape
    assert cand.class_probs.shape[-1] == 3
    boxes = cand.boxes[cand.valid]
    assert (boxes[:, 0] >= -1e-4).all() and (boxes[:, 2] <= 80 + 1e-4).all()     # in original pixels
    if kind == "fasterrcnn":                               # pre-NMS: every proposal, softmax over classes
        probs = cand.class_probs[cand.valid]
        assert torch.allclose(probs.sum(-1), torch.ones(len(probs)), atol=1e-5)
        assert torch.allclose(cand.objectness[cand.valid], 1 - probs[:, 0], atol=1e-6)
        assert cand.valid.sum() > sum(len(d.boxes) for d in dets)


def test_torchvision_weights_from_file_and_errors(tmp_path):
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)
    torch.save(model.state_dict(), tmp_path / "ssd.pth")
    det = TorchvisionDetector("ssdlite320_mobilenet_v3_large", tmp_path / "ssd.pth", num_classes=3, device="cpu")
    assert len(det.detect(torch.rand(1, 3, 64, 64))) == 1
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        TorchvisionDetector("ssdlite320_mobilenet_v3_large", tmp_path / "nope.pth", num_classes=3)
    with pytest.raises(WeightsError, match=r"ssd\.pth: weights do not match"):
        TorchvisionDetector("ssdlite320_mobilenet_v3_large", tmp_path / "ssd.pth", num_classes=5)
    with pytest.raises(ValueError, match="unknown torchvision detector"):
        TorchvisionDetector("yolo9000", tmp_path / "ssd.pth")


def _sharpen(head: nn.Linear) -> None:
    """Random-weight logits are small: scale the last layer so probabilities tell input mistakes apart."""
    with torch.no_grad():
        head.weight.mul_(10)
        head.bias.mul_(10)


def _normalised(x: torch.Tensor, mean, std) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_classifiers_give_the_source_networks_probabilities(tmp_path):
    """torchvision / timm / TorchScript adapters against the source network on the input it should see: resized
    (exact area average for integer factors, antialiased bilinear otherwise), normalised (ImageNet, or the timm
    model's own mean / std), softmax or sigmoid - in batches smaller than the input."""
    import timm
    import torchvision
    from torch.nn.functional import avg_pool2d, interpolate

    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    names = ["person", "bicycle", "car"]
    images = torch.rand(5, 3, 64, 64)

    tv = torchvision.models.resnet18(weights=None, num_classes=3).eval()
    _sharpen(tv.fc)
    torch.save(tv.state_dict(), tmp_path / "tv.pth")
    tm = timm.create_model("test_resnet", pretrained=False, num_classes=3).eval()
    _sharpen(tm.get_classifier())
    assert tm.pretrained_cfg["mean"] == (0.5, 0.5, 0.5) != imagenet[0]     # its own normalisation, not ImageNet's
    torch.save({"state_dict": tm.state_dict()}, tmp_path / "timm.pth")
    ts = torch.jit.script(nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2), nn.ReLU(),
                                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)).eval())
    _sharpen(ts[-1])
    ts.save(str(tmp_path / "ts.pt"))

    bilinear = interpolate(images, size=(48, 40), mode="bilinear", align_corners=False, antialias=True)
    with torch.no_grad():
        cases = {
            "torchvision, resized to 48 x 40": (
                ImageClassifier.from_torchvision("resnet18", tmp_path / "tv.pth", names, input_size=(48, 40),
                                                 device="cpu", batch_size=2),
                tv(_normalised(bilinear, *imagenet)).softmax(-1),
                [tv(_normalised(images, *imagenet)).softmax(-1),                       # not resized
                 tv(bilinear).softmax(-1)]),                                          # not normalised
            "timm, multi-label": (
                ImageClassifier.from_timm("test_resnet", tmp_path / "timm.pth", names, multi_label=True,
                                          device="cpu", batch_size=2),
                tm(_normalised(images, (0.5,) * 3, (0.5,) * 3)).sigmoid(),
                [tm(_normalised(images, *imagenet)).sigmoid(),                        # ImageNet's mean / std
                 tm(_normalised(images, (0.5,) * 3, (0.5,) * 3)).softmax(-1)]),      # softmax
            "TorchScript, resized to 32 x 32": (
                ImageClassifier.from_torchscript(tmp_path / "ts.pt", names, input_size=32, device="cpu",
                                                 batch_size=2),
                ts(_normalised(avg_pool2d(images, 2), *imagenet)).softmax(-1),
                [ts(_normalised(interpolate(images, size=(32, 32), mode="nearest"), *imagenet)).softmax(-1),
                 ts(_normalised(images, *imagenet)).softmax(-1)]),
        }
    for name, (adapter, expected, wrong) in cases.items():
        got = adapter.classify(images)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
        for other in wrong:                       # the comparison can tell a wrong input pipeline apart
            assert (other - expected).abs().max() > 1e-3, name


def test_classifier_weight_errors(tmp_path):
    import torchvision

    names = ["person", "bicycle", "car"]
    torch.save(torchvision.models.resnet18(weights=None, num_classes=3).state_dict(), tmp_path / "tv.pth")
    with pytest.raises(WeightsError, match=r"tv\.pth: weights do not match"):
        ImageClassifier.from_torchvision("resnet18", tmp_path / "tv.pth", names + ["pole"])
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage")
    with pytest.raises(WeightsError, match=r"bad\.pt"):
        ImageClassifier.from_torchscript(tmp_path / "bad.pt", names)
    with pytest.raises(FileNotFoundError, match=r"absent\.pth"):
        ImageClassifier.from_timm("resnet10t", tmp_path / "absent.pth", names)


def test_callable_detector_numpy_black_box():
    seen = {}

    def opaque_detector(batch: np.ndarray):                 # e.g. an ONNX / OpenCV model
        seen["dtype"], seen["shape"] = batch.dtype, batch.shape
        return [{"boxes": [[1, 2, 11, 22]], "scores": [0.9], "labels": [1]} for _ in batch]

    det = CallableDetector(opaque_detector, ["bg", "person"], input_format="numpy")
    dets = det.detect(torch.rand(2, 3, 30, 40))
    assert seen == {"dtype": np.uint8, "shape": (2, 30, 40, 3)}
    assert torch.equal(dets[1].boxes, torch.tensor([[1.0, 2, 11, 22]]))
    assert torch.allclose(dets[0].class_probs, torch.tensor([[0.0, 0.9]]))
    cand = det.candidates(torch.rand(2, 3, 30, 40))
    assert cand.boxes.shape == (2, 1, 4) and cand.valid.all()
    bad = CallableDetector(lambda x: [], ["bg", "person"])
    with pytest.raises(ValueError, match="returned 0 results for 2 images"):
        bad.detect(torch.rand(2, 3, 8, 8))


def test_classifier_resize_exact_area_for_integer_factors():
    from detection.models.classifier import resize

    x = torch.rand(2, 3, 64, 96)
    assert torch.allclose(resize(x, (32, 48)), torch.nn.functional.avg_pool2d(x, 2))
    assert resize(x, (64, 96)) is x
    odd = resize(x, (40, 60), antialias=False)
    assert torch.allclose(odd, torch.nn.functional.interpolate(x, size=(40, 60), mode="bilinear",
                                                               align_corners=False))
