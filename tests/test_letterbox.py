"""Letterbox coordinate maps: exact round trips for any image size (issue 16, item 6)."""
import pytest
import torch

from detection.models.letterbox import letterbox


def _image_extent(height: int, width: int, imgsz: int, stride: int = 32):
    """Letterbox an all-ones image (padding 0) and return the ones' extent in the input and the Letterbox."""
    x, box = letterbox(torch.ones(1, 1, height, width), imgsz, stride, fill=0.0)
    rows = torch.nonzero(x[0, 0].amax(1) > 0.5)[:, 0]
    cols = torch.nonzero(x[0, 0].amax(0) > 0.5)[:, 0]
    found = torch.tensor([[cols.min(), rows.min(), cols.max() + 1, rows.max() + 1]], dtype=torch.float64)
    return found, box


@pytest.mark.parametrize("width, height, imgsz", [(3775, 1571, 1280), (640, 427, 320), (1000, 20, 320),
                                                  (20, 1000, 320), (333, 999, 640), (7, 5, 320)])
def test_whole_image_box_comes_back_exactly(width, height, imgsz):
    """The resized image's extent in the input maps back to [0, 0, W, H]: 640x427 at 320 gave y2 428.0,
    3775x1571 at 1280 gave 1571.93, 1000x20 at 320 gave 18.75 (scaled by imgsz / max side, not the rounded size)."""
    found, box = _image_extent(height, width, imgsz)
    back = box.boxes_to_original(found)
    assert back.tolist()[0] == pytest.approx([0, 0, width, height], abs=0.01)
    corners = box.points_to_original(found.view(2, 2))
    assert corners.flatten().tolist() == pytest.approx([0, 0, width, height], abs=0.01)


def test_band_centre_comes_back():
    """A horizontal band centred at y = 17.0 in a 1000x20 image (old maps: 16.02). The band's intensity centroid in
    the input is itself moved ~0.03 input px by the antialiasing filter, which is cut by the image's bottom edge
    (17.09 back here), so the bound is 0.15 px, not the maps' 0.01."""
    img = torch.zeros(1, 1, 20, 1000)
    img[..., 16:18, :] = 1.0                                # rows 16, 17: pixel edges 16..18, centre 17.0
    x, box = letterbox(img, 320, 32, fill=0.0)
    profile = x[0, 0].sum(1)
    centre = (profile * (torch.arange(len(profile)) + 0.5)).sum() / profile.sum()   # pixel-edge units
    back = box.points_to_original(torch.tensor([[500.0, float(centre)]]))
    assert back[0, 1].item() == pytest.approx(17.0, abs=0.15)


def test_round_trip_property_over_random_sizes():
    """Boxes and keypoints, original -> input -> original and input -> original -> input, < 0.01 px, for 2000
    random image sizes, model sizes and strides; the whole image lands exactly on the resized region."""
    from detection.models.letterbox import letterbox_geometry

    gen = torch.Generator().manual_seed(16)
    for _ in range(2000):
        H, W = (int(v) for v in torch.randint(1, 5000, (2,), generator=gen))
        imgsz = int(torch.randint(16, 2048, (1,), generator=gen))
        stride = [1, 8, 32, 64][int(torch.randint(0, 4, (1,), generator=gen))]
        box = letterbox_geometry(H, W, imgsz, stride)
        new_h, new_w = box.resized
        assert max(new_h, new_w) == imgsz and min(new_h, new_w) >= 1
        whole = torch.tensor([[0.0, 0.0, W, H]], dtype=torch.float64)
        target = torch.tensor([[box.pad_x, box.pad_y, box.pad_x + new_w, box.pad_y + new_h]], dtype=torch.float64)
        assert torch.allclose(box.boxes_to_input(whole), target, atol=1e-6)
        assert torch.allclose(box.boxes_to_original(target), whole, atol=1e-6)
        size = torch.tensor([W, H, W, H], dtype=torch.float64)
        boxes = torch.rand(8, 4, generator=gen, dtype=torch.float64) * 1.2 * size - 0.1 * size
        assert (box.boxes_to_original(box.boxes_to_input(boxes)) - boxes).abs().max() < 0.01
        in_size = torch.tensor([box.size[1], box.size[0]] * 2, dtype=torch.float64)
        inp = torch.rand(8, 4, generator=gen, dtype=torch.float64) * in_size
        assert (box.boxes_to_input(box.boxes_to_original(inp)) - inp).abs().max() < 0.01
        pts = torch.rand(5, 17, 2, generator=gen, dtype=torch.float64) * size[:2]
        assert (box.points_to_original(box.points_to_input(pts)) - pts).abs().max() < 0.01
        ipts = torch.rand(5, 17, 2, generator=gen, dtype=torch.float64) * in_size[:2]
        assert (box.points_to_input(box.points_to_original(ipts)) - ipts).abs().max() < 0.01
        # float32 (what the detector returns) keeps the round trip within 0.01 px too
        b32 = boxes.float()
        assert (box.boxes_to_original(box.boxes_to_input(b32)) - b32).abs().max() < 0.01


def test_geometry_matches_the_resized_pixels():
    """letterbox_geometry describes what letterbox does to the pixels (sizes from 1 px up, odd strides)."""
    from detection.models.letterbox import letterbox_geometry

    for H, W, imgsz, stride in [(427, 640, 320, 32), (20, 1000, 320, 32), (1, 9, 64, 8), (97, 13, 50, 7),
                                (300, 300, 320, 32), (240, 320, 320, 32)]:
        found, box = _image_extent(H, W, imgsz, stride)
        assert box == letterbox_geometry(H, W, imgsz, stride)
        x, _ = letterbox(torch.ones(1, 1, H, W), imgsz, stride, fill=0.0)
        assert tuple(x.shape[-2:]) == box.size and box.size[0] % stride == 0 and box.size[1] % stride == 0
        assert found.tolist()[0] == [box.pad_x, box.pad_y, box.pad_x + box.resized[1], box.pad_y + box.resized[0]]


@pytest.mark.parametrize("kpt_dim", [3, 2])
def test_yolo_adapter_maps_boxes_and_keypoints_per_axis(kpt_dim):
    """The YOLO adapter's raw head output (input pixels) comes back in original pixels with the per-axis maps;
    a [17, 2] pose model's keypoints get confidence 1 (the tables hold 17 x (x, y, confidence))."""
    from detection.models.letterbox import letterbox_geometry
    from detection.models.yolo import YoloDetector

    det = YoloDetector.__new__(YoloDetector)              # the mapping only: no network needed
    det.class_names, det.kpt_shape = ["person"], [17, kpt_dim]
    box = letterbox_geometry(427, 640, 320)               # input 320x224: image 320x214 at pad_y 5
    out = torch.zeros(1, 1, 4 + 1 + 17 * kpt_dim)
    out[0, 0, :4] = torch.tensor([160.0, 112.0, 320.0, 214.0])   # cx cy w h: the whole resized image
    kp = out[0, 0, 5:].view(17, kpt_dim)
    kp[:, 0], kp[:, 1] = 320.0, 5.0 + 214.0             # every keypoint at the image's bottom-right corner
    if kpt_dim == 3:
        kp[:, 2] = 0.25
    boxes, scores, kpts = det._split(out, box)
    assert boxes[0, 0].tolist() == pytest.approx([0, 0, 640, 427], abs=0.01)
    assert kpts.shape == (1, 1, 17, 3)
    assert kpts[0, 0, :, :2].flatten().tolist() == pytest.approx([640, 427] * 17, abs=0.01)
    assert kpts[0, 0, :, 2].tolist() == [0.25 if kpt_dim == 3 else 1.0] * 17
