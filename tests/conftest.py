import io
import os
import pickle
import tarfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

N_PER_BATCH = 40  # a tiny stand-in for CIFAR-10's 10,000 rows per batch

# Tiny ViTs for training tests: they check behaviour, not quality, and a model's size sets how
# long its training step takes to trace, most of such a test's time (2-3x less than the presets').
_TINY_VIT = {"dim": 32, "depth": 1, "heads": 2, "mlp_dim": 64}
_TINY_MAE = {**_TINY_VIT, "decoder_dim": 32, "decoder_depth": 1, "decoder_mlp_dim": 64}
TINY = {"seed": _TINY_VIT, "mae": _TINY_MAE, "mae-refine": _TINY_MAE}


def tiny_flag(model: str) -> list[str]:
    """train's --hparams for the tiny model of this preset."""
    return ["--hparams", ",".join(f"{k}={v}" for k, v in TINY[model].items())]


def batch_bytes(rows: int, seed: int) -> bytes:
    """A pickled batch in the CIFAR-10 python layout (bytes keys, uint8 N x 3072 data)."""
    rng = np.random.default_rng(seed)
    # Smooth images, so models have something to learn and metrics are not degenerate.
    base = rng.integers(0, 256, size=(rows, 3, 4, 4)).astype(np.float32)
    images = np.kron(base, np.ones((1, 1, 8, 8))).astype(np.uint8)
    batch = {b"batch_label": b"fake", b"labels": rng.integers(0, 10, rows).tolist(), b"data": images.reshape(rows, 3072),
             b"filenames": [b"x.png"] * rows}
    return pickle.dumps(batch, protocol=2)


def write_archive(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))


def cifar_members(rows: int = N_PER_BATCH) -> dict[str, bytes]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {f"cifar-10-batches-py/{name}": batch_bytes(rows, seed) for seed, name in enumerate(names)}


@pytest.fixture
def fake_archive(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_archive(path, cifar_members())
    return path


@pytest.fixture
def real_data():
    """The real CIFAR-10 archive, as CI provides it through MASKVIT_DATA."""
    path = os.environ.get("MASKVIT_DATA")
    if not path or not os.path.exists(path):
        pytest.skip("set MASKVIT_DATA to the CIFAR-10 archive to run the real-data tests")
    return path


@pytest.fixture
def cli(monkeypatch, capsys, thread_setup_calls):
    """Run the real `maskvit` entry point in-process: returns (exit code, stdout, stderr).
    Inference commands' distribute.one_thread_per_op is only recorded (thread_setup_calls): run
    for real, it would set the threads of the whole test process, and training later in that
    process would differ in the last bit from the same training in a fresh one."""
    import sys

    from maskvit import cli as cli_module

    def run(*args):
        monkeypatch.setattr(sys, "argv", ["maskvit", *map(str, args)])
        with pytest.raises(SystemExit) as exit_info:
            cli_module.main()
        out, err = capsys.readouterr()
        return exit_info.value.code, out, err

    return run


@pytest.fixture
def thread_setup_calls(monkeypatch):
    """Records each call of distribute.one_thread_per_op (made a no-op, so the test process keeps
    TensorFlow's threads): inference commands must ask for it once, before TensorFlow starts."""
    from maskvit import distribute

    calls = []
    monkeypatch.setattr(distribute, "one_thread_per_op", lambda: calls.append(1) or False)
    return calls
