"""The per-target mask helpers of explainers.base: ``has_pixel`` (bool masks read as bytes), ``mask_boxes`` (each
stack's union bounding box) and the box-restricted ``paint`` / ``region_means`` of per-target regions, against the
plain full-image formulas they replace."""
import pytest
import torch

from explainers.base import has_pixel, mask_boxes, paint, region_means


def random_targets(T=4, R=5, H=23, W=31, seed=0, dtype=torch.bool):
    """T targets' R masks: blobs at random places (one at the image's corner), one mask and one whole target
    empty."""
    g = torch.Generator().manual_seed(seed)
    masks = torch.zeros(T, R, H, W)
    for t in range(T - 1):
        for r in range(R - 1):
            y, x = torch.randint(0, H - 3, (1,), generator=g), torch.randint(0, W - 3, (1,), generator=g)
            masks[t, r, y:y + 4, x:x + 5] = torch.rand(1, generator=g) + 0.1
    masks[0, 0, 0, 0] = 1.0                                               # the image's corner pixel
    masks[1, 1, H - 1, W - 1] = 0.5                                       # the opposite corner
    return masks.bool() if dtype == torch.bool else masks


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_has_pixel_and_boxes_match_the_plain_formulas(dtype):
    masks = random_targets(dtype=dtype)
    for dim in (1, (2, 3), -3):
        assert torch.equal(has_pixel(masks, dim), (masks > 0).any(dim))
    assert has_pixel(masks[:0], (1, 2, 3)).shape == (0,)
    assert not has_pixel(masks[:, :, :0], (2, 3)).any()                   # no row: no pixel
    boxes = mask_boxes(masks)
    assert boxes.shape == (4, 4) and boxes.dtype == torch.long
    for t in range(masks.shape[0]):
        ys, xs = (masks[t] > 0).any(0).nonzero(as_tuple=True)
        expected = [0, 0, 0, 0] if ys.numel() == 0 else [ys.min(), ys.max() + 1, xs.min(), xs.max() + 1]
        assert boxes[t].tolist() == [int(v) for v in expected]
    assert boxes[0, 0] == 0 and boxes[0, 2] == 0 and boxes[1, 1] == 23 and boxes[1, 3] == 31
    assert boxes[3].tolist() == [0, 0, 0, 0]                              # the empty target
    assert mask_boxes(masks[0]).tolist() == boxes[0].tolist()            # one stack [R, H, W]


@pytest.mark.parametrize("dtype", [torch.bool, torch.float32])
def test_per_target_paint_and_means_match_the_full_image(dtype):
    masks = random_targets(dtype=dtype)
    T, R, H, W = masks.shape
    relevance = torch.randn(T, R)
    full = torch.stack([(relevance[t] @ masks[t].reshape(R, -1).float()).reshape(H, W) for t in range(T)])
    torch.testing.assert_close(paint(relevance, masks), full, atol=1e-6, rtol=0)
    torch.testing.assert_close(paint(relevance, masks, mask_boxes(masks)), full, atol=1e-6, rtol=0)
    assert paint(relevance[:0], masks[:0]).shape == (0, H, W)
    saliency = torch.randn(T, H, W)
    flat = masks.reshape(T, R, -1).float()
    means = torch.einsum("trp,tp->tr", flat, saliency.reshape(T, -1)) / flat.sum(2).clamp_min(1)
    torch.testing.assert_close(region_means(saliency, masks), means, atol=1e-5, rtol=0)


def test_edge_cases_of_the_helpers():
    """No region, no row, a NaN weight (no pixel, as ``(m > 0).any`` says), integer masks."""
    nan = torch.zeros(1, 2, 3, 4)
    nan[0, 0, 1, 1], nan[0, 1, 1, 1] = float("nan"), 1.0
    assert has_pixel(nan, (1, 2, 3)).tolist() == [True] and has_pixel(nan[:, :1], (1, 2, 3)).tolist() == [False]
    assert mask_boxes(nan).tolist() == [[1, 2, 1, 2]]
    assert has_pixel(torch.tensor([[0, 3], [0, 0]]), 1).tolist() == [True, False]
    assert mask_boxes(torch.zeros(2, 3, 0, 5, dtype=torch.bool)).tolist() == [[0, 0, 0, 0]] * 2
    no_region = torch.zeros(2, 0, 4, 5, dtype=torch.bool)
    assert paint(torch.zeros(2, 0), no_region).shape == (2, 4, 5)
    assert region_means(torch.zeros(2, 4, 5), no_region).shape == (2, 0)
    assert paint(torch.ones(1, 1, dtype=torch.float64), torch.ones(1, 1, 2, 2)).dtype == torch.float32
