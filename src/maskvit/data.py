"""CIFAR-10 in: the official python archive, its extracted folder, a checked download, or the
embedded sample; out: uint8 arrays and the tf.data pipelines that feed training and evaluation."""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile
import zlib
from pathlib import Path, PurePosixPath

import numpy as np
import tensorflow as tf

from .errors import MaskvitError, reason
from .masking import make_masks

URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
SHA256 = "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"
ENV_VAR = "MASKVIT_DATA"
SAMPLE = "sample"  # --data value naming the test images packaged with maskvit
SAMPLE_PATH = Path(__file__).parent / "assets" / "cifar10_test_sample.npz"
FOLDER = "cifar-10-batches-py"
SPLITS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
ROWS_PER_BATCH = 10_000


class _PlainDataUnpickler(pickle.Unpickler):
    """Builds only what a CIFAR batch holds: dicts, lists, bytes, ints and one numpy array.

    A pickle can name any importable callable; refusing all but numpy's array rebuilders
    (and the codec py2 pickles use for bytes) means a crafted file cannot run code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"it tries to build {module}.{name}, which a data file never needs")
        return super().find_class(module, name)


def parse_batch(raw: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> (images [N,32,32,3] uint8, labels [N] uint8), checked."""
    try:
        batch = _PlainDataUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as e:  # any unpickling failure means the file is not a CIFAR batch
        raise MaskvitError(f"{name}: not a CIFAR-10 batch ({reason(e)})") from None
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise MaskvitError(f"{name}: not a CIFAR-10 batch (no data/labels entries)")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise MaskvitError(f"{name}: data must be a uint8 array of N x 3072, got {getattr(data, 'shape', type(data))}")
    if labels.shape != (data.shape[0],) or labels.size and (labels.min() < 0 or labels.max() > 9):
        raise MaskvitError(f"{name}: labels must be {data.shape[0]} integers in 0..9")
    # Rows are 1024 red, 1024 green, 1024 blue values, each plane row-major.
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.uint8)


def _safe_member_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise MaskvitError(f"archive member {name!r} points outside the archive; refusing it")
    return path


def _read_archive(path: Path, wanted: list[str]) -> dict[str, bytes]:
    """Read the wanted batch files straight from the .tar.gz into memory (nothing is extracted)."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                member_path = _safe_member_name(member.name)
                if member_path.name in wanted and member.isfile():
                    found[member_path.name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise MaskvitError(f"{path}: corrupt or truncated archive ({reason(e)}); download it again") from None
    missing = [name for name in wanted if name not in found]
    if missing:
        raise MaskvitError(f"{path}: archive has no {FOLDER}/{missing[0]}; is it the CIFAR-10 python version?")
    return found


def _read_folder(path: Path, wanted: list[str]) -> dict[str, bytes]:
    folder = path / FOLDER if (path / FOLDER).is_dir() else path
    found = {}
    for name in wanted:
        file = folder / name
        if not file.is_file():
            raise MaskvitError(f"{file}: missing; the folder must hold the CIFAR-10 python batches")
        found[name] = file.read_bytes()
    return found


def download() -> Path:
    """Fetch the official archive into the Keras cache, verifying its sha256."""
    import keras

    try:
        return Path(keras.utils.get_file("cifar-10-python.tar.gz", origin=URL, file_hash=SHA256, hash_algorithm="sha256"))
    except Exception as e:
        raise MaskvitError(
            f"could not download CIFAR-10 from {URL} ({reason(e)}); pass --data PATH or set {ENV_VAR} to a local copy"
        ) from None


def resolve_source(data: str | None) -> str | None:
    """--data wins, then $MASKVIT_DATA; None means: download."""
    return data or os.environ.get(ENV_VAR) or None


def source_label(data: str | None) -> str:
    """What results were computed on, for their records: the data's resolved path, the embedded
    sample, or the official address (when nothing local was named, the data is downloaded)."""
    source = resolve_source(data)
    if source == SAMPLE:
        return SAMPLE
    return str(Path(source).resolve()) if source else URL


def load_split(split: str, data: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images [N,32,32,3] uint8 and labels [N] of 'train' (50,000) or 'test' (10,000)."""
    source = resolve_source(data)
    if source == SAMPLE:
        if split != "test":
            raise MaskvitError("the embedded sample holds test images only; pass --data with the CIFAR-10 archive to train")
        with np.load(SAMPLE_PATH) as sample:
            return sample["images"], sample["labels"]
    path = Path(source) if source else download()
    wanted = SPLITS[split]
    if path.is_dir():
        raw = _read_folder(path, wanted)
    elif path.is_file():
        raw = _read_archive(path, wanted)
    else:
        raise MaskvitError(f"{path}: no such file or folder; pass --data PATH or set {ENV_VAR}")
    parts = [parse_batch(raw[name], name) for name in wanted]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    return images, labels


# Seed streams: each random choice gets its own stream, so changing how masks are drawn never
# changes the image order, and validation/evaluation masks never collide with training ones.
SHUFFLE_STREAM, TRAIN_MASK_STREAM, VAL_MASK_STREAM, EVAL_MASK_STREAM = range(4)
IMPORTANCE_STREAM = -1  # negative: apart from every step * 4 + stream above
ZOOM_STREAM = -2  # zoom crops of training step s use stream ZOOM_STREAM - s: below all the others


def scale(images_u8):
    return tf.cast(images_u8, tf.float32) / 255.0


def zoom_crops(x, zoom: float, seed):
    """Each image of x [B,32,32,3] replaced by a random square crop of side 32/z pixels, z
    log-uniform in [1, zoom], resized back to 32x32 (bilinear): the scene seen closer. A 32x32
    tile of a photograph holds a small part of one object, far smoother at the 4x4-patch scale
    than a whole CIFAR-10 object; a model that saw only whole objects fills smooth regions worse
    than biharmonic inpainting does."""
    b = tf.shape(x)[0]
    u = tf.random.stateless_uniform([b, 3], seed=seed)
    side = tf.exp(-u[:, 0] * math.log(zoom))  # [B] crop side as a fraction of the image, in (1/zoom, 1]
    top, left = u[:, 1] * (1 - side), u[:, 2] * (1 - side)
    # min(): rounding must not push a box past the image, where crop_and_resize fills in zeros.
    boxes = tf.stack([top, left, tf.minimum(top + side, 1.0), tf.minimum(left + side, 1.0)], axis=1)
    return tf.image.crop_and_resize(x, boxes, tf.range(b), [32, 32])


def train_pipeline(images: np.ndarray, batch_size: int, strategy: str, ratio: float, seed: int, start_epoch: int = 0, zoom: float = 1.0):
    """Endless ((images [B,32,32,3] f32, mask [B,64] bool), images) batches; steps per epoch.
    zoom > 1: images are zoom_crops of the training images.

    Epoch e's order and every batch's masks (and crops) are stateless functions of (seed, e,
    step), drawn in the graph, so a run resumed at epoch e sees exactly the batches it would have seen."""
    n = len(images)
    steps = n // batch_size
    if steps == 0:
        raise MaskvitError(f"batch size {batch_size} is larger than the {n} training images; lower --batch-size")
    pixels = tf.constant(images)  # the whole split, uint8, kept in memory once

    def one_epoch(epoch):
        order = tf.argsort(tf.random.stateless_uniform([n], seed=tf.stack([tf.constant(seed, tf.int64), epoch * 4 + SHUFFLE_STREAM])))
        batches = tf.reshape(order[: steps * batch_size], [steps, batch_size])
        return tf.data.Dataset.from_tensor_slices(batches).enumerate().map(
            lambda step, idx: make_batch(epoch * steps + step, idx), num_parallel_calls=tf.data.AUTOTUNE
        )

    def make_batch(global_step, idx):
        mask_seed = tf.stack([tf.constant(seed, tf.int64), global_step * 4 + TRAIN_MASK_STREAM])
        x = scale(tf.gather(pixels, idx))
        if zoom > 1:
            x = zoom_crops(x, zoom, tf.stack([tf.constant(seed, tf.int64), ZOOM_STREAM - global_step]))
        return (x, make_masks(strategy, ratio, batch_size, mask_seed)), x

    ds = tf.data.Dataset.range(start_epoch, 2**31).flat_map(one_epoch)
    return ds.prefetch(tf.data.AUTOTUNE), steps


def eval_pipeline(images: np.ndarray, masks, batch_size: int):
    """Fixed ((images, mask), images) batches in order, for validation and evaluation."""
    ds = tf.data.Dataset.from_tensor_slices((images, masks)).batch(batch_size)
    return ds.map(lambda im, m: ((scale(im), m), scale(im))).prefetch(tf.data.AUTOTUNE)


EVAL_BATCH = 500


def fixed_masks(strategy: str, ratio: float, n: int, seed: int, stream: int = EVAL_MASK_STREAM) -> np.ndarray:
    """The masks [n,64] every model in one comparison sees: a function of (strategy, ratio, n, seed).
    "mixed" masks are drawn per EVAL_BATCH images, so each evaluation batch hides one count."""
    if strategy != "mixed":
        return make_masks(strategy, ratio, n, [seed, stream]).numpy()
    chunks = [make_masks(strategy, ratio, min(EVAL_BATCH, n - i), [seed, stream + 4 * (i // EVAL_BATCH + 1)]) for i in range(0, n, EVAL_BATCH)]
    return np.concatenate([c.numpy() for c in chunks])
