"""``kind: onnx`` models through ONNX Runtime, against the PyTorch adapters of the same networks: a YOLO detector and
pose model exported by ultralytics (dynamic and fixed batch-1 graphs), a graph with final boxes, the scene
classifier exported with torch.onnx, and the errors that name the file."""
import os

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

from detection.datasets.synthetic import SyntheticConfig, render_scene  # noqa: E402
from detection.models.base import WeightsError  # noqa: E402
from detection.models.classifier import ImageClassifier  # noqa: E402
from detection.models.scene_classifier import SCENE_MEAN, SCENE_STD, SceneNet, load_classifier, save_classifier  # noqa: E402
from detection.models.specs import ClassifierSpec, DetectorSpec, build_classifier, build_detector  # noqa: E402
from detection.models.yolo import YoloDetector  # noqa: E402
from detection.scorers import ClassifierScorer, DRiseScorer  # noqa: E402
from tasks.params import ParamsError, parse_params  # noqa: E402
from tests.conftest import REPO  # noqa: E402

CONFIGS = {"detect": REPO / "detection/configs/yolo-person-tiny.yaml",
           "pose": REPO / "detection/configs/yolo-pose-tiny.yaml"}
TOL = 1e-3      # ONNX Runtime vs PyTorch (ultralytics fuses conv + batch norm in the export): float32 rounding


def _scenes(n: int = 3, height: int = 240, width: int = 320, seed: int = 0) -> torch.Tensor:
    cfg = SyntheticConfig(width=width, height=height)
    images = np.stack([render_scene(cfg, seed, i).image for i in range(n)])
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _export_yolo(kind: str, folder, **export) -> tuple:
    """A random YOLO from the project's config, saved as .pt and exported by ultralytics to ONNX offline; returns
    (pt path, onnx path). Its batch-norm statistics are those of a few scenes and its class biases raised, so that
    its detections depend on the image (a plain random YOLO's hardly do)."""
    from ultralytics import YOLO

    from detection.models.letterbox import letterbox

    torch.manual_seed(0)
    folder.mkdir(exist_ok=True)
    yolo = YOLO(str(CONFIGS[kind]))
    for module in yolo.model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None                       # a plain average over the calibration batch
    yolo.model.train()
    with torch.no_grad():
        yolo.model(letterbox(_scenes(8, seed=1), 320)[0])
        for branch in yolo.model.model[-1].cv3:
            branch[-1].bias.add_(4.0)
    yolo.model.eval()
    pt = folder / f"{kind}.pt"
    yolo.save(str(pt))
    onnx = YOLO(str(pt)).export(format="onnx", imgsz=320, simplify=False, **export)
    return pt, onnx


@pytest.fixture(scope="module")
def yolo_files(tmp_path_factory):
    os.environ.setdefault("YOLO_OFFLINE", "1")
    root = tmp_path_factory.mktemp("onnx")
    pt, dynamic = _export_yolo("detect", root / "dynamic", dynamic=True)
    fixed_pt, fixed = _export_yolo("detect", root / "fixed", dynamic=False)    # [1, 3, 320, 320]
    pose_pt, pose = _export_yolo("pose", root / "pose", dynamic=True)
    return {"pt": pt, "dynamic": dynamic, "fixed_pt": fixed_pt, "fixed": fixed, "pose_pt": pose_pt, "pose": pose}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max()) if a.numel() else 0.0


def _unmatched(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest distance from a row of ``a`` to its nearest row of ``b`` (NMS may order near-equal scores
    differently)."""
    return float(torch.cdist(a, b, p=float("inf")).amin(1).max()) if len(a) else 0.0


@pytest.mark.parametrize("which", ["dynamic", "pose"])
def test_yolo_onnx_matches_the_pytorch_adapter(yolo_files, which):
    """Same letterbox, candidates, NMS and D-RISE scores as YoloDetector on the .pt it was exported from."""
    pt = yolo_files["pose_pt" if which == "pose" else "pt"]
    ref = YoloDetector(pt, imgsz=320, device="cpu", conf=0.25)
    spec = DetectorSpec(id="onnx", kind="onnx", weights=str(yolo_files[which]), imgsz=320, conf=0.25)
    det = build_detector(spec, device="cpu", batch_size=2)
    assert det.class_names == ref.class_names and tuple(det.kpt_shape or ()) == tuple(ref.kpt_shape or ())
    images = _scenes()
    cand, cand_ref = det.candidates(images), ref.candidates(images)
    assert cand.boxes.shape == cand_ref.boxes.shape
    diffs = {"boxes": _max_diff(cand.boxes, cand_ref.boxes), "scores": _max_diff(cand.class_probs,
                                                                                 cand_ref.class_probs)}
    dets, dets_ref = det.detect(images), ref.detect(images)
    assert [len(d.scores) for d in dets] == [len(d.scores) for d in dets_ref]
    assert sum(len(d.scores) for d in dets) > 0
    for d, r in zip(dets, dets_ref):
        found, ref_rows = [torch.cat([x.boxes, x.scores[:, None], x.labels[:, None].float()], 1) for x in (d, r)]
        if which == "pose":
            found, ref_rows = torch.cat([found, d.keypoints.flatten(1)], 1), torch.cat([ref_rows,
                                                                                       r.keypoints.flatten(1)], 1)
        diffs["detections"] = max(diffs.get("detections", 0.0), _unmatched(found, ref_rows))
    target = dets_ref[0]
    masks = (torch.rand(8, 1, 240 // 16, 320 // 16, generator=torch.Generator().manual_seed(0)) < 0.5).float()
    masked = images[:1] * torch.nn.functional.interpolate(masks, size=(240, 320), mode="nearest")
    s_onnx = DRiseScorer.for_detections(det, target)(masked)
    s_ref = DRiseScorer.for_detections(ref, target)(masked)
    diffs["drise"] = _max_diff(s_onnx, s_ref)
    print(f"\nONNX vs PyTorch ({which}) max abs difference: {diffs}; {[len(d.scores) for d in dets]} detections, "
          f"D-RISE scores in [{float(s_ref.min()):.3f}, {float(s_ref.max()):.3f}]")
    assert float(s_ref.max()) > 0.1
    assert diffs["scores"] < TOL and diffs["drise"] < TOL
    assert diffs["boxes"] < 0.05 and diffs["detections"] < 0.05       # pixels (boxes, keypoints), scores


def test_fixed_batch_one_graph(yolo_files):
    """A [1, 3, 320, 320] graph runs a batch of 3 one image at a time; square images letterbox as in PyTorch."""
    det = build_detector(DetectorSpec(id="fixed", kind="onnx", weights=str(yolo_files["fixed"])), device="cpu")
    assert det.graph.batch == 1 and det.graph.size == (320, 320)
    ref = YoloDetector(yolo_files["fixed_pt"], imgsz=320, device="cpu")
    square = _scenes(3, 320, 320)
    assert _max_diff(det.candidates(square).class_probs, ref.candidates(square).class_probs) < TOL
    wide = _scenes(3)                       # 240 x 320: letterboxed into 320 x 320 (the PyTorch adapter: 256 x 320)
    padded = torch.nn.functional.pad(wide, (0, 0, 40, 40), value=114 / 255)
    cand, cand_ref = det.candidates(wide), ref.candidates(padded)
    assert _max_diff(cand.class_probs, cand_ref.class_probs) < TOL
    assert _max_diff(cand.boxes, cand_ref.boxes - torch.tensor([0.0, 40, 0, 40])) < 0.05   # mapped back
    assert len(det.detect(wide)) == 3


class _SceneNHWC(nn.Module):
    """The scene network on NHWC pixels in 0..255 (what many non-PyTorch exports take), float or uint8."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        x = x.permute(0, 3, 1, 2).float()
        mean = torch.tensor(SCENE_MEAN).view(1, 3, 1, 1) * 255
        return torch.sigmoid(self.net((x - mean) / (torch.tensor(SCENE_STD).view(1, 3, 1, 1) * 255)))


def _export(module: nn.Module, example: torch.Tensor, path, dynamic_batch: bool = True, **kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (example,), str(path), dynamo=False, input_names=["images"],
                          output_names=kw.pop("output_names", ["scores"]),
                          dynamic_axes=kw.pop("dynamic_axes", {"images": {0: "batch"}} if dynamic_batch else None),
                          **kw)
    return path


@pytest.fixture(scope="module")
def scene_classifier(tmp_path_factory):
    root = tmp_path_factory.mktemp("scene")
    torch.manual_seed(0)
    net = SceneNet(4, width=4).eval()
    clf = ImageClassifier(net, ["person", "bicycle", "car", "pole"], multi_label=True, mean=SCENE_MEAN,
                          std=SCENE_STD, input_size=(240, 320), device="cpu")
    saved = save_classifier(clf, root / "classifier.pt")
    example = torch.rand(1, 3, 240, 320)
    _export(net, example, root / "logits.onnx")
    _export(net, example, root / "batch1.onnx", dynamic_batch=False)
    _export(_SceneNHWC(net), (example * 255).permute(0, 2, 3, 1), root / "nhwc_probs.onnx")
    _export(_SceneNHWC(net), (example * 255).round().to(torch.uint8).permute(0, 2, 3, 1), root / "uint8.onnx")
    return root, saved


@pytest.mark.parametrize("graph, onnx", [
    ("logits.onnx", {"mean": SCENE_MEAN, "std": SCENE_STD}),
    ("batch1.onnx", {"scale": 255, "mean": [v * 255 for v in SCENE_MEAN], "std": [v * 255 for v in SCENE_STD]}),
    ("nhwc_probs.onnx", {"layout": "NHWC", "scale": 255, "returns": "probabilities"}),
    ("uint8.onnx", {"layout": "NHWC", "scale": 255, "returns": "probabilities"}),
])
def test_scene_classifier_onnx_matches_torchscript(scene_classifier, graph, onnx):
    """The saved (TorchScript) scene classifier and its ONNX exports give the same probabilities and scores:
    normalisation in params or inside the graph, logits or probabilities out, NCHW or NHWC, dynamic or batch 1."""
    root, saved = scene_classifier
    ref = load_classifier(saved, device="cpu")
    spec = ClassifierSpec(id="scene-onnx", kind="onnx", weights=str(root / graph), classes=ref.class_names,
                          multi_label=True, onnx=onnx)
    clf = build_classifier(spec, device="cpu", batch_size=2)
    images = _scenes(5)                     # uint8 scenes / 255: a uint8 graph sees the same pixels
    diff = _max_diff(clf.classify(images), ref.classify(images))
    scored = _max_diff(ClassifierScorer(clf, [0, 2])(images), ClassifierScorer(ref, [0, 2])(images))
    print(f"\nscene classifier {graph}: max abs difference of probabilities {diff:.2e}, scorer {scored:.2e}")
    assert diff < 1e-4 and scored < 1e-4
    assert clf.input_size == (240, 320)


class _BoxesModel(nn.Module):
    """Final detections: two fixed boxes (cxcywh, input pixels) scored by the brightness inside them."""

    def forward(self, x):
        left, right = x[:, :, 64:192, 32:96].mean((1, 2, 3)), x[:, :, 64:192, 160:288].mean((1, 2, 3))
        boxes = torch.tensor([[64.0, 128, 64, 128], [224, 128, 128, 128]]).expand(x.shape[0], 2, 4)
        labels = torch.tensor([0, 1]).expand(x.shape[0], 2)
        return boxes, torch.stack([left, right], 1), labels


def test_boxes_decode_maps_back_through_the_letterbox(tmp_path):
    path = _export(_BoxesModel(), torch.rand(1, 3, 256, 320), tmp_path / "boxes.onnx",
                   output_names=["det_boxes", "det_scores", "det_labels"],
                   dynamic_axes={"images": {0: "batch", 2: "h", 3: "w"}})
    spec = DetectorSpec(id="boxes", kind="onnx", weights=str(path), classes=["person", "car"], imgsz=320, conf=0.1,
                        onnx={"decode": "boxes", "box_format": "cxcywh", "boxes_output": "det_boxes",
                              "scores_output": "det_scores", "labels_output": "det_labels"})
    det = build_detector(spec, device="cpu")
    images = torch.zeros(2, 3, 480, 640)                  # letterboxed to 240 x 320 + 8 px padding top / bottom
    images[0, :, 100:300, 100:160] = 1.0                  # image 0: the left box bright
    dets = det.detect(images)
    assert len(dets[0].scores) == 1 and dets[0].labels.tolist() == [0]
    assert dets[0].boxes.tolist() == [[64.0, 112.0, 192.0, 368.0]]       # (32, 64, 96, 192) - pad 8, x 2
    assert len(dets[1].scores) == 0
    cand = det.candidates(images)
    assert cand.boxes.shape == (2, 2, 4) and cand.class_probs.shape == (2, 2, 2)
    scorer = DRiseScorer.for_detections(det, dets[0])
    assert scorer(images)[:, 0].tolist() == pytest.approx([float(dets[0].scores[0]), 0.0])


def test_errors_name_the_file(tmp_path, yolo_files, scene_classifier):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(FileNotFoundError, match="missing.onnx"):
        build_detector(DetectorSpec(id="m", kind="onnx", weights=str(missing)), device="cpu")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"this is not a protobuf graph")
    with pytest.raises(WeightsError, match=r"corrupt.onnx: not a loadable ONNX graph"):
        build_detector(DetectorSpec(id="c", kind="onnx", weights=str(corrupt)), device="cpu")
    fixed = str(yolo_files["fixed"])
    with pytest.raises(WeightsError, match=r"declare input_size \[256, 320\] but the graph's input 'images' is "
                                           r"fixed at \[320, 320\]"):
        build_detector(DetectorSpec(id="f", kind="onnx", weights=fixed, onnx={"input_size": [256, 320]}),
                       device="cpu")
    with pytest.raises(WeightsError, match=r"has shape \[1, 3, 320, 320\], not a 3-channel image batch in the "
                                           r"declared layout NHWC"):
        build_detector(DetectorSpec(id="f", kind="onnx", weights=fixed, onnx={"layout": "NHWC"}), device="cpu")
    three = build_detector(DetectorSpec(id="f", kind="onnx", weights=fixed, classes=["a", "b", "c"]), device="cpu")
    with pytest.raises(WeightsError, match=r"fixed/detect.onnx: output 'output0' has shape \[1, 5, 2100\]; "
                                           r"decode 'yolo' with 3 classes expects \[B, 7, N\]"):
        three.candidates(_scenes(1))
    root, saved = scene_classifier
    clf = build_classifier(ClassifierSpec(id="s", kind="onnx", weights=str(root / "logits.onnx"),
                                          classes=["person", "car"]), device="cpu")
    with pytest.raises(WeightsError, match=r"logits.onnx: output 'scores' has shape \[1, 4\], expected \[B, 2\]"):
        clf.classify(_scenes(1))
    with pytest.raises(WeightsError, match=r"uint8.onnx: input 'images' is uint8 \(0..255 pixels\): params "
                                           r"onnx.scale must be 255"):
        build_classifier(ClassifierSpec(id="s", kind="onnx", weights=str(root / "uint8.onnx"), classes=list("abcd"),
                                        onnx={"layout": "NHWC"}), device="cpu")
    with pytest.raises(WeightsError, match=r"logits.onnx: no class names"):
        build_classifier(ClassifierSpec(id="s", kind="onnx", weights=str(root / "logits.onnx")), device="cpu")


def test_params_for_onnx_models():
    params = parse_params({"infer": {
        "detectors": [{"id": "y", "kind": "onnx", "weights": "m.onnx", "onnx": {"decode": "boxes"}}],
        "classifier": {"id": "c", "kind": "onnx", "weights": "c.onnx", "classes": ["a"],
                       "onnx": {"returns": "probabilities", "layout": "NHWC"}}}}, check_files=False)
    assert params.infer.detectors[0].onnx.decode == "boxes" and params.infer.classifier.onnx.layout == "NHWC"
    with pytest.raises(ParamsError, match=r"infer\.detectors\[0\]: .*'onnx' options are for kind 'onnx'"):
        parse_params({"infer": {"detectors": [{"id": "y", "weights": "m.pt", "onnx": {}}]}}, check_files=False)
    with pytest.raises(ParamsError, match=r"infer\.detectors\[0\]\.onnx\.layout"):
        parse_params({"infer": {"detectors": [{"id": "y", "kind": "onnx", "weights": "m.onnx",
                                               "onnx": {"layout": "CHW"}}]}}, check_files=False)
    with pytest.raises(ParamsError, match=r"infer\.detectors\[0\]: .*kind 'onnx' needs 'weights'"):
        parse_params({"infer": {"detectors": [{"id": "y", "kind": "onnx"}]}}, check_files=False)
