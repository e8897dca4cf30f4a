"""Scoring reconstructions. Per image: MSE; PSNR as skimage.metrics.peak_signal_noise_ratio
(data_range=1); SSIM as skimage.metrics.structural_similarity(win_size=7, channel_axis=-1,
data_range=1.0); MSE and PSNR over the hidden pixels only. Then the mean over images with a 95%
confidence interval. The scored image is the composite: original visible patches, predicted
hidden ones. The formulas are skimage's, vectorised over images (tests check equality)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats

from . import data, masking

SSIM_WIN, K1, K2 = 7, 0.01, 0.03
METRICS = ("mse", "psnr", "ssim", "masked_mse", "masked_psnr")


def _psnr(mse):
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM of [N,32,32,3] arrays: skimage's structural_similarity(win_size=7,
    channel_axis=-1, data_range=1.0) -- uniform 7x7 window, sample covariance, mean over the
    valid interior and then over channels -- for all images at once."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    size = (1, SSIM_WIN, SSIM_WIN, 1)  # filter the two image axes only, as skimage does per channel

    def f(x):
        return ndimage.uniform_filter(x, size=size)

    ux, uy = f(a), f(b)
    cov_norm = SSIM_WIN**2 / (SSIM_WIN**2 - 1)
    vx, vy = cov_norm * (f(a * a) - ux * ux), cov_norm * (f(b * b) - uy * uy)
    vxy = cov_norm * (f(a * b) - ux * uy)
    c1, c2 = K1**2, K2**2
    s = (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    pad = (SSIM_WIN - 1) // 2
    return s[:, pad:-pad, pad:-pad, :].mean(axis=(1, 2, 3))


def image_metrics(originals: np.ndarray, reconstructed: np.ndarray, masks: np.ndarray, chunk: int = 1000) -> dict:
    """Per-image metrics of [N,32,32,3] float images in [0,1] with hidden-patch masks [N,64]."""
    out = {k: [] for k in METRICS}
    for i in range(0, len(originals), chunk):
        a = originals[i : i + chunk].astype(np.float64)
        b = reconstructed[i : i + chunk].astype(np.float64)
        err = (a - b) ** 2
        hidden = masking.pixel_mask(masks[i : i + chunk]).numpy()  # [n,32,32,1]
        mse = err.mean(axis=(1, 2, 3))
        masked_mse = (err * hidden).sum(axis=(1, 2, 3)) / (hidden.sum(axis=(1, 2, 3)) * 3)
        for key, value in (("mse", mse), ("psnr", _psnr(mse)), ("ssim", ssim(a, b)), ("masked_mse", masked_mse), ("masked_psnr", _psnr(masked_mse))):
            out[key].append(value)
    return {k: np.concatenate(v) for k, v in out.items()}


def summarize(values: np.ndarray) -> dict:
    """Mean and its 95% confidence interval (Student t) over images."""
    n = len(values)
    mean = float(np.mean(values))
    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def reconstruct(model, images_u8: np.ndarray, masks: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Composite reconstructions [N,32,32,3] float32: visible patches original, hidden predicted."""
    out = [model.reconstruct(x, m).numpy() for (x, m), _ in data.eval_pipeline(images_u8, masks, batch_size)]
    return np.concatenate(out)


def evaluate(model, images_u8: np.ndarray, strategy: str, ratio: float, seed: int = 0, batch_size: int = 500) -> dict:
    """One (strategy, ratio) cell: seeded masks, composite images, metrics with CIs."""
    masks = data.fixed_masks(strategy, ratio, len(images_u8), seed)
    recon = reconstruct(model, images_u8, masks, batch_size)
    per_image = image_metrics(images_u8.astype(np.float32) / 255.0, recon, masks)
    return {
        "strategy": strategy,
        "ratio": ratio,
        "effective_ratio": masking.effective_ratio(strategy, ratio),
        "n_images": len(images_u8),
        "seed": seed,
        **{k: summarize(v) for k, v in per_image.items()},
    }
