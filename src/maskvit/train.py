"""Training: a config dataclass, two recipes, and Keras `fit` with callbacks that save the best
and final models atomically. The trainer knows nothing about a model beyond the Keras API."""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np

from . import data, masking, models
from .errors import MaskvitError
from .files import atomic_path, ensure_folder, write_json

# The recipes. "seed" is the reference notebook's; "fast" is the short-budget recipe (issue 5).
RECIPES = {
    "seed": dict(optimizer="adam", lr=1e-3, plateau_factor=0.5, plateau_patience=3, min_lr=1e-4),
    "fast": dict(optimizer="adamw", lr=2e-3, weight_decay=0.05, warmup_epochs=1, final_lr_fraction=0.1),
}


@dataclass
class TrainConfig:
    model: str = "seed"  # seed | mae
    mask: str = "random"  # masking strategy used in training
    ratio: float = 0.5  # fraction of patches hidden
    epochs: int = 20
    batch_size: int = 128
    recipe: str = "seed"  # seed | fast
    val_size: int = 5000  # the last N training images; never the test set
    limit: int | None = None  # train on the first N training images only
    seed: int = 0
    data: str | None = None  # archive or folder; None: $MASKVIT_DATA, else download
    output: str = "saved_models"
    name: str | None = None  # file prefix; default <model>_<mask><ratio%>

    def check(self) -> None:
        masking.check(self.mask, self.ratio)
        if self.model not in models.MODELS:
            raise MaskvitError(f"unknown model {self.model!r}; choose one of {', '.join(models.MODELS)}")
        if self.recipe not in RECIPES:
            raise MaskvitError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        for field, low in (("epochs", 1), ("batch_size", 1), ("val_size", 1)):
            if getattr(self, field) < low:
                raise MaskvitError(f"--{field.replace('_', '-')} must be at least {low}, got {getattr(self, field)}")
        if self.limit is not None and self.limit < 1:
            raise MaskvitError(f"--limit must be at least 1, got {self.limit}")

    @property
    def prefix(self) -> str:
        return self.name or f"{self.model}_{self.mask}{round(self.ratio * 100)}"


def split(images: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): validation is the last val_size images, whatever --limit says."""
    if config.val_size >= len(images):
        raise MaskvitError(f"--val-size {config.val_size} leaves no training images out of {len(images)}")
    train, val = images[: -config.val_size], images[-config.val_size :]
    return (train[: config.limit] if config.limit else train), val


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    r = RECIPES[config.recipe]
    if r["optimizer"] == "adam":
        return keras.optimizers.Adam(r["lr"])
    total = config.epochs * steps_per_epoch
    warmup = min(int(r["warmup_epochs"] * steps_per_epoch), total // 2)
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=max(total - warmup, 1), alpha=r["final_lr_fraction"], warmup_target=r["lr"], warmup_steps=warmup
    )
    return keras.optimizers.AdamW(schedule, weight_decay=r["weight_decay"])


def current_lr(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


class Checkpoints(keras.callbacks.Callback):
    """Keeps the run's history and writes best/final models and the run JSON, all atomically."""

    def __init__(self, folder: Path, prefix: str, record: dict, images_per_epoch: int):
        super().__init__()
        self.best_path = folder / f"{prefix}_best.keras"
        self.final_path = folder / f"{prefix}_final.keras"
        self.json_path = folder / f"{prefix}_run.json"
        self.record = record
        self.images_per_epoch = images_per_epoch
        self.history = {"loss": [], "val_loss": [], "lr": [], "seconds": [], "train_seconds": []}
        self.best = math.inf

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = time.perf_counter()
        self.t_validation = None

    def on_test_begin(self, logs=None):  # validation starts: the training part of the epoch is over
        self.t_validation = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        seconds, train_seconds = now - self.t0, (self.t_validation or now) - self.t0
        lr = current_lr(self.model.optimizer)
        for key, value in (("loss", logs["loss"]), ("val_loss", logs["val_loss"]), ("lr", lr), ("seconds", seconds), ("train_seconds", train_seconds)):
            self.history[key].append(float(value))
        if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
            self.model.stop_training = True
            self.record["stopped"] = f"non-finite loss at epoch {epoch + 1}"
        elif logs["val_loss"] < self.best:
            self.best = logs["val_loss"]
            self.save(self.best_path)
            self.record["best"] = {"epoch": epoch + 1, "val_loss": self.best, "path": str(self.best_path)}
        self.write_record()

    def on_train_end(self, logs=None):
        if "stopped" not in self.record:
            self.save(self.final_path)
            self.record["final"] = str(self.final_path)
        self.record["wall_seconds"] = sum(self.history["seconds"])
        # Throughput of the training steps alone, first epoch (graph tracing) excluded when there are more.
        steady = self.history["train_seconds"][1:] or self.history["train_seconds"]
        self.record["train_images_per_second"] = self.images_per_epoch * len(steady) / max(sum(steady), 1e-9)
        self.write_record()

    def save(self, path: Path) -> None:
        with atomic_path(path) as tmp:
            self.model.save(tmp)

    def write_record(self) -> None:
        write_json(self.json_path, {**self.record, "history": self.history})


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops within the step a loss turns NaN/inf, before bad weights reach a checkpoint."""

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(float(logs["loss"])):
            self.model.stop_training = True


def train(config: TrainConfig, progress: keras.callbacks.Callback | None = None) -> dict:
    """Train one model; returns the run record (also written as <prefix>_run.json)."""
    config.check()
    folder = ensure_folder(config.output)
    images, _ = data.load_split("train", config.data)
    train_images, val_images = split(images, config)
    keras.utils.set_random_seed(config.seed)

    ds, steps = data.train_pipeline(train_images, config.batch_size, config.mask, config.ratio, config.seed)
    val_masks = data.fixed_masks(config.mask, config.ratio, len(val_images), config.seed, data.VAL_MASK_STREAM)
    val_ds = data.eval_pipeline(val_images, val_masks, 500)
    model = models.build(config.model)
    model.compile(optimizer=make_optimizer(config, steps))

    record = {
        "config": asdict(config),
        "effective_ratio": masking.effective_ratio(config.mask, config.ratio),
        "recipe": RECIPES[config.recipe],
        "n_train": len(train_images),
        "n_val": len(val_images),
        "parameters": model.count_params(),
        "hardware": f"{platform.machine()}, {platform.processor() or 'cpu'}, keras {keras.__version__}",
    }
    checkpoints = Checkpoints(folder, config.prefix, record, steps * config.batch_size)
    callbacks = [StopOnNonFinite(), checkpoints]
    if config.recipe == "seed":
        r = RECIPES["seed"]
        callbacks.insert(0, keras.callbacks.ReduceLROnPlateau("val_loss", factor=r["plateau_factor"], patience=r["plateau_patience"], min_lr=r["min_lr"], verbose=0))
    if progress is not None:
        callbacks.append(progress)
    model.fit(ds, epochs=config.epochs, steps_per_epoch=steps, validation_data=val_ds, callbacks=callbacks, verbose=0, shuffle=False)
    if "stopped" in record:
        best = record.get("best", {}).get("path", "none yet")
        raise MaskvitError(f"training stopped: {record['stopped']}; the last good model is {best}")
    return record
