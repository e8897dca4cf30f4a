"""Training: a config dataclass, two recipes, and Keras `fit` with callbacks that save the best
and final models atomically. The trainer knows nothing about a model beyond the Keras API."""

from __future__ import annotations

import json
import math
import os
import platform
import time
import weakref
from dataclasses import asdict, dataclass, field
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import data, distribute, importance, masking, models
from .errors import MaskvitError, reason
from .files import atomic_path, ensure_folder, write_json

# The recipes, with the model, batch size and precision each uses unless told otherwise. "seed" is
# the reference notebook's. "fast", the default, trained the shipped models and the fastest runs
# measured on this CPU: bf16 mixed precision (+10% images/s for the mae, benchmarks/bench.py)
# without XLA (jit_compile, which Keras leaves off on a CPU: the shipped model's size trained at 554
# images/s in bf16 against 841 without it, after 3.5 min compiling), Muon (below; AdamW before it),
# a linear warm-up, then cosine decay to 10% of the peak rate rather than to zero (a prototype lost
# ~0.9 dB decaying to zero in a short run; here zero gave -0.01 dB in 4 epochs and +0.00 to +0.03 in
# a quarter-hour stage 1: the model card's "Decaying the learning rate to zero"; the shipped models'
# commands keep 10%). Its beta_2 of 0.95 (MAE's) and log-mse loss each gained at random 50% in
# 7-epoch runs from scratch (+0.01 and +0.04 dB), and together +0.15 to +0.29 dB at 50% masks after
# 36 epochs of mae on mixed masks (the AdamW stage 1 against its predecessor). Its model is
# mae-refine: ~10% fewer images/s than the plain mae, but it starts from the biharmonic fill and
# stays ahead (random 50%, mixed-mask training: 22.3-22.5 dB after 3 epochs against the mae's
# 19.2-19.7 after 4).
# --optimizer muon (fast recipe): Keras' Muon, the orthogonalised momentum update, on the
# dense kernels (MLPs, patch and fill projections, head); Adam-style updates, with the recipe's
# beta_2 and weight decay, on the rest (biases, norms, embeddings, the 3-D attention kernels).
# In 3-epoch runs from scratch (mae-refine, random 50%, full test set), against AdamW's
# 22.41 / 22.49 / 22.55 dB after each epoch: 22.42 / 22.54 / 22.60 at AdamW's peak rate, 22.45 /
# 22.61 / 22.71 at twice it (muon_lr). The default since a 16-epoch stage 2 from the AdamW
# stage 1 scored +0.07 to +0.22 dB above AdamW's stage 2 in every cell of the test grid, SSIM
# higher in each; both stages with Muon (the zoomed 4-block pair, maskvit_refine_zoom.keras) +0.15 to +0.42 dB.
RECIPES = {
    "seed": dict(model="seed", batch_size=128, precision="float32", loss="mse", optimizer="adam", lr=1e-3,
                 plateau_factor=0.5, plateau_patience=3, min_lr=1e-4),
    "fast": dict(model="mae-refine", batch_size=256, precision="bfloat16", loss="log-mse", optimizer="muon", lr=2e-3,
                 muon_lr=4e-3, beta_2=0.95, weight_decay=0.05, warmup_epochs=1, final_lr_fraction=0.1),
}
OPTIMIZERS = {"seed": ("adam",), "fast": ("muon", "adamw")}
BEFORE_OPTIMIZERS = {"seed": "adam", "fast": "adamw"}  # what runs recorded before --optimizer existed trained with


@dataclass
class TrainConfig:
    model: str | None = None  # one of models.MODELS; None: the recipe's
    mask: str = "random"  # masking strategy used in training
    ratio: float = 0.5  # fraction of patches hidden
    epochs: int = 20
    batch_size: int | None = None  # None: the recipe's
    recipe: str = "fast"  # fast | seed
    val_size: int = 5000  # the last N training images; never the test set
    limit: int | None = None  # train on the first N training images only
    seed: int = 0
    data: str | None = None  # archive or folder; None: $MASKVIT_DATA, else download
    output: str = "saved_models"
    name: str | None = None  # file prefix; default <model>_<mask><ratio%>
    resume: bool = True  # continue an interrupted run of the same config in the same folder
    precision: str | None = None  # float32 | bfloat16 (mixed: bf16 compute, fp32 weights); None: the recipe's
    loss: str | None = None  # mse | log-mse (see models.MaskedModel.loss_kind); None: the recipe's
    optimizer: str | None = None  # seed: adam; fast: muon | adamw; None: the recipe's
    scorer: str | None = None  # importance masks: model file that ranks patches; None: the model being trained
    strategy: str = "default"  # default | mirrored (local devices) | multiworker (TF_CONFIG); batch_size is global
    zoom: float = 1.0  # > 1: train on random crops of side 32/z px, z log-uniform in [1, zoom], resized to 32x32
    init: str | None = None  # start from this model file's weights (same model and size, or one it extends) instead of random ones
    hparams: dict = field(default_factory=dict)  # the model's hyper-parameters that differ from its preset's, e.g. {"depth": 2}

    def __post_init__(self):
        for key in ("model", "batch_size", "precision", "loss", "optimizer"):
            if getattr(self, key) is None and self.recipe in RECIPES:
                setattr(self, key, RECIPES[self.recipe][key])

    def check(self) -> None:
        if self.recipe not in RECIPES:
            raise MaskvitError(f"unknown recipe {self.recipe!r}; choose one of {', '.join(RECIPES)}")
        masking.check(self.mask, self.ratio)
        if self.scorer is not None:
            masking.check_scorer([self.mask])
        models.check_hparams(self.model, self.hparams)  # the model's name too
        if self.strategy not in distribute.STRATEGIES:
            raise MaskvitError(f"unknown distribution strategy {self.strategy!r}; choose one of {', '.join(distribute.STRATEGIES)}")
        if self.loss not in models.LOSSES:
            raise MaskvitError(f"unknown loss {self.loss!r}; choose one of {', '.join(models.LOSSES)}")
        if self.optimizer not in OPTIMIZERS[self.recipe]:
            raise MaskvitError(f"unknown optimizer {self.optimizer!r} for the {self.recipe} recipe; choose {' or '.join(OPTIMIZERS[self.recipe])}")
        if self.precision not in ("float32", "bfloat16"):
            raise MaskvitError(f"unknown precision {self.precision!r}; choose float32 or bfloat16")
        for key, low in (("epochs", 1), ("batch_size", 1), ("val_size", 1)):
            if getattr(self, key) < low:
                raise MaskvitError(f"--{key.replace('_', '-')} must be at least {low}, got {getattr(self, key)}")
        if not (1 <= self.zoom <= 32):
            raise MaskvitError(f"--zoom must be between 1 (whole images) and 32 (one pixel per crop), got {self.zoom}")
        if self.init is not None and not Path(self.init).is_file():
            raise MaskvitError(f"--init {self.init}: no such model file")
        if self.limit is not None and self.limit < 1:
            raise MaskvitError(f"--limit must be at least 1, got {self.limit}")
        if self.name is not None and (not self.name or Path(self.name).name != self.name or self.name.startswith(".")):
            raise MaskvitError(f"--name must be a plain file prefix, got {self.name!r}; use --output for the folder")

    @property
    def prefix(self) -> str:
        return self.name or f"{self.model}_{self.mask}{round(self.ratio * 100)}"


def split(images: np.ndarray, config: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation): validation is the last val_size images, whatever --limit says."""
    if config.val_size >= len(images):
        raise MaskvitError(f"--val-size {config.val_size} leaves no training images out of {len(images)}")
    train, val = images[: -config.val_size], images[-config.val_size :]
    return (train[: config.limit] if config.limit else train), val


def peak_lr(config: TrainConfig) -> float:
    """The recipe's rate, scaled by the square root of (global batch / the recipe's batch): the
    rule for Adam-type optimizers (Malladi et al., 2022), so a larger global batch -- more
    replicas or workers -- trains with a proportionally larger rate only in the square root."""
    r = RECIPES[config.recipe]
    return r["muon_lr" if config.optimizer == "muon" else "lr"] * math.sqrt(config.batch_size / r["batch_size"])


@keras.saving.register_keras_serializable(package="maskvit")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """A linear warm-up from 0 to `peak` over `warmup_steps`, then a cosine decay to
    `final_fraction` * peak over `decay_steps`: the rates of Keras' CosineDecay(0.0, decay_steps,
    final_fraction, warmup_target=peak, warmup_steps=warmup_steps) (by the same float32 arithmetic,
    though in a graph TensorFlow may round a rate differently in its last bit), but cheaper to
    trace. AdamW asks for its rate once per variable for weight decay, and CosineDecay makes each
    rate a cond: ~110 conds in a mae's training step. A 2-epoch run on 200 images took 25 s with
    them and 14 s with this schedule, the difference in tracing and optimising the step's graph.
    So the phases are chosen by a select, and the rate is computed once per graph and step."""

    def __init__(self, peak: float, warmup_steps: int, decay_steps: int, final_fraction: float):
        self.peak, self.warmup_steps, self.decay_steps, self.final_fraction = peak, warmup_steps, decay_steps, final_fraction
        self._traced = weakref.WeakKeyDictionary()  # graph -> [(step, rate)]

    def __call__(self, step):
        if tf.executing_eagerly():
            return self.rate(step)
        # Within one graph, every read of the step comes before the optimizer increments it.
        seen = self._traced.setdefault(tf.compat.v1.get_default_graph(), [])
        for known, rate in seen:
            if known is step:
                return rate
        seen.append((step, self.rate(step)))
        return seen[-1][1]

    def rate(self, step):
        warmup, total = float(self.warmup_steps), float(self.warmup_steps + self.decay_steps)
        step = tf.minimum(tf.cast(step, tf.float32), total)
        rising = self.peak * (step / max(warmup, 1.0))
        cosine = 0.5 * (1.0 + tf.cos(math.pi * ((step - warmup) / float(self.decay_steps))))
        falling = self.peak * ((1 - self.final_fraction) * cosine + self.final_fraction)
        return tf.where(step < warmup, rising, falling)

    def get_config(self) -> dict:
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "decay_steps": self.decay_steps, "final_fraction": self.final_fraction}


def make_optimizer(config: TrainConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
    r, lr = RECIPES[config.recipe], peak_lr(config)
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    total = config.epochs * steps_per_epoch
    warmup = min(int(r["warmup_epochs"] * steps_per_epoch), total // 2)
    schedule = WarmupCosine(lr, warmup, max(total - warmup, 1), r["final_lr_fraction"])
    if config.optimizer == "muon":
        return keras.optimizers.Muon(schedule, adam_beta_2=r["beta_2"], weight_decay=r["weight_decay"], adam_weight_decay=r["weight_decay"])
    return keras.optimizers.AdamW(schedule, beta_2=r["beta_2"], weight_decay=r["weight_decay"])


def current_lr(optimizer) -> float:
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def _seed_generators(model) -> list:
    return [g for layer in model._flatten_layers() for g in getattr(layer, "_seed_generators", [])]


def rng_state(model) -> list:
    """Dropout's random-stream positions. Keras keeps them out of .keras files, yet a resumed
    run needs them to drop the same units as an uninterrupted one."""
    return [g.state.numpy().tolist() for g in _seed_generators(model)]


def set_rng_state(model, states: list) -> None:
    for generator, state in zip(_seed_generators(model), states, strict=True):
        generator.state.assign(state)


class Plateau(keras.callbacks.ReduceLROnPlateau):
    """ReduceLROnPlateau whose counters survive a resume (Keras resets them at train start)."""

    def __init__(self, restored: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.restored = restored

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        for key, value in (self.restored or {}).items():
            setattr(self, key, value)

    def state(self) -> dict:
        return {"wait": self.wait, "best": float(self.best), "cooldown_counter": self.cooldown_counter}


class Checkpoints(keras.callbacks.Callback):
    """Keeps the run's history and writes, all atomically: the best and final models, the run
    JSON, and after every epoch a resume checkpoint (model + optimizer state) with the JSON
    naming it, so a run killed at any moment can continue exactly where its last epoch ended."""

    def __init__(self, folder: Path, prefix: str, record: dict, images_per_epoch: int, plateau: Plateau | None, write: bool = True):
        super().__init__()
        self.write = write  # False on all but the chief of a multi-worker run: same decisions, no files
        self.folder, self.prefix = folder, prefix
        self.best_path = folder / f"{prefix}_best.keras"
        self.final_path = folder / f"{prefix}_final.keras"
        self.json_path = folder / f"{prefix}_run.json"
        self.record = record
        self.images_per_epoch = images_per_epoch
        self.plateau = plateau
        self.history = record.pop("history", None) or {k: [] for k in ("loss", "val_loss", "lr", "seconds", "train_seconds")}
        self.best = record.get("best", {}).get("val_loss", math.inf)

    def on_epoch_begin(self, epoch, logs=None):
        self.t0, self.t_validation = time.perf_counter(), None
        self.lr = current_lr(self.model.optimizer)  # the rate this epoch trains with

    def on_test_begin(self, logs=None):  # validation starts: the training part of the epoch is over
        self.t_validation = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        seconds, train_seconds = now - self.t0, (self.t_validation or now) - self.t0
        for key, value in (("loss", logs["loss"]), ("val_loss", logs["val_loss"]), ("lr", self.lr), ("seconds", seconds), ("train_seconds", train_seconds)):
            self.history[key].append(float(value))
        if not (math.isfinite(logs["loss"]) and math.isfinite(logs["val_loss"])):
            self.model.stop_training = True
            self.record["stopped"] = f"non-finite loss at epoch {epoch + 1}"
            self.write_record()
            return
        if logs["val_loss"] < self.best:
            self.best = logs["val_loss"]
            self.save(self.best_path)
            self.record["best"] = {"epoch": epoch + 1, "val_loss": self.best, "path": str(self.best_path)}
        resume_path = self.folder / f"{self.prefix}_resume_e{epoch + 1}.keras"
        self.save(resume_path)
        self.record["resume"] = {"epoch": epoch + 1, "path": str(resume_path), "rng": rng_state(self.model),
                                 "plateau": self.plateau.state() if self.plateau else None}
        self.write_record()  # only now does the run point at the new checkpoint
        self.remove_old_resume_files(keep=resume_path)

    def on_train_end(self, logs=None):
        if "stopped" in self.record:
            return
        self.save(self.final_path)
        self.record["final"] = str(self.final_path)
        self.record.pop("resume", None)
        self.record["wall_seconds"] = sum(self.history["seconds"])
        # Throughput of the training steps alone; the first epoch (graph tracing) is left out when there are more.
        steady = self.history["train_seconds"][1:] or self.history["train_seconds"]
        self.record["train_images_per_second"] = self.images_per_epoch * len(steady) / max(sum(steady), 1e-9)
        self.write_record()
        self.remove_old_resume_files(keep=None)

    def remove_old_resume_files(self, keep: Path | None) -> None:
        if not self.write:
            return
        for old in self.folder.glob(f"{self.prefix}_resume_e*.keras"):
            if old != keep:
                old.unlink(missing_ok=True)

    def save(self, path: Path) -> None:
        if not self.write:
            return
        with atomic_path(path) as tmp:
            self.model.save(tmp)

    def write_record(self) -> None:
        if self.write:
            write_json(self.json_path, {**self.record, "history": self.history})


class StopOnNonFinite(keras.callbacks.Callback):
    """Stops within the step a loss turns NaN/inf, before bad weights reach a checkpoint."""

    def on_train_batch_end(self, batch, logs=None):
        if logs and not math.isfinite(float(logs["loss"])):
            self.model.stop_training = True


def start_from(model, path: str) -> None:
    """Copy the weights of the model file at path into model: the same model, or one that extends
    it (mae-refine from mae), whose added layers keep their initial weights."""
    source = models.load(path)
    names = {cls: name for name, cls in models.MODELS.items()}
    if not isinstance(model, type(source)):
        raise MaskvitError(f"--init {path}: holds model {names[type(source)]}; this run trains model {names[type(model)]} (--model)")
    other = ", ".join(f"{k} {v}" for k, v in source.hparams.items() if k not in model.WEIGHTLESS_HPARAMS and model.hparams.get(k) != v)
    if other:
        raise MaskvitError(f"--init {path}: holds model {names[type(source)]} of another size ({other})")
    layers = {layer.name: layer for layer in model._flatten_layers(include_self=False, recursive=False)}
    for layer in source._flatten_layers(include_self=False, recursive=False):
        if layer.weights:
            layers[layer.name].set_weights(layer.get_weights())


def _same_run(a: dict, b: dict) -> bool:
    ignore = {"data", "output", "resume", "strategy"}  # where things live and run does not change the run
    a = {"optimizer": BEFORE_OPTIMIZERS.get(a.get("recipe")), "hparams": {}, **a}  # records from before these fields
    return {k: v for k, v in a.items() if k not in ignore} == {k: v for k, v in b.items() if k not in ignore}


def unfinished_run(folder: Path, config: TrainConfig) -> dict | None:
    """The record of an interrupted run of this config in folder, if there is one to resume.
    A finished or stopped run there is refused: its models are not replaced unasked."""
    path = folder / f"{config.prefix}_run.json"
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise MaskvitError(f"{path}: unreadable run record ({reason(e)}); delete it or pass --no-resume") from None
    if "final" in record or "stopped" in record:
        raise MaskvitError(f"{folder} already holds a {'finished' if 'final' in record else 'stopped'} run '{config.prefix}'; "
                           "choose another --name or --output, or pass --no-resume to train again and replace its files")
    if "resume" not in record:
        return None
    if not _same_run(record["config"], asdict(config)):
        raise MaskvitError(f"{folder} holds an unfinished run '{config.prefix}' with other settings; "
                           "pass --no-resume to start over, or choose another --name or --output")
    return record


def train(config: TrainConfig, progress: keras.callbacks.Callback | None = None) -> dict:
    """Train one model, continuing an interrupted run of the same config unless config.resume is
    False; returns the run record (the chief also writes it as <prefix>_run.json)."""
    config.check()
    strategy = distribute.make(config.strategy)  # first: multi-worker set-up must precede other TensorFlow work
    chief, replicas = distribute.is_chief(strategy), strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise MaskvitError(f"--batch-size {config.batch_size} (global) must split evenly over {replicas} replicas")
    folder = ensure_folder(config.output) if chief else Path(config.output)  # workers read the chief's files
    previous = unfinished_run(folder, config) if config.resume else None
    images, _ = data.load_split("train", config.data)
    train_images, val_images = split(images, config)
    keras.utils.set_random_seed(config.seed)

    start = previous["resume"]["epoch"] if previous else 0
    scored = config.mask in masking.SCORED  # the pipeline then draws the probe masks the step ranks patches with
    mask, ratio = ("random", 0.5) if scored else (config.mask, config.ratio)
    ds, steps = data.train_pipeline(train_images, config.batch_size, mask, ratio, config.seed, start_epoch=start, zoom=config.zoom)
    val_masks = data.fixed_masks(mask, ratio, len(val_images), config.seed, data.VAL_MASK_STREAM)
    val_ds = data.eval_pipeline(val_images, val_masks, data.EVAL_BATCH)
    ds, val_ds = distribute.shard_by_data(ds), distribute.shard_by_data(val_ds)
    with strategy.scope():  # variables (model, optimizer) live on every replica
        scorer = models.load(config.scorer) if config.scorer else None
        # A loaded model's layers take the global dtype policy: a resumed bf16 run needs it too,
        # else it continues in float32, slower and no longer bit-identical to an uninterrupted run.
        keras.mixed_precision.set_global_policy("mixed_bfloat16" if config.precision == "bfloat16" else "float32")
        try:
            model = models.load(previous["resume"]["path"], compile=True) if previous else models.build(config.model, **config.hparams)
        finally:
            keras.mixed_precision.set_global_policy("float32")
        if previous:  # weights and optimizer state from the checkpoint
            set_rng_state(model, previous["resume"]["rng"])
        else:
            if config.init:
                start_from(model, config.init)
            model.compile(optimizer=make_optimizer(config, steps))
            model.optimizer.build(model.trainable_variables)
    if previous:
        record = {**previous, "config": asdict(config), "resumed_at_epochs": previous.get("resumed_at_epochs", []) + [start]}
    else:
        record = {
            "config": asdict(config),
            "data_source": data.source_label(config.data),  # config.data is empty when $MASKVIT_DATA named the data
            "effective_ratio": masking.effective_ratio(config.mask, config.ratio),
            "recipe": RECIPES[config.recipe],
            "lr": peak_lr(config),
            "n_train": len(train_images),
            "n_val": len(val_images),
            "parameters": model.count_params(),
            "hardware": f"{platform.machine()}, {os.cpu_count()} CPUs, tensorflow {tf.__version__}, keras {keras.__version__}",
        }
    record["replicas"] = replicas
    model.loss_kind = config.loss
    if scored:  # validation too: the loss on the masks being trained for
        model.remask = importance.masker(scorer or model, config.mask, config.ratio)
    plateau = None
    if config.recipe == "seed":
        r = RECIPES["seed"]
        plateau = Plateau(previous and previous["resume"]["plateau"], monitor="val_loss", factor=r["plateau_factor"],
                          patience=r["plateau_patience"], min_lr=r["min_lr"], verbose=0)
    checkpoints = Checkpoints(folder, config.prefix, record, steps * config.batch_size, plateau, write=chief)
    callbacks = [c for c in (plateau, StopOnNonFinite(), checkpoints, progress) if c is not None]
    model.fit(ds, epochs=config.epochs, initial_epoch=start, steps_per_epoch=steps, validation_data=val_ds,
              callbacks=callbacks, verbose=0, shuffle=False)
    if "stopped" in record:
        best = record.get("best", {}).get("path", "none yet")
        raise MaskvitError(f"training stopped: {record['stopped']}; the last good model is {best}")
    return {**record, "chief": chief, "history": checkpoints.history}
