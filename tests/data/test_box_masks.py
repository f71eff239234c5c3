"""Box-frame masks (msvision.data.box_masks): coverage grids, collation, and EffSeg targets
computed from them equal the full-image targets when the grid resolves every pixel."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from msvision.data.batching import collate
from msvision.data.box_masks import box_frame_masks
from msvision.models.heads.roi_mask.targets import into_box_frames, mask_targets
from msvision.ops.roi_align import roi_mask_centre_values, roi_mask_targets


def test_coverage_is_the_area_fraction_of_each_cell():
    rng = np.random.default_rng(0)
    masks = np.zeros((3, 30, 40), bool)
    masks[0, 5:17, 8:32] = rng.random((12, 24)) > 0.4  # 12 x 24 px box (tight after the edges are set)
    masks[0, 5, 8] = masks[0, 16, 31] = True
    masks[1, 2:4, 3:5] = True  # 2 x 2 px: upsampled to the grid
    frames, coverage = box_frame_masks(masks, 6)
    np.testing.assert_array_equal(frames[0], [8, 5, 32, 17])
    np.testing.assert_array_equal(frames[2], [0, 0, 0, 0])
    assert not coverage[2].any()
    blocks = masks[0, 5:17, 8:32].reshape(6, 2, 6, 4).mean(axis=(1, 3))  # 2 x 4 px per cell
    np.testing.assert_array_equal(coverage[0], np.rint(blocks * 255).astype(np.uint8))
    np.testing.assert_array_equal(coverage[1], 255)


def test_collate_box_format():
    rng = np.random.default_rng(1)
    masks = rng.random((2, 20, 24)) > 0.7
    record = dict(image=np.zeros((20, 24, 3), np.uint8), orig_size=(20, 24), image_id=3,
                  boxes=np.array([[0, 0, 24, 20], [1, 1, 5, 5]], np.float32), labels=np.array([1, 2], np.int32),
                  is_crowd=np.zeros(2, bool), masks=masks)
    batch = collate([record], (32, 32), 4, with_masks=True, mask_format="box", box_mask_size=8)
    assert batch.masks.shape == (1, 4, 8, 8) and batch.masks.dtype == np.uint8
    frames, coverage = box_frame_masks(masks, 8)
    np.testing.assert_array_equal(batch.mask_boxes[0, :2], frames)
    np.testing.assert_array_equal(batch.masks[0, :2], coverage)
    assert not batch.masks[0, 2:].any()
    image = collate([record], (32, 32), 4, with_masks=True)
    assert image.masks.shape == (1, 4, 32, 32) and image.mask_boxes is None


def test_effseg_targets_from_box_frames_equal_full_image_targets_when_exact():
    """A 16 x 16 px object on a 16 x 16 grid is represented exactly (coverage 0 or 1): the
    per-cell averages v and the centre samples of RoIs around it (also reaching outside its
    box) equal those of the full-image mask, and so do the targets (up to ties at v = 0.5,
    where float32 rounding of the 0..255 scale may decide either way)."""
    rng = np.random.default_rng(2)
    masks = np.zeros((1, 2, 48, 48), bool)
    masks[0, 0, 10:26, 12:28] = rng.random((16, 16)) > 0.5
    masks[0, 0, 10, 12] = masks[0, 0, 25, 27] = True  # tight box (12, 10, 28, 26)
    masks[0, 1, 30:46, 2:18] = rng.random((16, 16)) > 0.3
    masks[0, 1, 30, 2] = masks[0, 1, 45, 17] = True
    frames, coverage = box_frame_masks(masks[0], 16)
    boxes = jnp.asarray([[[10, 8, 30, 27], [14, 12, 22, 20], [5, 4, 40, 35], [0, 28, 20, 47.5]]], jnp.float32)
    gt = jnp.asarray([[0, 0, 0, 1]], jnp.int32)
    grids, cell_boxes = into_box_frames(jnp.asarray(coverage[None]), jnp.asarray(frames[None]), boxes, gt)
    expected = roi_mask_targets(jnp.asarray(masks), boxes, gt, 1.0, 28, 3, image_sizes=jnp.asarray([[48, 48]]))
    actual = roi_mask_targets(grids, cell_boxes, gt, 1.0, 28, 3)
    for e, a in zip(expected, actual):
        np.testing.assert_allclose(np.asarray(a) / 255.0, e, atol=1e-5)
    for size in (7, 14, 28):
        np.testing.assert_array_equal(
            roi_mask_centre_values(grids, cell_boxes, gt, size) / 255.0,
            roi_mask_centre_values(jnp.asarray(masks), boxes, gt, size, image_sizes=jnp.asarray([[48, 48]])))
    for seg_target in ("centre", "average"):
        full = mask_targets(jnp.asarray(masks), boxes, gt, 2, 7, seg_target, image_sizes=jnp.asarray([[48, 48]]))
        box = mask_targets(jnp.asarray(coverage[None]), boxes, gt, 2, 7, seg_target,
                           mask_boxes=jnp.asarray(frames[None]))
        for (fs, fr), (bs, br) in zip(full, box):
            assert np.mean(np.asarray(fs) == np.asarray(bs)) > 0.99
            assert np.mean(np.asarray(fr) == np.asarray(br)) > 0.99
        assert np.asarray(full[-1][0]).any() and np.asarray(full[-1][1]).any()
