import json
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from maskvit import masking, models
from maskvit.errors import MaskvitError


def randomise_refine_paths(model):
    """mae-refine's fill embedding and gate start at zero: make every path count."""
    for i, layer in enumerate((model.fill_embed, model.gate)):
        layer.kernel.assign(tf.random.stateless_normal(layer.kernel.shape, seed=[3, i]) * 0.1)


@pytest.fixture(scope="module", params=["seed", "mae", "mae-refine", "mae-refine decode_visible=false", "autoencoder", "autoencoder-dropout"])
def model(request):
    keras.utils.set_random_seed(0)
    name, _, hparams = request.param.partition(" ")
    model = models.build(name, **models.parse_hparams(hparams, name))
    if name == "mae-refine":
        randomise_refine_paths(model)
    return model


def batch(n=4, seed=0):
    return tf.random.stateless_uniform([n, 32, 32, 3], seed=[seed, 0]), masking.make_masks("random", 0.5, n, [seed, 1])


def test_output_is_an_image_in_unit_range(model):
    images, mask = batch()
    out = model((images, mask)).numpy()
    assert out.shape == (4, 32, 32, 3) and out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("strategy", ["random", "row", "column"])
def test_hidden_pixels_do_not_leak(model, strategy):
    """The model's output must not depend on the pixels it is asked to reconstruct."""
    images, _ = batch()
    mask = masking.make_masks(strategy, 0.4, 4, [2, 2])
    noise = tf.random.stateless_uniform(images.shape, seed=[9, 9])
    tampered = masking.composite(images, noise, mask)  # only hidden pixels changed
    np.testing.assert_allclose(model((images, mask)).numpy(), model((tampered, mask)).numpy(), atol=1e-6)


def test_seed_architecture_is_the_reference():
    m = models.build("seed")
    assert m.count_params() == 550_832  # 48->128 embed, 64x128 positions, 4 blocks, LN, 128->48
    first = [layer for layer in m.blocks[0]._layers if hasattr(layer, "name")][:3]
    assert [isinstance(layer, kind) for layer, kind in zip(first, (keras.layers.LayerNormalization, keras.layers.MultiHeadAttention,
                                                                    keras.layers.LayerNormalization))] == [True] * 3
    assert m.blocks[0].attn._num_heads == 4 and m.blocks[0].attn._key_dim == 32 and m.blocks[0].dropout == 0.1


@pytest.mark.parametrize("name", ["mae", "mae-refine"])
def test_decoding_hidden_tokens_only_equals_the_full_decoder_at_depth_1(name):
    """A single decoder block's hidden outputs see the same keys and values (every token as it
    enters the decoder) whether or not the visible tokens are updated too; a second block sees
    updated visible tokens only in the full decoder. Visible patches keep the input's."""
    images, _ = batch()
    mask = masking.make_masks("row", 0.4, 4, [5, 5])
    hidden = masking.pixel_mask(mask).numpy()[..., 0]
    outputs = {}
    for depth in (1, 2):
        keras.utils.set_random_seed(depth)
        full = models.build(name, decoder_depth=depth)
        if name == "mae-refine":
            randomise_refine_paths(full)
        partial = models.build(name, decoder_depth=depth, decode_visible=False)
        partial.set_weights(full.get_weights())
        outputs[depth] = full((images, mask)).numpy(), partial((images, mask)).numpy()
        np.testing.assert_array_equal(outputs[depth][1][~hidden], images.numpy()[~hidden])
    np.testing.assert_allclose(outputs[1][0][hidden], outputs[1][1][hidden], atol=1e-6)
    assert np.abs(outputs[2][0][hidden] - outputs[2][1][hidden]).max() > 1e-3


def test_switch_hyper_parameters_parse_as_true_or_false():
    assert models.parse_hparams("decode_visible=False", "mae") == {"decode_visible": False}
    assert models.parse_hparams("decode_visible=true", "mae-refine") == {"decode_visible": True}
    with pytest.raises(MaskvitError, match="is not true or false"):
        models.parse_hparams("decode_visible=0", "mae")
    with pytest.raises(MaskvitError, match="must be true or false"):
        models.build("mae", decode_visible=1)


def test_model_files_from_before_decode_visible_decode_every_token():
    """The picture model shipped before was saved before the switch existed: it must load as it was trained."""
    old = models.DEFAULT_MODEL.resolve().parent / "maskvit_refine_zoom.keras"  # beside the shipped files the assets link to
    with zipfile.ZipFile(old) as file:
        assert "decode_visible" not in json.loads(file.read("config.json"))["config"]
    assert models.load(old).hparams["decode_visible"] is True


def test_masked_mse_counts_hidden_pixels_only():
    images, mask = batch(2)
    predicted = masking.composite(images, images + 0.5, mask)  # error 0.5 on hidden pixels only
    assert float(models.masked_mse(images, predicted, mask)) == pytest.approx(0.25, rel=1e-5)


@pytest.mark.parametrize("preset", ["mae", "autoencoder-dropout"])
def test_log_mse_loss_is_the_mean_log_of_each_images_error(preset):
    net = models.build(preset)
    images, mask = batch(3)
    offsets = tf.constant([0.1, 0.2, 0.3])[:, None, None, None]
    # mae: the error counts on hidden pixels only; the denoiser's counts on every pixel.
    predicted = masking.composite(images, images + offsets, mask) if preset == "mae" else images + offsets
    errors = np.array([0.01, 0.04, 0.09])
    assert float(net.compute_loss((images, mask), images, predicted)) == pytest.approx(errors.mean(), rel=1e-5)
    net.loss_kind = "log-mse"
    try:
        expected = np.log(errors + models.LOG_FLOOR).mean()
        assert float(net.compute_loss((images, mask), images, predicted)) == pytest.approx(expected, rel=1e-5)
    finally:
        net.loss_kind = "mse"


def test_dropout_autoencoder_trains_as_a_denoiser_on_whole_images():
    from maskvit.train import rng_state, set_rng_state

    net = models.build("autoencoder-dropout")
    images, mask = batch()
    state = rng_state(net)
    noisy = net((images, mask), training=True).numpy()
    set_rng_state(net, state)  # the same pixel noise again, with another patch mask: the mask is ignored
    np.testing.assert_array_equal(noisy, net((images, ~mask), training=True).numpy())
    assert not np.allclose(noisy, net((images, tf.zeros_like(mask)), training=False).numpy(), atol=1e-4)  # noise is applied
    predicted = images * 0.0 + 0.5
    expected = float(tf.reduce_mean(tf.square(images - 0.5)))  # every pixel counts, not only hidden ones
    assert float(net.compute_loss((images, mask), images, predicted)) == pytest.approx(expected, rel=1e-6)


def test_save_load_round_trip(model, tmp_path):
    path = tmp_path / "m.keras"
    model.save(path)
    images, mask = batch()
    np.testing.assert_array_equal(model((images, mask)).numpy(), models.load(path)((images, mask)).numpy())


def test_load_refuses_bad_files(tmp_path):
    with pytest.raises(MaskvitError, match="no such model file"):
        models.load(tmp_path / "missing.keras")
    (tmp_path / "text.keras").write_text("hello")
    with pytest.raises(MaskvitError, match="not a Keras model file"):
        models.load(tmp_path / "text.keras")
    foreign = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    foreign.save(tmp_path / "foreign.keras")
    with pytest.raises(MaskvitError, match="not a maskvit one"):
        models.load(tmp_path / "foreign.keras")
    good = tmp_path / "good.keras"
    models.build("seed").save(good)
    truncated = tmp_path / "truncated.keras"
    truncated.write_bytes(good.read_bytes()[:100_000])
    with pytest.raises(MaskvitError, match="truncated|cannot load"):
        models.load(truncated)


def test_mixed_precision_model_loads_for_float32_inference(tmp_path):
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        trained = models.build("mae", depth=1, decoder_depth=1)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert trained.blocks[0].compute_dtype == "bfloat16"
    trained.save(tmp_path / "bf16.keras")
    loaded = models.load(tmp_path / "bf16.keras")
    assert all(layer.compute_dtype == "float32" for layer in loaded._flatten_layers())
    for a, b in zip(trained.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    images, mask = batch()
    np.testing.assert_allclose(loaded((images, mask)).numpy(), trained((images, mask)).numpy(), atol=0.05)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
@pytest.mark.parametrize("dropout", [0.0, 0.1])
def test_block_equals_the_plain_keras_block(policy, dropout):
    """Block computes attention by matmuls and GELU in float32; with the same weights it must give
    what the plain Keras layers (MultiHeadAttention, Dense with gelu) give, outputs and gradients."""

    class Plain(keras.layers.Layer):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6), keras.layers.LayerNormalization(epsilon=1e-6)
            self.attn = keras.layers.MultiHeadAttention(4, key_dim=32, dropout=dropout)
            self.fc1, self.fc2 = keras.layers.Dense(256, activation="gelu"), keras.layers.Dense(128)

        def call(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h)
            return x + self.fc2(self.fc1(self.norm2(x)))

    keras.mixed_precision.set_global_policy(policy)
    try:
        block, plain = models.Block(128, 4, 256, dropout), Plain()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    x = tf.random.stateless_normal([8, 64, 128], seed=[4, 4])
    block(x), plain(x)
    for name in ("norm1", "attn", "norm2", "fc1", "fc2"):
        getattr(plain, name).set_weights(getattr(block, name).get_weights())
    outs, grads = [], []
    for layer in (block, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = tf.cast(layer(x), tf.float32)  # inference: dropout off
            loss = tf.reduce_sum(tf.sin(y))
        outs.append(y.numpy()), grads.append(tape.gradient(loss, x).numpy())
    # bf16: two rounding steps at these magnitudes (|values| up to ~5, where a bf16 step is 1/32).
    tol = 1e-5 if policy == "float32" else 0.07
    np.testing.assert_allclose(outs[0], outs[1], atol=tol)
    np.testing.assert_allclose(grads[0], grads[1], atol=tol)
