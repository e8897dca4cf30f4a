"""PNG figures: reconstruction examples, metric-vs-ratio curves, bar charts, training curves.
Each is written atomically."""

from __future__ import annotations

import re

import matplotlib

matplotlib.use("Agg")  # files only; no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_path  # noqa: E402

LABELS = {"mse": "MSE", "psnr": "PSNR (dB)", "ssim": "SSIM", "masked_mse": "masked MSE", "masked_psnr": "masked PSNR (dB)"}


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)


def bar_chart(rows: list[dict], metric: str, path) -> None:
    """Grouped bars: one group per (strategy, ratio), one bar per method, 95% CI whiskers."""
    cells = list(dict.fromkeys((r["strategy"], r["ratio"]) for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    width = 0.8 / len(methods)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(cells) * max(1, len(methods) / 2)), 4))
    for i, method in enumerate(methods):
        found = {(r["strategy"], r["ratio"]): r[metric] for r in rows if r["method"] == method}
        means = [found[c]["mean"] if c in found else np.nan for c in cells]
        errs = [(found[c]["ci95"][1] - found[c]["ci95"][0]) / 2 if c in found else 0 for c in cells]
        ax.bar(np.arange(len(cells)) + (i - (len(methods) - 1) / 2) * width, means, width, yerr=errs, capsize=2, label=method)
    ax.set_xticks(np.arange(len(cells)), [f"{s}\n{r:.2f}" for s, r in cells])
    ax.set_ylabel(LABELS[metric])
    if metric in ("psnr", "masked_psnr", "ssim"):
        low = min(r[metric]["mean"] for r in rows)
        ax.set_ylim(bottom=low * 0.9)
    ax.legend(fontsize=8)
    ax.set_title(f"{LABELS[metric]} by mask (mean, 95% CI)")
    _save(fig, path)


def ratio_curves(rows: list[dict], metric: str, path) -> None:
    """Metric against effective ratio, one line per (method, strategy)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = ["-", "--", ":", "-."]
    for i, method in enumerate(dict.fromkeys(r["method"] for r in rows)):
        for j, strategy in enumerate(dict.fromkeys(r["strategy"] for r in rows)):
            pts = sorted((r["effective_ratio"], r[metric]["mean"]) for r in rows if r["method"] == method and r["strategy"] == strategy)
            if pts:  # colour: method; line style: strategy
                ax.plot(*zip(*pts), marker="o", color=f"C{i}", linestyle=styles[j % len(styles)], label=f"{method} / {strategy}")
    ax.set_xlabel("fraction of patches hidden")
    ax.set_ylabel(LABELS[metric])
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    _save(fig, path)


def column_title(name: str, width: int = 16) -> str:
    """A method's name over lines of at most `width` characters where it can break after an
    underscore: at 1.3 inches a column, longer file stems run into their neighbours' titles."""
    lines = [""]
    for part in re.split(r"(?<=_)", name):
        if lines[-1] and len(lines[-1]) + len(part) > width:
            lines.append(part)
        else:
            lines[-1] += part
    return "\n".join(lines)


def examples(originals: np.ndarray, masked: np.ndarray, recons: dict[str, np.ndarray], path, title: str = "") -> None:
    """Rows of images: original, masked, then each method's reconstruction."""
    columns = {"original": originals, "masked": masked, **recons}
    n = len(originals)
    fig, axes = plt.subplots(n, len(columns), figsize=(1.3 * len(columns), 1.3 * n), squeeze=False, layout="constrained")  # room for two-line titles under the suptitle
    for j, (name, imgs) in enumerate(columns.items()):
        for i in range(n):
            axes[i, j].imshow(np.clip(imgs[i], 0, 1), interpolation="nearest")
            axes[i, j].axis("off")
        axes[0, j].set_title(column_title(name), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    _save(fig, path)


def training_curves(history: dict, path, title: str = "", loss: str = "mse") -> None:
    """Loss and learning rate per epoch. loss: the run's loss kind (its record's config.loss)."""
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    a.plot(epochs, history["loss"], label="training loss")
    a.plot(epochs, history["val_loss"], label="validation loss")
    a.set_xlabel("epoch")
    if loss == "log-mse":  # already a logarithm, and negative: a log axis would show nothing
        a.set_ylabel("log-mse loss: mean over images of log(hidden-pixel MSE)", fontsize=8)
    else:
        a.set_ylabel("MSE on hidden pixels")
        a.set_yscale("log")
    a.legend()
    b.plot(epochs, history["lr"], color="C2")
    b.set_xlabel("epoch")
    b.set_ylabel("learning rate")
    if min(history["lr"]) > 0:  # plateau halvings read best on a log axis; a warm-up from 0 cannot go on one
        b.set_yscale("log")
    if title:
        fig.suptitle(title)
    fig.tight_layout()  # the learning-rate axis's label clear of the loss panel
    _save(fig, path)
