"""Interrupted training resumes exactly; saves are atomic; a non-finite loss keeps the last good model."""

import errno
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY, tiny_flag
from maskvit import models, train
from maskvit.errors import MaskvitError
from maskvit.files import atomic_path


def config(archive, out, **kw):
    kw = {"recipe": "seed", "epochs": 4, "batch_size": 32, "val_size": 40, "data": str(archive), "output": str(out), **kw}
    return train.TrainConfig(**{"hparams": TINY[kw.get("model", "seed")], **kw})


def weights(path):
    return models.load(path).get_weights()


def test_killed_run_resumes_to_identical_weights(fake_archive, tmp_path):
    # 8 epochs: a tiny model's epoch is short, and the kill must come before the last one ends.
    reference = train.train(config(fake_archive, tmp_path / "ref", epochs=8))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "maskvit", "train", "--recipe", "seed", "--epochs", "8", "--batch-size", "32", "--val-size", "40",
           *tiny_flag("seed"), "--data", str(fake_archive), "--output", str(out)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    record_path = out / "seed_random50_run.json"
    deadline = time.time() + 300
    while time.time() < deadline:  # kill it as soon as one epoch is checkpointed
        if record_path.exists() and json.loads(record_path.read_text()).get("resume", {}).get("epoch", 0) >= 1:
            break
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed = json.loads(record_path.read_text())
    assert "final" not in killed and 1 <= killed["resume"]["epoch"] < 8
    assert not (out / "seed_random50_final.keras").exists()

    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resumed an interrupted run" in done.stdout
    record = json.loads(record_path.read_text())
    assert record["history"]["val_loss"] == reference["history"]["val_loss"]
    assert record["best"]["epoch"] == reference["best"]["epoch"]
    for a, b in zip(weights(out / "seed_random50_final.keras"), weights(tmp_path / "ref" / "seed_random50_final.keras")):
        np.testing.assert_array_equal(a, b)
    assert not list(out.glob("*resume*")) and not list(out.glob(".*tmp*"))


def test_other_settings_do_not_resume_silently(fake_archive, tmp_path):
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train.train(config(fake_archive, tmp_path), progress=Interrupt())
    with pytest.raises(MaskvitError, match="unfinished run .* other settings"):
        train.train(config(fake_archive, tmp_path, epochs=6))
    record = train.train(config(fake_archive, tmp_path, epochs=2, resume=False))  # --no-resume starts over
    assert "resumed_at_epochs" not in record and len(record["history"]["loss"]) == 2

    # The run is now finished: training again under its name, even with its settings, replaces
    # nothing unless asked to (a slip of --epochs 1 must not overwrite an hour's best model).
    best = (tmp_path / "seed_random50_best.keras").read_bytes()
    for epochs in (2, 1):
        with pytest.raises(MaskvitError, match="already holds a finished run 'seed_random50'.*--no-resume"):
            train.train(config(fake_archive, tmp_path, epochs=epochs))
    assert (tmp_path / "seed_random50_best.keras").read_bytes() == best
    record = train.train(config(fake_archive, tmp_path, epochs=1, resume=False))
    assert len(record["history"]["loss"]) == 1 and json.loads((tmp_path / "seed_random50_run.json").read_text())["history"] == record["history"]


def test_failed_save_keeps_previous_file(tmp_path):
    path = tmp_path / "best.keras"
    models.build("mae", depth=1, decoder_depth=1).save(path)
    before = path.read_bytes()
    with pytest.raises(MaskvitError, match="could not write .*previous file"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(b"half a model")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert path.read_bytes() == before and isinstance(models.load(path), models.MAE)
    assert [p.name for p in tmp_path.iterdir()] == ["best.keras"]


def test_non_finite_loss_stops_and_keeps_last_good_model(fake_archive, tmp_path, monkeypatch):
    original = models.MaskedModel.compute_loss

    def poisoned(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = original(self, x, y, y_pred, sample_weight, training)
        return tf.where(self.optimizer.iterations >= 7, tf.constant(float("nan")), loss)  # epoch 2 of 5 steps

    monkeypatch.setattr(models.MaskedModel, "compute_loss", poisoned)
    with pytest.raises(MaskvitError, match="non-finite loss at epoch 2.*seed_random50_best.keras"):
        train.train(config(fake_archive, tmp_path))
    record = json.loads((tmp_path / "seed_random50_run.json").read_text())
    assert record["best"]["epoch"] == 1 and "final" not in record
    assert all(np.isfinite(w).all() for w in weights(tmp_path / "seed_random50_best.keras"))
    with pytest.raises(MaskvitError, match="already holds a stopped run"):  # its last good model is kept
        train.train(config(fake_archive, tmp_path))


def test_importance_muon_bf16_training_resumes_to_identical_weights(fake_archive, tmp_path):
    """The fast recipe (bf16) with --optimizer muon and importance masks: the masks are ranked in
    the step from stateless probes, the resume checkpoint carries Muon's state, and the resumed
    model computes in bf16 again (it once continued in float32), so a resumed run ends where an
    uninterrupted one does. An unfinished Muon run is not resumed as an AdamW one."""
    class Interrupt(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            if epoch == 1:
                raise KeyboardInterrupt

    settings = dict(recipe="fast", model="mae", optimizer="muon", mask="importance", ratio=0.3, epochs=2)
    reference = train.train(config(fake_archive, tmp_path / "ref", **settings))
    assert reference["lr"] == pytest.approx(train.RECIPES["fast"]["muon_lr"] * (32 / 256) ** 0.5)
    with pytest.raises(KeyboardInterrupt):
        train.train(config(fake_archive, tmp_path / "run", **settings), progress=Interrupt())
    assert isinstance(models.load(next((tmp_path / "run").glob("*resume*")), compile=True).optimizer, keras.optimizers.Muon)
    with pytest.raises(MaskvitError, match="other settings"):
        train.train(config(fake_archive, tmp_path / "run", **{**settings, "optimizer": "adamw"}))
    resumed = train.train(config(fake_archive, tmp_path / "run", **settings))
    assert resumed["resumed_at_epochs"] == [1] and resumed["history"]["val_loss"] == reference["history"]["val_loss"]
    for a, b in zip(weights(tmp_path / "run" / "mae_importance30_final.keras"), weights(tmp_path / "ref" / "mae_importance30_final.keras")):
        np.testing.assert_array_equal(a, b)


def test_optimizer_must_belong_to_the_recipe():
    assert train.TrainConfig().optimizer == "muon" and train.TrainConfig(recipe="seed").optimizer == "adam"
    for recipe, optimizer in (("seed", "muon"), ("fast", "adam"), ("fast", "sgd")):
        with pytest.raises(MaskvitError, match=f"unknown optimizer '{optimizer}' for the {recipe} recipe"):
            train.TrainConfig(recipe=recipe, optimizer=optimizer).check()
    # A run record written before --optimizer and --hparams existed still resumes: as AdamW (the
    # fast recipe's optimizer then), at the preset's size.
    old = {k: v for k, v in asdict(train.TrainConfig()).items() if k not in ("optimizer", "hparams")}
    assert train._same_run(old, asdict(train.TrainConfig(optimizer="adamw"))) and not train._same_run(old, asdict(train.TrainConfig()))
    assert not train._same_run(old, asdict(train.TrainConfig(optimizer="adamw", hparams={"depth": 2})))


def test_init_starts_from_the_given_weights_and_refuses_another_model(fake_archive, tmp_path):
    source = tmp_path / "source.keras"
    models.build("mae", **TINY["mae"]).save(source)

    class FirstWeights(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.weights = self.model.get_weights()

    seen = FirstWeights()
    record = train.train(config(fake_archive, tmp_path, model="mae", epochs=1, init=str(source), zoom=2.0), progress=seen)
    for a, b in zip(seen.weights, weights(source), strict=True):
        np.testing.assert_array_equal(a, b)
    assert record["config"]["init"] == str(source) and record["config"]["zoom"] == 2.0
    partial = config(fake_archive, tmp_path / "a", model="mae", epochs=1, init=str(source), hparams={**TINY["mae"], "decode_visible": False})
    train.train(partial, progress=seen)
    for a, b in zip(seen.weights, weights(source), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(MaskvitError, match="holds model mae; this run trains model seed"):
        train.train(config(fake_archive, tmp_path / "b", init=str(source)))
    models.build("mae", **{**TINY["mae"], "decoder_depth": 2}).save(tmp_path / "small.keras")
    with pytest.raises(MaskvitError, match="holds model mae of another size .decoder_depth 2"):
        train.train(config(fake_archive, tmp_path / "c", model="mae", init=str(tmp_path / "small.keras")))
