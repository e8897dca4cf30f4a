"""A smooth fill of the hidden pixels, computed in the graph: what the `mae-refine` model
(models.RefineMAE) sees beside the visible patches and mixes with its own prediction.

Biharmonic inpainting (what skimage's inpaint_biharmonic does) chooses hidden pixels that
minimise the squared Laplacian of the image: smooth, and exact on linear ramps -- what large
photographs look like at the 4x4-patch scale, and where a ViT's own fill is weakest. Here it is
solved by conjugate gradients with a fixed step count, batched, from a normalised-convolution
guess, so it runs inside a model on any device. A dozen steps leave it short of convergence,
which on large holes is smoother and closer to the truth than the exact solution (CIFAR-10, row
masks at 70%: 15.9 dB against 15.0 for skimage's exact solve)."""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from .masking import pixel_mask

# Conjugate-gradient steps: 12 match or beat skimage's exact solve on CIFAR-10 masks (measured
# 12, 24, 40). Each costs ~7 ms per 500 images on 2 CPU cores; the whole fill, ~220 ms, about as
# much as the network's forward pass.
CG_STEPS = 12
SIGMAS = (8.0, 4.0, 2.0, 1.0)  # normalised-convolution scales for the first guess, coarse to fine


def _stencil(x):
    """Five-point Laplacian over the interior of x [B,H,W,C] ('valid'): [B,H-2,W-2,C]. Slices
    and adds: on a CPU several times faster than a depthwise convolution this small."""
    return x[:, :-2, 1:-1] + x[:, 2:, 1:-1] + x[:, 1:-1, :-2] + x[:, 1:-1, 2:] - 4.0 * x[:, 1:-1, 1:-1]


def laplacian(u):
    """Five-point Laplacian of u [B,H,W,3], edges mirrored: same shape."""
    return _stencil(tf.pad(u, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC"))


def laplacian_adjoint(r):
    """The transpose of `laplacian` as a linear map: fold the mirrored border back in."""
    t = _stencil(tf.pad(r, [[0, 0], [2, 2], [2, 2], [0, 0]]))  # [B,H+2,W+2,3]
    t = tf.concat([t[:, 1:2] + t[:, :1], t[:, 2:-2], t[:, -2:-1] + t[:, -1:]], axis=1)
    return tf.concat([t[:, :, 1:2] + t[:, :, :1], t[:, :, 2:-2], t[:, :, -2:-1] + t[:, :, -1:]], axis=2)


def _gaussian(sigma: float) -> np.ndarray:
    x = np.arange(-math.ceil(3 * sigma), math.ceil(3 * sigma) + 1)
    k = np.exp(-(x**2) / (2 * sigma**2))
    return (k / k.sum()).astype(np.float32)


def first_guess(images, hidden):
    """Normalised convolution: each hidden pixel takes the Gaussian-weighted mean of the visible
    ones, at the finest scale that sees enough of them (else the image's visible mean)."""
    visible = 1.0 - hidden
    seen = images * visible
    total = tf.maximum(tf.reduce_sum(visible, [1, 2], keepdims=True), 1.0)
    guess = tf.broadcast_to(tf.reduce_sum(seen, [1, 2], keepdims=True) / total, tf.shape(images))
    stacked = tf.concat([seen, visible], -1)  # [B,32,32,4]: blurred together, then divided
    for sigma in SIGMAS:
        g = _gaussian(sigma)
        r = len(g) // 2
        both = tf.pad(stacked, [[0, 0], [r, r], [r, r], [0, 0]])  # zeros count as unseen
        k = tf.constant(np.tile(g[None, :, None, None], (1, 1, 4, 1)))  # separable: along x, then along y
        both = tf.nn.depthwise_conv2d(tf.nn.depthwise_conv2d(both, k, [1] * 4, "VALID"), tf.transpose(k, [1, 0, 2, 3]), [1] * 4, "VALID")
        weighted, weight = both[..., :3], both[..., 3:]
        guess = tf.where(weight > 0.05, weighted / tf.maximum(weight, 1e-6), guess)
    return seen + guess * hidden


def smooth_fill(images, mask, steps: int = CG_STEPS):
    """images [B,32,32,3] in [0,1], mask [B,64] bool -> [B,32,32,3]: visible pixels unchanged,
    hidden ones approximately minimising the squared Laplacian (biharmonic inpainting)."""
    images = tf.cast(images, tf.float32)
    hidden = tf.cast(pixel_mask(mask), tf.float32)  # [B,32,32,1]
    x = first_guess(images, hidden)

    def normal(p):  # the normal operator restricted to the hidden pixels: symmetric, positive semi-definite
        return hidden * laplacian_adjoint(laplacian(hidden * p))

    r = -hidden * laplacian_adjoint(laplacian(x))  # minus the gradient of the energy
    p, rr = r, tf.reduce_sum(r * r, [1, 2], keepdims=True)  # per image and channel
    for _ in range(steps):
        q = normal(p)
        # A converged image/channel has rr ~ 0: stop moving it rather than divide noise by noise.
        alive = rr > 1e-12
        alpha = tf.where(alive, rr / tf.maximum(tf.reduce_sum(p * q, [1, 2], keepdims=True), 1e-30), 0.0)
        x, r = x + alpha * p, r - alpha * q
        rr_next = tf.reduce_sum(r * r, [1, 2], keepdims=True)
        p = r + tf.where(alive, rr_next / tf.maximum(rr, 1e-30), 0.0) * p
        rr = rr_next
    return tf.clip_by_value(x, 0.0, 1.0)
