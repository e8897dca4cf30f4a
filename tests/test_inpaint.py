"""The in-graph smooth fill and the model that refines it."""

import numpy as np
import pytest
import tensorflow as tf
from skimage.restoration import inpaint_biharmonic

from conftest import TINY
from maskvit import baselines, inpaint, masking, models, train
from maskvit.errors import MaskvitError


def interior_mask(n, seed):
    """Random hidden patches, none on the image border: [n,64] bool."""
    rng = np.random.default_rng(seed)
    grid = np.zeros((n, 8, 8), bool)
    grid[:, 1:7, 1:7] = rng.random((n, 6, 6)) < 0.5
    return grid.reshape(n, 64)


@pytest.mark.parametrize("shape", [(9, 7), (inpaint.MATRIX_SIDE + 6, 5)])  # by matrix products; by differences
def test_laplacian_is_the_mirrored_five_point_stencil_and_its_own_adjoint(shape):
    rng = np.random.default_rng(0)
    x, y = (rng.random((2, 3, *shape)) for _ in range(2))  # [B,C,H,W]
    p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="symmetric")
    stencil = p[:, :, :-2, 1:-1] + p[:, :, 2:, 1:-1] + p[:, :, 1:-1, :-2] + p[:, :, 1:-1, 2:] - 4 * p[:, :, 1:-1, 1:-1]
    np.testing.assert_allclose(inpaint.laplacian(tf.constant(x)).numpy(), stencil, atol=1e-12)
    # Self-adjoint, so the solver's normal operator L'L is L applied twice.
    lhs = tf.reduce_sum(inpaint.laplacian(tf.constant(x)) * y).numpy()
    rhs = tf.reduce_sum(x * inpaint.laplacian(tf.constant(y))).numpy()
    assert abs(lhs - rhs) < 1e-12 * abs(lhs)


def test_first_guess_blurs_as_a_zero_padded_convolution():
    rng = np.random.default_rng(1)
    images = rng.random((2, 3, 20, 13))
    hidden = (rng.random((2, 1, 20, 13)) < 0.7).astype(np.float64)
    blurred = [inpaint._blur_matrix(n, 2.0).numpy() for n in (20, 13)]
    # The same blur, done the long way: pad with zeros, correlate with the kernel along each axis.
    g = inpaint._gaussian(2.0)
    r = len(g) // 2
    padded = np.pad(images, ((0, 0), (0, 0), (r, r), (r, r)))
    rows = sum(g[k] * padded[:, :, k : k + 20] for k in range(len(g)))
    expected = sum(g[k] * rows[..., k : k + 13] for k in range(len(g)))
    np.testing.assert_allclose(blurred[0] @ images @ blurred[1], expected, atol=1e-6)
    guess = inpaint.first_guess(tf.constant(images, tf.float32), tf.constant(hidden, tf.float32)).numpy()
    np.testing.assert_array_equal(guess[hidden.repeat(3, 1) == 0], images[hidden.repeat(3, 1) == 0].astype(np.float32))


def test_fill_keeps_visible_pixels_and_reproduces_a_linear_ramp():
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    ramp = np.stack([0.2 + 0.5 * xx, 0.9 - 0.6 * yy, 0.3 * xx + 0.4 * yy], -1)[None].repeat(3, 0).astype(np.float32)
    mask = interior_mask(3, 0)
    hidden = baselines.pixel_mask(mask)
    out = inpaint.smooth_fill(ramp, mask).numpy()
    np.testing.assert_array_equal(out[~hidden], ramp[~hidden])
    # A linear ramp has zero Laplacian: the biharmonic fill of interior holes is the ramp itself.
    # The solver converges to it; the default step count stops short (on purpose), a fifth of
    # the first guess's error away.
    assert np.abs(inpaint.smooth_fill(ramp, mask, steps=120).numpy() - ramp)[hidden].max() < 1e-5
    guess = inpaint.fill_pixels(ramp, masking.pixel_mask(mask), steps=0).numpy()  # the first guess alone
    assert np.abs(out - ramp)[hidden].mean() < np.abs(guess - ramp)[hidden].mean() / 5


def test_fill_agrees_with_skimage_biharmonic_on_smooth_images():
    yy, xx = np.mgrid[0:32, 0:32] / 31.0
    smooth = np.stack([0.5 + 0.4 * np.sin(2 * xx + yy), 0.5 + 0.3 * np.cos(3 * yy), 0.4 + 0.3 * xx * yy], -1)[None].repeat(2, 0)
    mask = interior_mask(2, 1)
    hidden = baselines.pixel_mask(mask)
    ours = inpaint.smooth_fill(smooth.astype(np.float32), mask, steps=60).numpy()
    theirs = np.stack([inpaint_biharmonic(im, h, channel_axis=-1) for im, h in zip(smooth, hidden)])
    assert np.abs(ours - theirs)[hidden].max() < 5e-3
    assert np.abs(ours - smooth)[hidden].max() < 2e-2


def test_fill_does_not_read_hidden_pixels():
    rng = np.random.default_rng(2)
    images = rng.random((4, 32, 32, 3)).astype(np.float32)
    mask = masking.make_masks("row", 0.5, 4, [0, 0]).numpy()
    tampered = np.where(baselines.pixel_mask(mask)[..., None], rng.random(images.shape), images).astype(np.float32)
    np.testing.assert_array_equal(inpaint.smooth_fill(images, mask).numpy(), inpaint.smooth_fill(tampered, mask).numpy())


@pytest.mark.parametrize("strategy", ["random", "row", "block"])
def test_refine_model_started_from_a_mae_is_the_fill_plus_a_share_of_its_prediction(strategy, tmp_path):
    mae, refine = models.build("mae", **TINY["mae"]), models.build("mae-refine", **TINY["mae"])
    mae.save(tmp_path / "mae.keras")
    train.start_from(refine, str(tmp_path / "mae.keras"))
    images = tf.random.stateless_uniform([4, 32, 32, 3], seed=[1, 1])
    mask = masking.make_masks(strategy, 0.5, 4, [1, 2])
    fill, share = inpaint.smooth_fill(images, mask).numpy(), 1 / (1 + np.exp(-models.RefineMAE.GATE_START))
    expected = fill + share * (mae((images, mask)).numpy() - fill)
    np.testing.assert_allclose(refine((images, mask)).numpy(), expected, atol=1e-6)
    refine.save(tmp_path / "refine.keras")
    with pytest.raises(MaskvitError, match="holds model mae-refine; this run trains model mae "):
        train.start_from(models.build("mae", **TINY["mae"]), str(tmp_path / "refine.keras"))


def test_picture_fill_is_exact_on_a_ramp_across_windows():
    """The long fill of reconstruct's blend: windows with margins, coarse to fine. A linear ramp
    has zero Laplacian, so its fill is the ramp itself, also where holes meet window edges."""
    yy, xx = np.mgrid[0:200, 0:300]
    ramp = np.stack([20 + 0.6 * xx, 230 - 0.9 * yy, 0.3 * xx + 0.4 * yy], -1)
    canvas = np.round(ramp).astype(np.uint8)
    hidden = np.kron(np.random.default_rng(3).random((50, 75)) < 0.5, np.ones((4, 4), bool))
    hidden[:4], hidden[-4:], hidden[:, :4], hidden[:, -4:] = False, False, False, False
    filled = inpaint.fill_picture(canvas, hidden, core=64)  # windows of 64: many window edges
    assert np.abs(filled - canvas)[hidden].max() < 1.5  # the ramp, up to the canvas's own rounding
    np.testing.assert_array_equal(filled[~hidden], canvas[~hidden])
    rows = slice(70, 130)
    np.testing.assert_allclose(inpaint.fill_picture(canvas, hidden, rows, core=64), filled[rows], atol=0.5)


def test_models_give_their_fill_beside_the_prediction():
    images = tf.random.stateless_uniform([3, 32, 32, 3], seed=[4, 4])
    mask = masking.make_masks("random", 0.5, 3, [4, 5])
    expected_fill = masking.composite(images, inpaint.smooth_fill(images, mask), mask).numpy()
    for name in ("mae", "mae-refine"):
        model = models.build(name, **TINY[name])
        predicted, fill = model.reconstruct_and_fill(images, mask)
        np.testing.assert_allclose(predicted.numpy(), model.reconstruct(images, mask).numpy(), atol=1e-6)
        np.testing.assert_allclose(fill.numpy(), expected_fill, atol=1e-6)
