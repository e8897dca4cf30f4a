"""The seed notebook's own autoencoder task, to set its reported PSNR 21.07 dB / SSIM 0.648 beside ours.

    python benchmarks/seed_autoencoder.py MODEL [MODEL...] --data PATH [--limit N]

MODEL: an `autoencoder-dropout` model (maskvit train --model autoencoder-dropout). Each test image
has every pixel zeroed with probability 0.5 (seeded), the model's whole output is scored against
the original (no composite: the task is denoising, not patch inpainting), with maskvit's per-image
MSE / PSNR / SSIM and 95% CIs. Prints numbers; asserts nothing. On patch masks, the fair
comparison with the other models, score the same file with `maskvit evaluate` / `compare`.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from maskvit import data, evaluate, masking, models  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="+")
    parser.add_argument("--data", default=None)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    images, _ = data.load_split("test", args.data)
    images = images[: args.limit]
    originals = images.astype(np.float32) / 255.0
    keep = tf.random.stateless_uniform([len(images), 32, 32, 1], seed=[args.seed, 7]) >= 0.5  # per pixel, all channels
    noisy = tf.where(keep, originals, 0.0)
    no_patch_hidden = tf.zeros([len(images), masking.N_PATCHES], tf.bool)
    whole = np.ones([len(images), masking.N_PATCHES], bool)  # "masked" metrics then cover the whole image
    print(f"{len(images)} test images, 50% of pixels zeroed (seed {args.seed}), whole output scored")
    for path in args.models:
        model = models.load(path)
        out = np.concatenate([model((noisy[i : i + 500], no_patch_hidden[i : i + 500]), training=False).numpy()
                              for i in range(0, len(images), 500)])
        metrics = {k: evaluate.summarize(v) for k, v in evaluate.image_metrics(originals, out, whole).items()}
        fmt = {k: f"{m['mean']:.4f} [{m['ci95'][0]:.4f}, {m['ci95'][1]:.4f}]" for k, m in metrics.items()}
        print(f"{path}: MSE {fmt['mse']}  PSNR {fmt['psnr']} dB  SSIM {fmt['ssim']}")
    print("seed notebook: PSNR 21.07 dB, SSIM 0.648")


if __name__ == "__main__":
    main()
