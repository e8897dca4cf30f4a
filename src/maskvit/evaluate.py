"""Scoring reconstructions. Per image: MSE; PSNR as skimage.metrics.peak_signal_noise_ratio
(data_range=1); SSIM as skimage.metrics.structural_similarity(win_size=7, channel_axis=-1,
data_range=1.0); MSE and PSNR over the hidden pixels only. Then the mean over images with a 95%
confidence interval. The scored image is the composite: original visible patches, predicted
hidden ones. The formulas are skimage's, vectorised over images (tests check equality)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import tensorflow as tf
from scipy import ndimage, stats

from . import baselines, data, distribute, importance, masking
from .errors import MaskvitError

SSIM_WIN, K1, K2 = 7, 0.01, 0.03
GRID_STRATEGIES = ("random", "row", "column", "block", "importance")
GRID_RATIOS = (0.3, 0.5, 0.7)
METRICS = ("mse", "psnr", "ssim", "masked_mse", "masked_psnr")


def _psnr(mse):
    with np.errstate(divide="ignore"):
        return 10 * np.log10(1.0 / mse)


def ssim_map(a: np.ndarray, b: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """skimage's SSIM map for float64 arrays in [0,1] (data_range 1): uniform window of `size`
    (1 on axes not to filter), sample covariance, reflection at the borders. Not yet cropped."""

    def f(x):
        return ndimage.uniform_filter(x, size=size)

    ux, uy = f(a), f(b)
    cov_norm = SSIM_WIN**2 / (SSIM_WIN**2 - 1)
    vx, vy = cov_norm * (f(a * a) - ux * ux), cov_norm * (f(b * b) - uy * uy)
    vxy = cov_norm * (f(a * b) - ux * uy)
    c1, c2 = K1**2, K2**2
    return (2 * ux * uy + c1) * (2 * vxy + c2) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-image SSIM of [N,32,32,3] arrays: skimage's structural_similarity(win_size=7,
    channel_axis=-1, data_range=1.0) -- uniform 7x7 window, sample covariance, mean over the
    valid interior and then over channels -- for all images at once."""
    # Filter the two image axes only, as skimage does per channel.
    s = ssim_map(a.astype(np.float64), b.astype(np.float64), (1, SSIM_WIN, SSIM_WIN, 1))
    pad = (SSIM_WIN - 1) // 2
    return s[:, pad:-pad, pad:-pad, :].mean(axis=(1, 2, 3))


def image_metrics(originals: np.ndarray, reconstructed: np.ndarray, masks: np.ndarray, chunk: int = 64) -> dict:
    """Per-image metrics of [N,32,32,3] float images in [0,1] with hidden-patch masks [N,64].
    Chunks run on threads: numpy and scipy's filters release the GIL for most of the work.
    Small chunks keep each one's float64 arrays (1.6 MB for 64 images) in a core's cache: on a
    2-core Xeon, 10,000 images took 1.1-1.3 s in chunks of 32-100 against 2.3-2.5 s in chunks
    of 1,000; the values are identical."""

    def one_chunk(i):
        a = originals[i : i + chunk].astype(np.float64)
        b = reconstructed[i : i + chunk].astype(np.float64)
        err = (a - b) ** 2
        hidden = baselines.pixel_mask(masks[i : i + chunk])[..., None]  # [n,32,32,1]
        mse = err.mean(axis=(1, 2, 3))
        masked_mse = (err * hidden).sum(axis=(1, 2, 3)) / (hidden.sum(axis=(1, 2, 3)) * 3)
        return {"mse": mse, "psnr": _psnr(mse), "ssim": ssim(a, b), "masked_mse": masked_mse, "masked_psnr": _psnr(masked_mse)}

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        parts = list(pool.map(one_chunk, range(0, len(originals), chunk)))
    return {k: np.concatenate([p[k] for p in parts]) for k in METRICS}


def summarize(values: np.ndarray) -> dict:
    """Mean and its 95% confidence interval (Student t) over images."""
    n = len(values)
    mean = float(np.mean(values))
    half = float(stats.t.ppf(0.975, n - 1) * np.std(values, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return {"mean": mean, "ci95": [mean - half, mean + half]}


def reconstruct(model, images_u8: np.ndarray, masks: np.ndarray, batch_size: int = distribute.INFER_BATCH, raw: bool = False) -> np.ndarray:
    """Composite reconstructions [N,32,32,3] float32: visible patches original, hidden predicted
    (raw=True: the model's whole output, visible patches included). Batches run in parallel
    (distribute.map_batches)."""
    run = tf.function(lambda x, m: model((x, m), training=False)) if raw else model.reconstruct
    return np.concatenate(distribute.map_batches(
        lambda i, j: run(data.scale(images_u8[i:j]), tf.constant(masks[i:j])).numpy(), len(images_u8), batch_size))


def masks_for(strategy: str, ratio: float, images_u8: np.ndarray, seed: int, scorer=None, scores=None) -> np.ndarray:
    """The cell's masks: seeded, or for importance strategies ranked by the scorer model
    (pass precomputed `scores` to reuse them across ratios)."""
    if strategy not in masking.SCORED:
        return data.fixed_masks(strategy, ratio, len(images_u8), seed)
    if scores is None:
        if scorer is None:
            raise MaskvitError(f"{strategy} masks need a model to score patch importance")
        scores = importance.scores(scorer, images_u8, seed)
    return masking.from_scores(scores, masking.hidden_count(strategy, ratio), most=strategy == "importance-most").numpy()


def first_model(methods: dict):
    return next((m for m in methods.values() if not isinstance(m, str)), None)


def cell(methods: dict, images_u8: np.ndarray, strategy: str, ratio: float, seed: int = 0, batch_size: int = distribute.INFER_BATCH,
         scorer=None, scores=None, raw: bool = False) -> list[dict]:
    """Score each method ({name: model or baseline name}) on one (strategy, ratio): the same
    masks for all (importance masks come from `scorer`, by default the first model). Rows hold
    summaries, plus per-image values under "per_image" for paired tests."""
    scorer = scorer or first_model(methods)
    masks = masks_for(strategy, ratio, images_u8, seed, scorer, scores)
    originals = images_u8.astype(np.float32) / 255.0
    rows = []
    for name, method in methods.items():
        if isinstance(method, str):
            recon = baselines.fill(method, originals, masks)
        else:
            recon = reconstruct(method, images_u8, masks, batch_size, raw)
        per_image = image_metrics(originals, recon, masks)
        rows.append({
            "method": name,
            "strategy": strategy,
            "ratio": ratio,
            # The fraction the masks hide: the strategy's fixed count, or for mixed masks (a
            # strategy and ratio per evaluation batch) what the draws came to, not the nominal ratio.
            "effective_ratio": float(masks.mean()),
            "n_images": len(images_u8),
            "seed": seed,
            "scored": "output" if raw and not isinstance(method, str) else "composite",
            **{k: summarize(v) for k, v in per_image.items()},
            "per_image": per_image,
        })
    return rows


def evaluate(model, images_u8: np.ndarray, strategy: str, ratio: float, seed: int = 0, batch_size: int = distribute.INFER_BATCH) -> dict:
    """One model on one (strategy, ratio): seeded masks, composite images, metrics with CIs."""
    row = cell({model.name: model}, images_u8, strategy, ratio, seed, batch_size)[0]
    row.pop("per_image")
    return row


def paired_difference(a: np.ndarray, b: np.ndarray) -> dict:
    """Mean of a - b over the same images, with its 95% CI (paired: same images, same masks)."""
    return summarize(a - b)


def parse_list(text: str, kind=float) -> list:
    try:
        return [kind(item) for item in text.replace(" ", ",").split(",") if item]
    except ValueError:
        raise MaskvitError(f"cannot read {text!r} as a comma-separated list") from None


def grid(methods: dict, images_u8: np.ndarray, strategies: list[str], ratios: list[float], seed: int = 0, on_cell=None,
         scorer=None, raw: bool = False, on_ranking=None) -> list[dict]:
    """Every (strategy, ratio) cell for every method, on identical masks within a cell.
    on_ranking() is called before the patches are ranked for importance masks, once for all
    cells; on_cell(strategy, ratio) after each cell."""
    for strategy in strategies:
        for ratio in ratios:
            masking.check(strategy, ratio)
    scorer = scorer or first_model(methods)
    scores = None
    if scorer is not None and set(strategies) & set(masking.SCORED):
        if on_ranking:
            on_ranking()
        scores = importance.scores(scorer, images_u8, seed)
    rows = []
    for strategy in strategies:
        for ratio in ratios:
            rows += cell(methods, images_u8, strategy, ratio, seed, scorer=scorer, scores=scores, raw=raw)
            if on_cell:
                on_cell(strategy, ratio)
    return rows


def add_baseline_differences(rows: list[dict], metrics=("psnr", "ssim")) -> None:
    """For each non-baseline row: paired difference (mean, 95% CI) to the cell's best baseline."""
    for r in rows:
        if r["method"] in baselines.BASELINES:
            continue
        peers = [b for b in rows if b["method"] in baselines.BASELINES and (b["strategy"], b["ratio"]) == (r["strategy"], r["ratio"])]
        if not peers:
            continue
        best = max(peers, key=lambda b: b["psnr"]["mean"])
        r["vs_best_baseline"] = {"baseline": best["method"], **{m: paired_difference(r["per_image"][m], best["per_image"][m]) for m in metrics}}


def public(rows: list[dict]) -> list[dict]:
    """Rows without the per-image arrays, ready for JSON."""
    return [{k: v for k, v in r.items() if k != "per_image"} for r in rows]


def csv_text(rows: list[dict]) -> str:
    head = ["method", "strategy", "ratio", "effective_ratio", "n_images", "seed", "scored"]
    cols = head + [f"{m}_{part}" for m in METRICS for part in ("mean", "ci_low", "ci_high")]
    lines = [",".join(cols)]
    for r in rows:
        values = [r[k] for k in head] + [v for m in METRICS for v in (r[m]["mean"], *r[m]["ci95"])]
        lines.append(",".join(str(v) for v in values))
    return "\n".join(lines) + "\n"
