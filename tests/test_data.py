import os
import pickle

import numpy as np
import pytest

from conftest import N_PER_BATCH, cifar_members, write_archive
from maskvit import data
from maskvit.errors import MaskvitError


def test_loads_archive_and_folder_identically(fake_archive, tmp_path):
    images, labels = data.load_split("train", str(fake_archive))
    assert images.shape == (5 * N_PER_BATCH, 32, 32, 3) and images.dtype == np.uint8
    folder = tmp_path / "extracted" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, payload in cifar_members().items():
        (folder.parent / name).write_bytes(payload)
    for source in (folder, folder.parent):  # the batches folder itself, or the folder holding it
        images2, labels2 = data.load_split("train", str(source))
        np.testing.assert_array_equal(images, images2)
        np.testing.assert_array_equal(labels, labels2)


def test_channel_layout_is_rgb_planes():
    raw = np.zeros((1, 3072), np.uint8)
    raw[0, :1024], raw[0, 1024:2048], raw[0, 2048:] = 10, 20, 30  # red, green, blue planes
    raw[0, 1] = 99  # red plane, row 0, column 1
    blob = pickle.dumps({b"data": raw, b"labels": [3]}, protocol=2)
    images, labels = data.parse_batch(blob, "b")
    assert images[0, 0, 0].tolist() == [10, 20, 30] and images[0, 0, 1, 0] == 99 and labels.tolist() == [3]


def test_environment_variable_is_used(fake_archive, monkeypatch):
    monkeypatch.setenv(data.ENV_VAR, str(fake_archive))
    assert data.load_split("test")[0].shape == (N_PER_BATCH, 32, 32, 3)


def test_embedded_sample_is_test_only():
    images, labels = data.load_split("test", data.SAMPLE)
    assert images.shape == (256, 32, 32, 3) and labels.shape == (256,)
    with pytest.raises(MaskvitError, match="test images only"):
        data.load_split("train", data.SAMPLE)


class Exploit:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_hostile_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    Exploit.marker = marker
    blob = pickle.dumps({b"data": Exploit(), b"labels": []}, protocol=2)
    archive = tmp_path / "evil.tar.gz"
    members = cifar_members()
    members["cifar-10-batches-py/test_batch"] = blob
    write_archive(archive, members)
    with pytest.raises(MaskvitError, match=r"test_batch: not a CIFAR-10 batch .*(posix|os|nt)\.system"):
        data.load_split("test", str(archive))
    assert not marker.exists()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: None, "no such file or folder"),
        (lambda p: p.write_bytes(b""), "corrupt or truncated"),
        (lambda p: p.write_bytes(b"\x1f\x8b" + os.urandom(500)), "corrupt or truncated"),
        (lambda p: p.write_text("root:x:0:0:root:/root:/bin/bash\n" * 40), "corrupt or truncated"),
        (lambda p: write_archive(p, {k: v for k, v in cifar_members().items() if "batch_3" not in k}), "no cifar-10-batches-py/data_batch_3"),
        (lambda p: write_archive(p, {**cifar_members(), "../../evil": b"x"}), "points outside the archive"),
        (lambda p: write_archive(p, {**cifar_members(), "/etc/evil": b"x"}), "points outside the archive"),
        (lambda p: write_archive(p, {**cifar_members(), "cifar-10-batches-py/data_batch_2": b"not a pickle"}), "data_batch_2: not a CIFAR-10 batch"),
        (lambda p: write_archive(p, {**cifar_members(), "cifar-10-batches-py/data_batch_2": pickle.dumps({b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}, protocol=2)}), "N x 3072"),
        (lambda p: write_archive(p, {**cifar_members(), "cifar-10-batches-py/data_batch_2": pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, protocol=2)}), "labels must be"),
    ],
    ids=["missing", "empty", "garbage", "text", "batch-missing", "traversal", "absolute", "not-pickle", "bad-shape", "bad-labels"],
)
def test_bad_data_gives_clear_error(tmp_path, make, message):
    path = tmp_path / "data.tar.gz"
    make(path)
    with pytest.raises(MaskvitError, match=message) as error:
        data.load_split("train", str(path))
    assert "\n" not in str(error.value)  # the CLI prints it as one line


def test_truncated_archive(fake_archive):
    blob = fake_archive.read_bytes()
    fake_archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(MaskvitError, match="corrupt or truncated"):
        data.load_split("test", str(fake_archive))


def test_train_pipeline_is_a_function_of_seed_and_epoch():
    images = np.random.default_rng(0).integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    ds, steps = data.train_pipeline(images, 8, "random", 0.5, seed=3)
    assert steps == 6
    batches = [((x.numpy(), m.numpy()), y.numpy()) for (x, m), y in ds.take(3 * steps)]
    (x0, m0), y0 = batches[0]
    assert x0.shape == (8, 32, 32, 3) and m0.shape == (8, 64) and x0.max() <= 1.0
    np.testing.assert_array_equal(x0, y0)
    # Each epoch is a permutation: 48 distinct images out of 50.
    epoch0 = np.concatenate([b[0][0] for b in batches[:steps]]).reshape(48, -1)
    assert len(np.unique(epoch0, axis=0)) == 48
    assert not np.array_equal(batches[0][0][0], batches[steps][0][0])  # reshuffled next epoch
    # A run resumed at epoch 2 sees exactly epoch 2's batches and masks.
    resumed, _ = data.train_pipeline(images, 8, "random", 0.5, seed=3, start_epoch=2)
    for ((x, m), _), ((x2, m2), _) in zip(batches[2 * steps :], resumed.take(steps)):
        np.testing.assert_array_equal(x, x2.numpy())
        np.testing.assert_array_equal(m, m2.numpy())
    other, _ = data.train_pipeline(images, 8, "random", 0.5, seed=4)
    assert not np.array_equal(next(iter(other))[0][0].numpy(), x0)


def test_real_archive_matches_known_values(real_data):
    images, labels = data.load_split("test", real_data)
    assert images.shape == (10_000, 32, 32, 3)
    assert labels[:10].tolist() == [3, 8, 8, 0, 6, 6, 1, 6, 3, 1]
    np.testing.assert_allclose((images / 255.0).mean(axis=(0, 1, 2)), [0.494214, 0.485131, 0.450409], atol=1e-6)
    np.testing.assert_array_equal(images[:256], data.load_split("test", data.SAMPLE)[0])


def test_zoom_crops_are_seeded_zoomed_views_that_leave_order_and_masks_alone():
    # A ramp along x (pixel x holds 8x/255): a crop of side s stays a ramp, its slope s * 8/255 per pixel.
    ramp = np.broadcast_to((np.arange(32) * 8).astype(np.uint8)[None, None, :, None], (48, 32, 32, 3)).copy()
    ramp[:, :, :, 1] = np.arange(48)[:, None, None]  # green tells which image it is
    plain, _ = data.train_pipeline(ramp, 8, "row", 0.5, seed=3)
    zoomed, steps = data.train_pipeline(ramp, 8, "row", 0.5, seed=3, zoom=4)
    slopes = []
    for ((x, m), y), ((xp, mp), _) in zip(zoomed.take(2 * steps), plain.take(2 * steps)):
        x, xp = x.numpy(), xp.numpy()
        np.testing.assert_array_equal(m.numpy(), mp.numpy())  # masks: their own stream
        np.testing.assert_array_equal(x[..., 1], xp[..., 1])  # same images in the same order
        np.testing.assert_array_equal(x, y.numpy())
        red = x[..., 0]
        assert np.ptp(red, axis=1).max() < 1e-6  # still constant down each column
        step = np.diff(red[:, 0, :], axis=1)  # [8, 31]
        assert np.abs(step - step.mean(axis=1, keepdims=True)).max() < 1e-5  # still linear
        slopes.extend(step.mean(axis=1) * 255 / 8)  # = crop side as a fraction of the image
    slopes = np.array(slopes)
    assert slopes.min() > 1 / 4 - 0.01 and slopes.max() < 1 + 0.01
    assert slopes.min() < 0.4 and slopes.max() > 0.7  # sides spread over (1/4, 1]
    # The crops are a function of (seed, step): a resumed run sees the same ones.
    again, _ = data.train_pipeline(ramp, 8, "row", 0.5, seed=3, zoom=4, start_epoch=1)
    for ((x, _), _), ((x2, _), _) in zip(list(zoomed.take(2 * steps))[steps:], again.take(steps)):
        np.testing.assert_array_equal(x.numpy(), x2.numpy())
