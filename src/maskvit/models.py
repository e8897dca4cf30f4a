"""The models. Each takes (images [B,32,32,3] in [0,1], mask [B,64] bool, True = hidden) and
returns a full predicted image [B,32,32,3]; each is trained on its error over hidden pixels only
(MSE, or the mean log of each image's MSE: MaskedModel.loss_kind).

- SeedViT: the reference model, exactly: hidden patches zero-filled, every token through
  4 pre-LN blocks.
- MAE: the encoder sees visible tokens only; a learned mask token fills the hidden positions
  before a light decoder over all 64 (He et al., 2021).
- RefineMAE: the MAE gated, per hidden pixel, with an in-graph biharmonic fill.
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import keras
import tensorflow as tf

from . import distribute, inpaint
from .errors import MaskvitError
from .masking import IMAGE, N_PATCHES, PATCH_DIM, composite, patchify, pixel_mask, unpatchify

PACKAGE = "maskvit"
# The shipped models: saved_models/ holds the files, the package links to them, so both a checkout
# and an installed wheel find them. DEFAULT_MODEL, for CIFAR-10's own scale, is the best on the
# test grid of those trained within an hour (2 encoder blocks, a decoder of width 128 over the
# hidden tokens). `reconstruct` defaults to PICTURE_MODEL, the same stage 1 with its stage 2
# trained on zoomed crops: on pictures it scores 0.05-0.27 dB less than DEFAULT_MODEL on average,
# but on drawings of flat shapes with hard edges its SSIM stays within 0.02 of biharmonic
# inpainting's, where DEFAULT_MODEL's falls up to 0.044 below (model card).
DEFAULT_MODEL = Path(__file__).parent / "assets" / "default.keras"
PICTURE_MODEL = Path(__file__).parent / "assets" / "pictures.keras"
DEFAULT_AUTOENCODER = Path(__file__).parent / "assets" / "autoencoder.keras"  # the baseline trained beside it


def masked_mse(images, predicted, mask, per_image=False):
    """Mean squared error over the pixels of hidden patches only: of the batch, or per image [B]."""
    m = tf.cast(pixel_mask(mask), tf.float32)
    se = tf.square(tf.cast(predicted, tf.float32) - tf.cast(images, tf.float32)) * m
    axes = [1, 2, 3] if per_image else None
    return tf.reduce_sum(se, axes) / (tf.reduce_sum(m, axes) * 3.0)


LOSSES = ("mse", "log-mse")
# log-mse's floor, a hidden-pixel MSE of 40 dB: near-perfect images (flat ones) would otherwise
# take the largest weights, 1/MSE, in the gradient.
LOG_FLOOR = 1e-4


@keras.saving.register_keras_serializable(PACKAGE)
class Attention(keras.layers.MultiHeadAttention):
    """Keras's multi-head attention, same weights and arithmetic, with the scores and their
    mixing done by batched matmuls on [B,heads,T,key_dim]: on a 2-core EPYC, TensorFlow 2.21's
    einsums took 1.4-1.8x longer than matmuls here, forward and backward, making mae training
    ~12% faster (seed ~2%, where dropout costs more)."""

    def _compute_attention(self, query, key, value, attention_mask=None, training=None, return_attention_scores=False,
                           use_causal_mask=False):
        if attention_mask is not None or use_causal_mask or return_attention_scores:
            return super()._compute_attention(query, key, value, attention_mask, training, return_attention_scores, use_causal_mask)
        q, k, v = (tf.transpose(t, [0, 2, 1, 3]) for t in (query, key, value))  # [B,T,N,H] -> [B,N,T,H]
        # As Keras's dot_product_attention: logits and softmax in float32 whatever the compute dtype.
        logits = tf.cast(tf.matmul(q, k, transpose_b=True), tf.float32) * self._inverse_sqrt_key_dim  # [B,N,T,S]
        probs = tf.cast(tf.nn.softmax(logits), v.dtype)
        if self._dropout > 0.0:
            probs = self._dropout_layer(probs, training=training)
        return tf.transpose(tf.matmul(probs, v), [0, 2, 1, 3]), None  # [B,T,N,H]


@keras.saving.register_keras_serializable(PACKAGE)
class Block(keras.layers.Layer):
    """Pre-LN transformer block: x + MHA(LN(x)), then x + MLP(LN(x)).  [B,T,D] -> [B,T,D]"""

    def __init__(self, dim=128, heads=4, mlp_dim=256, dropout=0.1, **kwargs):
        super().__init__(**kwargs)
        self.dim, self.heads, self.mlp_dim, self.dropout = dim, heads, mlp_dim, dropout
        self.norm1 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.attn = Attention(heads, key_dim=dim // heads, dropout=dropout)
        self.norm2 = keras.layers.LayerNormalization(epsilon=1e-6)
        self.fc1 = keras.layers.Dense(mlp_dim)
        self.fc2 = keras.layers.Dense(dim)
        self.drop1 = keras.layers.Dropout(dropout)
        self.drop2 = keras.layers.Dropout(dropout)

    def call(self, x, training=False, context=None):
        """context [B,S,D]: tokens that x's tokens also attend to but that this block leaves as they are."""
        h = self.norm1(x)
        keys = h if context is None else tf.concat([self.norm1(context), h], axis=1)
        x = x + self.attn(h, keys, training=training)
        h = self.fc1(self.norm2(x))
        # Exact GELU in float32 even under bf16: on a CPU, TensorFlow takes 1.5x as long for it in bf16
        # as in float32 with the two casts.
        h = tf.cast(tf.nn.gelu(tf.cast(h, tf.float32), approximate=False), h.dtype)
        h = self.drop1(h, training=training)
        return x + self.drop2(self.fc2(h), training=training)

    def get_config(self):
        return {**super().get_config(), "dim": self.dim, "heads": self.heads, "mlp_dim": self.mlp_dim, "dropout": self.dropout}


class MaskedModel(keras.Model):
    """Shared by all models: the loss is on hidden pixels (loss_kind), whatever the architecture."""

    # Set by a trainer to choose each batch's masks in the step itself, from the batch and its
    # pipeline mask: (images, mask) -> mask. Importance masks need this, since they depend on
    # weights that change every step. Not saved with the model.
    remask = None
    # Set by a trainer, one of LOSSES. "mse": the mean squared error over the batch's hidden
    # pixels. "log-mse": the mean over images of log(their hidden-pixel MSE + LOG_FLOOR), which
    # weighs each image by the inverse of its error, as the mean PSNR the evaluation reports
    # does (mean PSNR = constant - 10 log10(e) * mean log MSE, at one ratio). Not saved.
    loss_kind = "mse"
    # Hyper-parameters that change what the model computes but none of its weights.
    WEIGHTLESS_HPARAMS = ()

    def train_step(self, data):
        return self._logs(super().train_step(self._remasked(data)))

    def test_step(self, data):
        return self._logs(super().test_step(self._remasked(data)))

    @staticmethod
    def _logs(logs: dict) -> dict:
        """Keras averages each replica's logs over the replicas, but across workers it reduces them
        on axis 0 (keras-team/keras#20585), which a scalar lacks: give each one that axis."""
        if not distribute.multi_worker(tf.distribute.get_strategy()):
            return logs
        return {key: value[None] for key, value in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds lazily from a batch reduced over replicas, which fails under
        # MultiWorkerMirroredStrategy (keras-team/keras#20585). Our models are built when made
        # and the trainer builds the optimizer, so there is nothing left to build.
        if not (self.built and (self.optimizer is None or self.optimizer.built)):
            super()._maybe_symbolic_build(iterator, data_batch)

    def _remasked(self, data):
        if self.remask is None:
            return data
        (images, mask), target = data
        return (images, tf.stop_gradient(self.remask(images, mask))), target

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        # Under tf.distribute the replicas' gradients are summed, so each replica contributes
        # its share of the mean (what Keras's own losses do).
        if self.loss_kind == "log-mse":
            loss = tf.reduce_mean(tf.math.log(self.objective(x, y, y_pred, per_image=True) + LOG_FLOOR))
        else:
            loss = self.objective(x, y, y_pred)
        return loss / tf.distribute.get_strategy().num_replicas_in_sync

    def objective(self, x, y, y_pred, per_image=False):
        return masked_mse(y, y_pred, x[1], per_image)

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE, IMAGE, 3], tf.float32), tf.TensorSpec([None, N_PATCHES], tf.bool)])
    def reconstruct(self, images, mask):
        """Inference: the composite of visible original patches and predicted hidden ones."""
        return composite(images, self((images, mask), training=False), mask)

    @tf.function(input_signature=[tf.TensorSpec([None, IMAGE, IMAGE, 3], tf.float32), tf.TensorSpec([None, N_PATCHES], tf.bool)])
    def reconstruct_and_fill(self, images, mask):
        """Inference with the classical answer beside it: the composites of the model's prediction
        and of the smooth (biharmonic) fill, for the same masks. [B,32,32,3] each."""
        predicted, fill = self.predict_and_fill(images, mask)
        return composite(images, predicted, mask), composite(images, fill, mask)

    def predict_and_fill(self, images, mask):
        return self((images, mask), training=False), inpaint.smooth_fill(images, mask)

    def get_config(self):
        return {**super().get_config(), **self.hparams}

    @classmethod
    def from_config(cls, config):
        known = {k: config[k] for k in cls.DEFAULTS if k in config}
        return cls(**known, name=config.get("name"))

    def _positions(self):
        return tf.range(N_PATCHES)

    def _build_encoder(self, h: dict) -> None:
        """Patch embedding, learned positions, transformer blocks, final norm: the ViTs' shared trunk."""
        self.embed = keras.layers.Dense(h["dim"], name="patch_embed")
        self.pos = keras.layers.Embedding(N_PATCHES, h["dim"], name="pos_embed")
        self.blocks = [Block(h["dim"], h["heads"], h["mlp_dim"], h["dropout"], name=f"block{i}") for i in range(h["depth"])]
        self.norm = keras.layers.LayerNormalization(epsilon=1e-6, name="norm")


@keras.saving.register_keras_serializable(PACKAGE)
class SeedViT(MaskedModel):
    """The reference model: zero-filled hidden patches, Linear(48->128) + learned positions,
    4 pre-LN blocks, LayerNorm, Linear(128->48) + sigmoid."""

    DEFAULTS = dict(dim=128, depth=4, heads=4, mlp_dim=256, dropout=0.1)

    def __init__(self, name=None, **hparams):
        super().__init__(name=name or "seed_vit")
        self.hparams = {**self.DEFAULTS, **hparams}
        h = self.hparams
        self._build_encoder(h)
        self.head = keras.layers.Dense(PATCH_DIM, activation="sigmoid", dtype="float32", name="head")

    def call(self, inputs, training=False):
        images, mask = inputs
        x = patchify(images)  # [B,64,48]
        x = tf.where(tf.cast(mask, tf.bool)[..., None], tf.zeros_like(x), x)  # hidden patches zero-filled
        h = self.embed(x) + self.pos(self._positions())  # [B,64,D]
        for block in self.blocks:
            h = block(h, training=training)
        return unpatchify(self.head(self.norm(h)))  # [B,32,32,3]


@keras.saving.register_keras_serializable(PACKAGE)
class MAE(MaskedModel):
    """Encoder on visible tokens only, then a light decoder over all 64 positions.

    Every mask in a batch hides the same number of patches, so the visible tokens form a dense
    [B,V,D] tensor: sort each row's patches visible-first, keep the first V, and undo the sort
    (with a mask token in the hidden slots) before the decoder.

    decode_visible=False: the decoder blocks update the H hidden tokens only, which attend to
    the visible ones as they enter the decoder and to each other (as CrossMAE, Fu et al., 2024,
    but with self-attention among the hidden); the output keeps the input's visible patches.
    Only hidden patches count in the loss and the composite, so this drops work that never
    reached either."""

    # decode_visible changes what the decoder computes but none of its weights: --init copies across it.
    WEIGHTLESS_HPARAMS = ("decode_visible",)
    # A narrow decoder: it runs on all 64 tokens (decode_visible=False: the hidden ones), so its
    # width sets most of the speed-up.
    DEFAULTS = dict(dim=128, depth=4, heads=4, mlp_dim=256, decoder_dim=64, decoder_depth=2, decoder_mlp_dim=128, dropout=0.0,
                    decode_visible=True)

    def __init__(self, name=None, **hparams):
        super().__init__(name=name or "mae")
        self.hparams = {**self.DEFAULTS, **hparams}
        h = self.hparams
        self._build_encoder(h)
        dd = h["decoder_dim"]
        self.decoder_embed = keras.layers.Dense(dd, name="decoder_embed")
        self.mask_token = keras.layers.Embedding(1, dd, name="mask_token")
        self.decoder_pos = keras.layers.Embedding(N_PATCHES, dd, name="decoder_pos_embed")
        self.decoder_blocks = [
            Block(dd, h["heads"], h["decoder_mlp_dim"], h["dropout"], name=f"decoder_block{i}") for i in range(h["decoder_depth"])
        ]
        self.decoder_norm = keras.layers.LayerNormalization(epsilon=1e-6, name="decoder_norm")
        self.head = keras.layers.Dense(PATCH_DIM, activation="sigmoid", dtype="float32", name="head")

    def call(self, inputs, training=False):
        images, mask = inputs
        patches = patchify(images)  # [B,64,48]
        h, order = self.encode_visible(patches, mask, training)
        return unpatchify(self.on_grid(self.head(self.decoder_tokens(h, order, training)), patches, order))

    def encode_visible(self, patches, mask, training):
        """patches [B,64,48], mask [B,64] -> encoded visible tokens [B,V,D] and, per image, the
        patches' order [B,64]: visible first, each group in grid order."""
        tokens = self.embed(patches) + self.pos(self._positions())  # [B,64,D]
        mask = tf.cast(mask, tf.bool)
        order = tf.argsort(tf.cast(mask, tf.int32), axis=1, stable=True)  # [B,64]
        n_visible = N_PATCHES - tf.reduce_sum(tf.cast(mask[:1], tf.int32))  # [:1]: a replica's batch may be empty
        return self.encode(tf.gather(tokens, order[:, :n_visible], batch_dims=1), training), order

    def encode(self, h, training):
        for block in self.blocks:
            h = block(h, training=training)
        return self.norm(h)  # [B,V,D]

    def decoder_tokens(self, h, order, training, extra=None):
        """Encoded visible tokens [B,V,D] -> the decoder's normalised output tokens: [B,64,Dd] in
        grid order, or (decode_visible=False) [B,H,Dd] for the hidden patches, in `order`'s order.
        extra [B,64,Dd], in grid order, is added to every decoder input token."""
        d = self.decoder_embed(h)  # [B,V,Dd]
        b, n_visible = tf.shape(d)[0], tf.shape(d)[1]
        hidden = tf.broadcast_to(self.mask_token(tf.zeros([1, 1], tf.int32)), [b, N_PATCHES - n_visible, tf.shape(d)[2]])
        d = tf.concat([d, tf.cast(hidden, d.dtype)], axis=1)  # visible, then hidden: sorted order
        added = self.decoder_pos(self._positions())  # [64,Dd]
        if self.hparams["decode_visible"]:  # its sums in the order the shipped models were trained with
            d = tf.gather(d, tf.argsort(order, axis=1), batch_dims=1) + added  # grid order [B,64,Dd]
            if extra is not None:
                d = d + tf.cast(extra, d.dtype)
            visible = None
        else:
            added = tf.gather(added, order) if extra is None else tf.gather(added + extra, order, batch_dims=1)
            d = d + tf.cast(added, d.dtype)  # sorted order [B,64,Dd]
            # [B,V,Dd] left as they are, [B,H,Dd] decoded. A split, not two slices: its gradient is
            # one concat, theirs two zero-padded copies summed. Importance scoring 4% faster (median
            # of six interleaved rounds, 2-core EPYC), the same scores and trained weights bit for bit.
            visible, d = tf.split(d, [n_visible, N_PATCHES - n_visible], axis=1)
        for block in self.decoder_blocks:
            d = block(d, training=training, context=visible)
        return self.decoder_norm(d)

    def decoded(self, x, order, n_visible):
        """x [B,64,C] in grid order -> the rows of the patches that the decoder's tokens stand for."""
        return x if self.hparams["decode_visible"] else tf.gather(x, order[:, n_visible:], batch_dims=1)

    def on_grid(self, out, patches, order):
        """The decoder's output patches out (decoded's layout) -> [B,64,48] in grid order, the
        undecoded (visible) patches taken from patches [B,64,48]."""
        if self.hparams["decode_visible"]:
            return out
        kept = tf.gather(patches, order[:, : N_PATCHES - tf.shape(out)[1]], batch_dims=1)
        return tf.gather(tf.concat([tf.cast(kept, out.dtype), out], axis=1), tf.argsort(order, axis=1), batch_dims=1)


@keras.saving.register_keras_serializable(PACKAGE)
class RefineMAE(MAE):
    """The MAE beside a classical fill. The hidden pixels are also filled smoothly from the
    visible ones (inpaint.smooth_fill: biharmonic inpainting, in the graph); the decoder sees
    that fill in every token, and a gate chooses, per hidden pixel, between the fill and the
    MAE's own prediction: out = fill + g * (prediction - fill), g = sigmoid(gate(token)).
    Smooth regions -- most of a large photograph at the 4x4-patch scale, which the plain MAE
    fills worse than biharmonic inpainting -- can take the fill; texture and edges the
    prediction. The fill embedding and the gate's weights start at zero and its bias at
    GATE_START, so a new model starts as the fill plus 12% of the MAE's prediction (of a
    trained `mae`, given by train --init, or of a random one)."""

    DEFAULTS = {**MAE.DEFAULTS, "fill_steps": inpaint.CG_STEPS}
    # sigmoid(-2) = 0.12: mostly the fill, the better answer while the MAE is untrained. Measured
    # from scratch (random 50%, 7 epochs): +0.05 dB over a gate starting at 0.5.
    GATE_START = -2.0

    def __init__(self, name=None, **hparams):
        super().__init__(name=name or "mae_refine", **hparams)
        self.fill_embed = keras.layers.Dense(self.hparams["decoder_dim"], name="fill_embed", kernel_initializer="zeros")
        self.gate = keras.layers.Dense(PATCH_DIM, activation="sigmoid", dtype="float32", name="gate", kernel_initializer="zeros",
                                       bias_initializer=keras.initializers.Constant(self.GATE_START))

    def call(self, inputs, training=False):
        return self._refine(*inputs, training)[0]

    def predict_and_fill(self, images, mask):
        return self._refine(images, mask, False)  # its own fill: no second one to compute

    def _refine(self, images, mask, training):
        """-> (gated output, fill), [B,32,32,3] each."""
        fill = tf.stop_gradient(inpaint.smooth_fill(images, mask, self.hparams["fill_steps"]))
        f = patchify(fill)  # [B,64,48]; its visible patches are the image's
        h, order = self.encode_visible(patchify(images), mask, training)
        d = self.decoder_tokens(h, order, training, extra=self.fill_embed(f))  # [B,T,Dd], T = 64 or H
        fd = self.decoded(f, order, tf.shape(h)[1])  # [B,T,48]
        prediction, g = self.head(d), self.gate(d)  # [B,T,48] each
        return unpatchify(self.on_grid(fd + g * (prediction - fd), f, order)), fill


@keras.saving.register_keras_serializable(PACKAGE)
class ConvAutoencoder(MaskedModel):
    """The seed's convolutional autoencoder, given the same zero-filled input as SeedViT:
    Conv 32/64/128 (3x3 ReLU, 2x2 max-pool) down to 4x4x128, Dense 128 bottleneck,
    Dense 4*4*128, Conv 128/64/32 each followed by 2x upsampling, Conv 3 + sigmoid."""

    DEFAULTS = dict(bottleneck=128)

    def __init__(self, name=None, **hparams):
        super().__init__(name=name or "autoencoder")
        self.hparams = {**self.DEFAULTS, **hparams}
        L = keras.layers
        self.encoder = [layer for f in (32, 64, 128) for layer in (L.Conv2D(f, 3, padding="same", activation="relu"), L.MaxPooling2D(2))]
        self.bottleneck = [L.Flatten(), L.Dense(self.hparams["bottleneck"], activation="relu"), L.Dense(4 * 4 * 128, activation="relu"), L.Reshape((4, 4, 128))]
        self.decoder = [layer for f in (128, 64, 32) for layer in (L.Conv2D(f, 3, padding="same", activation="relu"), L.UpSampling2D(2))]
        self.head = L.Conv2D(3, 3, padding="same", activation="sigmoid", dtype="float32")

    def call(self, inputs, training=False):
        images, mask = inputs
        x = tf.where(pixel_mask(tf.cast(mask, tf.bool)), tf.zeros_like(images), images)  # [B,32,32,3] hidden zero-filled
        for layer in self.encoder + self.bottleneck + self.decoder:
            x = layer(x)
        return self.head(x)


@keras.saving.register_keras_serializable(PACKAGE)
class DropoutAutoencoder(ConvAutoencoder):
    """The seed notebook's original autoencoder: the same network trained as a denoiser, on whole
    images whose pixels are each zeroed with probability pixel_dropout (the batch's patch mask is
    ignored in training), with MSE over all pixels. At inference it gets the zero-filled masked
    image like every other model, so it is scored on the same masks."""

    DEFAULTS = dict(bottleneck=128, pixel_dropout=0.5)

    def __init__(self, name=None, **hparams):
        super().__init__(name=name or "autoencoder_dropout", **hparams)
        # A Dropout layer only for its seeded keep/drop draw (its RNG state is saved on resume);
        # the kept pixels are not rescaled, so training inputs look like zero-filled test inputs.
        self.noise = keras.layers.Dropout(self.hparams["pixel_dropout"])

    def call(self, inputs, training=False):
        images, mask = inputs
        if training:
            keep = self.noise(tf.ones_like(images[..., :1]), training=True) > 0  # [B,32,32,1] per pixel
            images, mask = tf.where(keep, images, 0.0), tf.zeros_like(mask)
        return super().call((images, mask), training=training)

    def objective(self, x, y, y_pred, per_image=False):
        return tf.reduce_mean(tf.square(tf.cast(y_pred, tf.float32) - y), [1, 2, 3] if per_image else None)


MODELS = {"seed": SeedViT, "mae": MAE, "mae-refine": RefineMAE, "autoencoder": ConvAutoencoder, "autoencoder-dropout": DropoutAutoencoder}


def build(name: str, **hparams) -> MaskedModel:
    check_hparams(name, hparams)
    return _with_weights(MODELS[name](**hparams))


def check_hparams(name: str, hparams: dict) -> None:
    """Refuse a preset's unknown hyper-parameters and values it cannot be built with: counts
    and widths are whole numbers from 1, dropout rates in [0, 1), switches true or false, widths
    split over the heads."""
    for key, value in hparams.items():
        if isinstance(_default(name, key), bool):
            if not isinstance(value, bool):
                raise MaskvitError(f"hyper-parameter {key}={value!r}: must be true or false")
        elif isinstance(_default(name, key), int):
            if not (isinstance(value, int) and value >= 1):
                raise MaskvitError(f"hyper-parameter {key}={value!r}: must be a whole number from 1")
        elif not (isinstance(value, (int, float)) and 0 <= value < 1):
            raise MaskvitError(f"hyper-parameter {key}={value!r}: must be in [0, 1)")
    h = {**_default(name), **hparams}
    for width in ("dim", "decoder_dim"):
        if width in h and h[width] % h["heads"]:
            raise MaskvitError(f"hyper-parameter {width}={h[width]} does not split over heads={h['heads']}")


def parse_hparams(text: str, name: str) -> dict:
    """"depth=2,dim=64" -> {"depth": 2, "dim": 64}, typed and checked for the preset `name`."""
    hparams = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, _, value = (part.strip() for part in item.partition("="))
        if not value:
            raise MaskvitError(f"--hparams: {item!r} is not key=value, as in depth=2")
        kind = type(_default(name, key))
        if kind is bool:
            if value.lower() not in ("true", "false"):
                raise MaskvitError(f"--hparams: {key}={value!r} is not true or false")
            hparams[key] = value.lower() == "true"
            continue
        try:
            hparams[key] = kind(value)
        except ValueError:
            raise MaskvitError(f"--hparams: {key}={value!r} is not {'a whole number' if kind is int else 'a number'}") from None
    check_hparams(name, hparams)
    return hparams


def _default(name: str, key: str | None = None):
    """The preset's default hyper-parameters, or the one named key."""
    if name not in MODELS:
        raise MaskvitError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    defaults = MODELS[name].DEFAULTS
    if key is not None and key not in defaults:
        raise MaskvitError(f"unknown hyper-parameter {key!r} for the {name} model; it has {', '.join(defaults)}")
    return defaults if key is None else defaults[key]


def _with_weights(model: MaskedModel) -> MaskedModel:
    """Call the model once on a dummy batch: Keras creates the weights on first call."""
    model((tf.zeros([1, IMAGE, IMAGE, 3]), tf.zeros([1, N_PATCHES], tf.bool)))
    return model


def load(path=None, compile: bool = False) -> MaskedModel:
    """Load a maskvit model file (default: the shipped one) with Keras safe_mode on: no code
    from the file runs. compile=True also restores the optimizer state (to resume training)."""
    path = Path(path) if path else DEFAULT_MODEL
    if path.is_dir():
        raise MaskvitError(f"{path}: is a folder; name a .keras model file in it")
    if not path.is_file():
        raise MaskvitError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):
        raise MaskvitError(f"{path}: not a Keras model file (truncated or another format)")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=compile)
    except Exception as e:
        raise MaskvitError(f"{path}: cannot load this model ({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    if not isinstance(model, MaskedModel):
        raise MaskvitError(f"{path}: a Keras model, but not a maskvit one (it is a {type(model).__name__})")
    if not compile and any(layer.compute_dtype != "float32" for layer in model._flatten_layers()):
        model = as_float32(model)  # trained under mixed precision: infer in full precision
    return model


def fingerprint(path=None) -> dict:
    """A model file as results name it: its real path (the shipped model's, not the package's link
    to it) and the sha256 of its bytes, which tells two files of one name apart."""
    path = Path(path) if path else DEFAULT_MODEL
    return {"file": str(path.resolve()), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def as_float32(model: MaskedModel) -> MaskedModel:
    """The same weights in a model that computes in float32."""
    fresh = _with_weights(type(model)(name=model.name, **model.hparams))
    fresh.set_weights(model.get_weights())
    return fresh
