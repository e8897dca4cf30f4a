"""Classical inpainting, no training: the yardsticks a learned model has to beat.

Both fill only the hidden pixels, so their output is already the composite image. This module
imports no TensorFlow: biharmonic workers are fresh processes and start in a blink."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

GRID, PATCH = 8, 4
BASELINES = ("biharmonic", "mean")


def pixel_mask(masks: np.ndarray) -> np.ndarray:
    """[N,64] bool -> [N,32,32] bool (numpy twin of masking.pixel_mask, kept here so the workers need no TensorFlow)."""
    grid = masks.reshape(-1, GRID, GRID)
    return grid.repeat(PATCH, axis=1).repeat(PATCH, axis=2)


def mean_fill(images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Hidden pixels take the per-channel mean of the image's visible pixels. [N,32,32,3] in [0,1]."""
    hidden = pixel_mask(masks)[..., None]
    visible_mean = (images * ~hidden).sum(axis=(1, 2), keepdims=True) / (~hidden).sum(axis=(1, 2), keepdims=True)
    return np.where(hidden, visible_mean, images).astype(np.float32)


def _biharmonic_chunk(args) -> np.ndarray:
    from skimage.restoration import inpaint_biharmonic

    images, hidden = args
    return np.stack([inpaint_biharmonic(im, h, channel_axis=-1) for im, h in zip(images, hidden)])


def biharmonic(images: np.ndarray, masks: np.ndarray, workers: int | None = None, chunk: int = 250) -> np.ndarray:
    """skimage.restoration.inpaint_biharmonic(channel_axis=-1) on the hidden pixels of every
    image, spread over worker processes. [N,32,32,3] in [0,1] -> same."""
    hidden = pixel_mask(masks)
    jobs = [(images[i : i + chunk].astype(np.float64), hidden[i : i + chunk]) for i in range(0, len(images), chunk)]
    workers = min(workers or os.cpu_count() or 1, len(jobs))
    if workers <= 1:
        parts = [_biharmonic_chunk(job) for job in jobs]
    else:
        # spawn, not fork: the parent may hold TensorFlow's threads, which a fork would copy mid-lock.
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            parts = list(pool.map(_biharmonic_chunk, jobs))
    return np.where(hidden[..., None], np.concatenate(parts), images).astype(np.float32)


def fill(method: str, images: np.ndarray, masks: np.ndarray) -> np.ndarray:
    return {"biharmonic": biharmonic, "mean": mean_fill}[method](images, masks)
