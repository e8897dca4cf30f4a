import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from scipy import stats
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from maskvit import data, distribute, evaluate, masking, models


def pair(n=12, noise=0.08):
    rng = np.random.default_rng(0)
    a = data.load_split("test", data.SAMPLE)[0][:n] / 255.0
    return a, np.clip(a + rng.normal(0, noise, a.shape), 0, 1)


def test_metrics_equal_direct_skimage():
    a, b = pair()
    masks = data.fixed_masks("row", 0.5, len(a), 0)
    got = evaluate.image_metrics(a, b, masks)
    hidden = masking.pixel_mask(masks).numpy()[..., 0]
    for i in range(len(a)):
        assert got["ssim"][i] == pytest.approx(structural_similarity(a[i], b[i], win_size=7, channel_axis=-1, data_range=1.0), abs=1e-12)
        assert got["psnr"][i] == pytest.approx(peak_signal_noise_ratio(a[i], b[i], data_range=1), abs=1e-10)
        assert got["mse"][i] == pytest.approx(np.mean((a[i] - b[i]) ** 2), abs=1e-15)
        region_mse = np.mean((a[i][hidden[i]] - b[i][hidden[i]]) ** 2)
        assert got["masked_mse"][i] == pytest.approx(region_mse, rel=1e-12)
        assert got["masked_psnr"][i] == pytest.approx(peak_signal_noise_ratio(a[i][hidden[i]], b[i][hidden[i]], data_range=1), abs=1e-10)
    chunked = evaluate.image_metrics(a, b, masks, chunk=5)  # chunks on threads, in image order
    assert all(np.array_equal(chunked[k], got[k]) for k in evaluate.METRICS)


def test_summary_confidence_interval():
    values = np.array([1.0, 2.0, 4.0, 7.0])
    s = evaluate.summarize(values)
    half = stats.t.ppf(0.975, 3) * values.std(ddof=1) / 2
    assert s["mean"] == 3.5 and s["ci95"] == pytest.approx([3.5 - half, 3.5 + half])


def test_evaluate_scores_the_composite():
    images = data.load_split("test", data.SAMPLE)[0][:20]
    result = evaluate.evaluate(models.build("seed"), images, "column", 0.3, seed=1)
    assert result["effective_ratio"] == 0.25 and result["n_images"] == 20
    # Visible patches are exact, so the whole-image MSE is the masked MSE times the hidden fraction.
    assert result["mse"]["mean"] == pytest.approx(result["masked_mse"]["mean"] * 0.25, rel=1e-5)
    assert result["psnr"]["ci95"][0] < result["psnr"]["mean"] < result["psnr"]["ci95"][1]


def test_mixed_masks_report_the_fraction_they_hide():
    images = data.load_split("test", data.SAMPLE)[0][:20]
    result = evaluate.evaluate(models.build("seed"), images, "mixed", 0.5, seed=2)
    assert result["effective_ratio"] == 21 / 64  # seed 2 draws 21 hidden patches, not the nominal 32
    assert result["mse"]["mean"] == pytest.approx(result["masked_mse"]["mean"] * 21 / 64, rel=1e-5)


def test_inference_batches_come_back_in_order_whatever_their_size():
    assert distribute.map_batches(lambda i, j: (i, j), 23, 5) == [(0, 5), (5, 10), (10, 15), (15, 20), (20, 23)]
    assert data.EVAL_BATCH % distribute.INFER_BATCH == 0  # no batch straddles two draws of "mixed" masks
    images = data.load_split("test", data.SAMPLE)[0][:23]
    masks = data.fixed_masks("block", 0.5, 23, 0)
    net = models.build("mae")
    whole = net.reconstruct(data.scale(images), tf.constant(masks)).numpy()
    np.testing.assert_allclose(evaluate.reconstruct(net, images, masks, batch_size=5), whole, atol=1e-6)


def test_one_thread_per_op_only_before_tensorflow_starts():
    """The evaluation commands' setting takes effect in a fresh process, and is refused (False,
    nothing changed) once TensorFlow has run an op. In fresh processes: under pytest, an earlier
    test may have run a command and set it already."""

    def fresh(before: str) -> list[str]:
        probe = (f"import tensorflow as tf; from maskvit import distribute; {before}; "
                 "print(distribute.one_thread_per_op(), tf.config.threading.get_intra_op_parallelism_threads(), "
                 "distribute.batches_at_once())")
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()

    assert fresh("pass") == ["True", "1", str(os.cpu_count())]  # a batch per core
    assert fresh("tf.zeros(1)") == ["False", "0", "2"]
