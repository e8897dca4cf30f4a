"""tf.distribute: two worker processes on 127.0.0.1 train like one process with the same global
batch, only the chief writes, and a restarted cluster resumes from the chief's checkpoint."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import TINY, tiny_flag
from maskvit import distribute, models, train
from maskvit.errors import MaskvitError

# mae: no dropout, so the two replicas' halves of a batch see exactly what one process sees.
ARGS = ["--recipe", "seed", "--model", "mae", *tiny_flag("mae"), "--epochs", "3", "--batch-size", "32", "--val-size", "40"]
# Relative, on validation losses. All-reduced gradients are summed in another order, and Adam's
# first steps scale each gradient component to about +-lr whatever its size, so rounding-level
# differences in near-zero components grow: measured 0.15% after 5 steps, then shrinking.
TOLERANCE = 5e-3


def free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start_workers(archive, out, tmp_path):
    workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
    procs = []
    for index in range(2):
        cwd = tmp_path / f"cwd{index}"  # anything a worker wrote outside --output would land here
        cwd.mkdir(exist_ok=True)
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
               "TF_CONFIG": json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})}
        cmd = [sys.executable, "-m", "maskvit", "train", *ARGS, "--strategy", "multiworker", "--data", str(archive), "--output", str(out)]
        procs.append(subprocess.Popen(cmd, env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    return procs


def test_two_workers_train_like_one_process_and_resume_from_the_chief(fake_archive, tmp_path):
    reference = train.train(train.TrainConfig(recipe="seed", model="mae", hparams=TINY["mae"], epochs=3, batch_size=32, val_size=40,
                                              data=str(fake_archive), output=str(tmp_path / "ref")))
    out = tmp_path / "run"
    record_path = out / "mae_random50_run.json"
    procs = start_workers(fake_archive, out, tmp_path)
    deadline = time.time() + 300
    while time.time() < deadline:  # kill the whole cluster once the chief has checkpointed an epoch
        if record_path.exists() and json.loads(record_path.read_text()).get("resume", {}).get("epoch", 0) >= 1:
            break
        assert all(p.poll() is None for p in procs), [p.communicate()[1] for p in procs]
        time.sleep(0.02)
    for p in procs:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert "final" not in json.loads(record_path.read_text())

    procs = start_workers(fake_archive, out, tmp_path)
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode == 0, stderr
        assert "resumed an interrupted run" in stdout
    assert "worker done: the chief writes" in results[1][0] and "final model" in results[0][0]

    record = json.loads(record_path.read_text())
    assert record["replicas"] == 2 and record["config"]["batch_size"] == 32
    np.testing.assert_allclose(record["history"]["val_loss"], reference["history"]["val_loss"], rtol=TOLERANCE)
    assert sorted(p.name for p in out.iterdir()) == ["mae_random50_best.keras", "mae_random50_final.keras", "mae_random50_run.json"]
    assert [list((tmp_path / f"cwd{i}").iterdir()) for i in range(2)] == [[], []]
    chief = models.load(out / "mae_random50_final.keras")
    for a, b in zip(chief.get_weights(), models.load(tmp_path / "ref" / "mae_random50_final.keras").get_weights()):
        np.testing.assert_allclose(a, b, rtol=0, atol=5e-3)


def test_bad_distribution_settings_are_one_line_errors(cli, fake_archive, tmp_path, monkeypatch):
    common = ["--epochs", "1", "--data", fake_archive, "--output", tmp_path, "--val-size", "40"]
    code, out, err = cli("train", "--strategy", "ring", *common)
    assert code == 2 and "unknown distribution strategy 'ring'" in err
    monkeypatch.delenv("TF_CONFIG", raising=False)
    code, out, err = cli("train", "--strategy", "multiworker", *common)
    assert code == 2 and "needs TF_CONFIG" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "worker", "index": 3}}')
    code, out, err = cli("train", "--strategy", "multiworker", *common)
    assert code == 2 and "not a valid cluster description" in err


def test_global_batch_must_split_over_replicas_and_sets_the_learning_rate():
    config = train.TrainConfig(recipe="seed", batch_size=512)
    assert train.peak_lr(config) == pytest.approx(1e-3 * 2)  # seed recipe: 1e-3 at batch 128, sqrt rule
    assert train.peak_lr(train.TrainConfig(recipe="fast")) == pytest.approx(4e-3)  # Muon's
    assert train.peak_lr(train.TrainConfig(recipe="fast", optimizer="adamw")) == pytest.approx(2e-3)
    assert distribute.multi_worker(distribute.make("default")) is False
    with pytest.raises(MaskvitError, match="unknown distribution strategy"):
        distribute.make("tpu")


def test_mirrored_strategy_on_the_cpu_trains_like_the_default(fake_archive, tmp_path):
    runs = [train.train(train.TrainConfig(recipe="seed", model="mae", hparams=TINY["mae"], epochs=2, batch_size=32, val_size=40,
                                          data=str(fake_archive), output=str(tmp_path / name), strategy=name)) for name in ("default", "mirrored")]
    assert runs[1]["replicas"] == 1 and runs[1]["chief"]
    np.testing.assert_allclose(runs[1]["history"]["val_loss"], runs[0]["history"]["val_loss"], rtol=1e-5)
