import numpy as np
import pytest

from detection.masks import rle_area, rle_decode, rle_encode


def test_coco_convention_column_major_starting_with_zeros():
    mask = np.array([[0, 1], [1, 1]], dtype=bool)     # column-major flat: 0, 1, 1, 1
    assert rle_encode(mask).tolist() == [1, 3]
    assert rle_encode(np.ones((2, 3), bool)).tolist() == [0, 6]
    assert rle_encode(np.zeros((2, 3), bool)).tolist() == [6]


@pytest.mark.parametrize("shape", [(1, 1), (7, 5), (64, 48)])
def test_round_trip_and_area(shape):
    rng = np.random.default_rng(0)
    for density in (0.0, 0.1, 0.5, 1.0):
        mask = rng.random(shape) < density
        counts = rle_encode(mask)
        assert counts.dtype == np.int32
        assert np.array_equal(rle_decode(counts, *shape), mask)
        assert rle_area(counts) == mask.sum()


def test_decode_rejects_wrong_size():
    with pytest.raises(ValueError, match="covers 4 pixels"):
        rle_decode(np.array([1, 3]), 3, 3)
