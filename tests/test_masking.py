import numpy as np
import pytest
import tensorflow as tf

from maskvit import masking
from maskvit.errors import MaskvitError


def test_patchify_matches_extract_patches_and_inverts():
    images = tf.random.uniform([3, 32, 32, 3], seed=1)
    patches = masking.patchify(images)
    reference = tf.reshape(tf.image.extract_patches(images, [1, 4, 4, 1], [1, 4, 4, 1], [1, 1, 1, 1], "VALID"), [3, 64, 48])
    np.testing.assert_array_equal(patches.numpy(), reference.numpy())
    np.testing.assert_array_equal(masking.unpatchify(patches).numpy(), images.numpy())


@pytest.mark.parametrize("ratio, hidden", [(0.5, 32), (0.3, 19), (0.7, 45), (0.001, 1), (0.999, 63)])
def test_random_hides_exact_count(ratio, hidden):
    masks = masking.make_masks("random", ratio, 200, [0, 1]).numpy()
    assert (masks.sum(axis=1) == hidden).all()
    assert masking.effective_ratio("random", ratio) == hidden / 64
    assert masks.mean(axis=0).min() > 0.1 or hidden < 10  # every position gets hidden sometimes


@pytest.mark.parametrize("strategy", ["row", "column"])
@pytest.mark.parametrize("ratio, lines", [(0.5, 4), (0.3, 2), (0.7, 6), (0.01, 1), (0.99, 7)])
def test_row_and_column_hide_whole_lines(strategy, ratio, lines):
    masks = masking.make_masks(strategy, ratio, 100, [5, 6]).numpy().reshape(100, 8, 8)
    line_axis = 2 if strategy == "row" else 1  # a hidden row is hidden across all its columns
    full = masks.all(axis=line_axis)
    assert (full.sum(axis=1) == lines).all()
    assert (masks.any(axis=line_axis) == full).all()
    assert masking.effective_ratio(strategy, ratio) == lines / 8


def test_masks_are_seeded():
    a = masking.make_masks("random", 0.5, 10, [1, 2]).numpy()
    np.testing.assert_array_equal(a, masking.make_masks("random", 0.5, 10, [1, 2]).numpy())
    assert not np.array_equal(a, masking.make_masks("random", 0.5, 10, [1, 3]).numpy())


@pytest.mark.parametrize("strategy, ratio, message", [
    ("diagonal", 0.5, "unknown mask strategy 'diagonal'"),
    ("random", 1.5, "strictly between 0 and 1"),
    ("random", 0.0, "strictly between 0 and 1"),
    ("random", 1.0, "strictly between 0 and 1"),
    ("row", -0.2, "strictly between 0 and 1"),
    ("row", float("nan"), "strictly between 0 and 1"),
])
def test_bad_strategy_or_ratio(strategy, ratio, message):
    with pytest.raises(MaskvitError, match=message):
        masking.make_masks(strategy, ratio, 2, [0, 0])


def test_composite_keeps_visible_pixels():
    images, predicted = tf.zeros([2, 32, 32, 3]), tf.ones([2, 32, 32, 3])
    mask = masking.make_masks("random", 0.25, 2, [0, 0])
    out = masking.patchify(masking.composite(images, predicted, mask)).numpy()
    np.testing.assert_array_equal(out.max(axis=2) == 1, mask.numpy())
    assert (out.min(axis=2) == out.max(axis=2)).all()  # each patch wholly original or predicted


def test_mixed_masks_vary_per_call_but_hide_one_count_per_batch():
    kinds, counts = set(), set()
    for step in range(40):
        m = masking.make_masks("mixed", 0.5, 16, [3, step]).numpy()
        assert len(set(m.sum(axis=1))) == 1  # one count per batch: MAE needs a dense visible set
        grid = m.reshape(16, 8, 8)
        kinds.add("row" if (grid.any(2) == grid.all(2)).all() and not grid.all(1).any() else
                  "column" if (grid.any(1) == grid.all(1)).all() and not grid.all(2).any() else "random")
        counts.add(int(m.sum(axis=1)[0]))
    assert kinds == {"random", "row", "column"}
    assert min(counts) >= 16 and max(counts) <= 48 and len(counts) > 3  # ratios within 0.5 +- 0.25
    with pytest.raises(MaskvitError, match="score a model with random, row or column"):
        masking.hidden_count("mixed", 0.5)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_block_hides_exact_count_in_contiguous_blocks(ratio):
    masks = masking.make_masks("block", ratio, 300, [1, 1]).numpy()
    assert (masks.sum(axis=1) == round(ratio * 64)).all()

    def neighbour_rate(m):  # how often a hidden patch has a hidden right or lower neighbour
        g = m.reshape(-1, 8, 8)
        pairs = (g[:, :, :-1] & g[:, :, 1:]).sum() + (g[:, :-1, :] & g[:, 1:, :]).sum()
        return pairs / g.sum()

    assert neighbour_rate(masks) > neighbour_rate(masking.make_masks("random", ratio, 300, [1, 1]).numpy()) + 0.15
