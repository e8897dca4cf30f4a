"""Patches and masks.

A 32x32x3 image is an 8x8 grid of 4x4x3 patches: 64 tokens of 48 values, row-major over the
grid, each patch flattened as (row, col, channel) -- the layout of tf.image.extract_patches.
A mask is a boolean [batch, 64] tensor, True where the patch is hidden. Every strategy hides the
same number of patches in every image, so a batch always has a fixed count of visible tokens.
"""

from __future__ import annotations

import math

import tensorflow as tf

from .errors import MaskvitError

IMAGE, PATCH = 32, 4
GRID = IMAGE // PATCH  # 8 patches per side
N_PATCHES = GRID * GRID  # 64
PATCH_DIM = PATCH * PATCH * 3  # 48
STRATEGIES = ("random", "row", "column", "block", "mixed", "importance", "importance-most")
SCORED = ("importance", "importance-most")  # need a model's patch importance: see evaluate.importance_masks
BLOCK_CANDIDATES = 24  # rectangles drawn per image for "block"; enough to cover 63 patches
MIX_SPREAD = 0.25  # "mixed" draws each batch's ratio from [ratio - 0.25, ratio + 0.25]


def patchify(images):
    """[B,32,32,3] -> [B,64,48]."""
    x = tf.reshape(images, [-1, GRID, PATCH, GRID, PATCH, 3])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])  # [B, gy, gx, py, px, c]
    return tf.reshape(x, [-1, N_PATCHES, PATCH_DIM])


def unpatchify(patches):
    """[B,64,48] -> [B,32,32,3], the exact inverse of patchify."""
    x = tf.reshape(patches, [-1, GRID, GRID, PATCH, PATCH, 3])
    x = tf.transpose(x, [0, 1, 3, 2, 4, 5])  # [B, gy, py, gx, px, c]
    return tf.reshape(x, [-1, IMAGE, IMAGE, 3])


def pixel_mask(mask):
    """[B,64] bool -> [B,32,32,1] bool: every pixel of a hidden patch is hidden."""
    m = tf.reshape(mask, [-1, GRID, 1, GRID, 1])
    m = tf.broadcast_to(m, [tf.shape(mask)[0], GRID, PATCH, GRID, PATCH])
    return tf.reshape(m, [-1, IMAGE, IMAGE, 1])


def composite(images, predicted, mask):
    """The original's visible patches with the prediction in the hidden ones."""
    return tf.where(pixel_mask(mask), predicted, images)


def _half_up(x: float) -> int:
    return math.floor(x + 0.5)


def check(strategy: str, ratio: float) -> None:
    if strategy not in STRATEGIES:
        raise MaskvitError(f"unknown mask strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not (isinstance(ratio, (int, float)) and math.isfinite(ratio) and 0 < ratio < 1):
        raise MaskvitError(f"mask ratio must be a number strictly between 0 and 1, got {ratio}")


def check_scorer(strategies: list[str]) -> None:
    """A --scorer ranks patches for importance masks: refuse one given where none is drawn."""
    if not set(strategies) & set(SCORED):
        raise MaskvitError(f"--scorer ranks patches for importance masks; it has no use with {', '.join(strategies)} masks")


def hidden_lines(ratio: float) -> int:
    """Whole rows (or columns) hidden: round(ratio*8), at least 1 and at most 7."""
    return min(max(_half_up(ratio * GRID), 1), GRID - 1)


def hidden_count(strategy: str, ratio: float) -> int:
    """Patches hidden per image; at least one is hidden and at least one stays visible."""
    check(strategy, ratio)
    if strategy in ("row", "column"):
        return hidden_lines(ratio) * GRID
    if strategy == "mixed":
        raise MaskvitError("mixed masks hide a different number of patches per batch; score a model with random, row or column")
    return min(max(_half_up(ratio * N_PATCHES), 1), N_PATCHES - 1)


def effective_ratio(strategy: str, ratio: float) -> float:
    return ratio if strategy == "mixed" else hidden_count(strategy, ratio) / N_PATCHES


def _lowest_k(noise, k: int):
    """True at the k smallest entries of each row of noise [B,n]: a uniform random k-subset."""
    ranks = tf.argsort(tf.argsort(noise, axis=1), axis=1)
    return ranks < k


def make_masks(strategy: str, ratio: float, n, seed) -> tf.Tensor:
    """Hidden-patch masks [n,64] bool, a pure function of (strategy, ratio, n, seed).

    seed is a pair of ints (or an int32 [2] tensor): stateless, so the same seed gives every
    model in a comparison the same masks, and a resumed run the same masks it would have had."""
    check(strategy, ratio)
    if strategy in SCORED:
        raise MaskvitError(f"{strategy} masks come from a model's patch importance; use them in evaluate or compare")
    seed = tf.cast(seed, tf.int64)
    if strategy == "mixed":
        return _mixed(ratio, n, seed)
    if strategy == "random":
        return _random(n, seed, hidden_count(strategy, ratio))
    if strategy == "block":
        return _blocks(n, seed, hidden_count(strategy, ratio))
    return _lines(strategy, n, seed, hidden_lines(ratio))


def from_scores(scores, k: int, most: bool = False):
    """Hide the k patches with the lowest scores (the highest with most=True). scores: [n,64]."""
    return _lowest_k(-scores if most else scores, k)


def _random(n, seed, k):
    return _lowest_k(tf.random.stateless_uniform([n, N_PATCHES], seed=seed), k)


def _lines(strategy, n, seed, k):
    lines = _lowest_k(tf.random.stateless_uniform([n, GRID], seed=seed), k)  # [n, 8]
    grid = lines[:, :, None] if strategy == "row" else lines[:, None, :]
    return tf.reshape(tf.broadcast_to(grid, [n, GRID, GRID]), [n, N_PATCHES])


def _blocks(n, seed, k: int):
    """BEiT/SimMIM-style: rectangles of patches (sides 1..4) are laid one after another, and
    the k patches covered first are hidden -- the union of the first rectangles, the last one
    cut to make the count exact. Vectorised: no loop over images or rectangles."""
    s_size, s_pos, s_tie = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    m = BLOCK_CANDIDATES
    size = tf.random.stateless_uniform([n, m, 2], seed=s_size, minval=1, maxval=5, dtype=tf.int32)  # height, width
    corner = tf.cast(tf.random.stateless_uniform([n, m, 2], seed=s_pos) * tf.cast(GRID - size + 1, tf.float32), tf.int32)
    ys, xs = tf.range(GRID)[None, None, :, None], tf.range(GRID)[None, None, None, :]
    inside = ((ys >= corner[..., 0, None, None]) & (ys < (corner[..., 0] + size[..., 0])[..., None, None])
              & (xs >= corner[..., 1, None, None]) & (xs < (corner[..., 1] + size[..., 1])[..., None, None]))  # [n,m,8,8]
    inside = tf.reshape(inside, [n, m, N_PATCHES])
    # Priority of a patch: the index of the first rectangle covering it (m if none), plus a random
    # fraction so ties inside the last rectangle are cut at random.
    first = tf.where(tf.reduce_any(inside, axis=1), tf.argmax(tf.cast(inside, tf.int32), axis=1, output_type=tf.int32), m)
    priority = tf.cast(first, tf.float32) + tf.random.stateless_uniform([n, N_PATCHES], seed=s_tie)
    return _lowest_k(priority, k)


def _mixed(ratio: float, n, seed):
    """Training masks of every kind: one strategy (random, row or column) and one ratio in
    ratio +- MIX_SPREAD per call, so a batch still hides the same count in every image."""
    s_pick, s_ratio, s_mask = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
    pick = tf.random.stateless_uniform([], seed=s_pick, maxval=3, dtype=tf.int32)
    r = tf.random.stateless_uniform([], seed=s_ratio, minval=ratio - MIX_SPREAD, maxval=ratio + MIX_SPREAD)
    k = tf.clip_by_value(tf.cast(tf.floor(r * N_PATCHES + 0.5), tf.int32), 1, N_PATCHES - 1)
    lines = tf.clip_by_value(tf.cast(tf.floor(r * GRID + 0.5), tf.int32), 1, GRID - 1)
    masks = tf.stack([_random(n, s_mask, k), _lines("row", n, s_mask, lines), _lines("column", n, s_mask, lines)])
    return tf.gather(masks, pick)
