"""The `maskvit` command: a thin Typer layer over the library. Every user error ends as one
line on stderr and exit code 2; an unexpected error prints one line and the path of a log
holding the traceback (exit 1)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import typer
from rich.console import Console
from rich.table import Table

from .errors import MaskvitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Masked image reconstruction with Vision Transformers on CIFAR-10.")
console = Console()
err_console = Console(stderr=True)

DATA_HELP = "CIFAR-10 python archive (.tar.gz) or its extracted folder; 'sample' for the embedded test images. Default: $MASKVIT_DATA, else download."
MaskOpt = typer.Option("random", "--mask", help="Masking strategy: random, row or column.")
RatioOpt = typer.Option(0.5, "--ratio", help="Fraction of patches hidden, strictly between 0 and 1.")
DataOpt = typer.Option(None, "--data", help=DATA_HELP)
SeedOpt = typer.Option(0, "--seed", help="Seed for masks, shuffling and initialisation.")


def _progress_callback():
    import keras
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from .train import current_lr

    class RichProgress(keras.callbacks.Callback):
        """A bar per epoch, and one line per epoch with loss, validation loss and learning rate."""

        def on_train_begin(self, logs=None):
            self.bar = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]:.5f}"), TimeRemainingColumn(), console=console, transient=True)
            self.bar.start()

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch, self.t0 = epoch + 1, time.perf_counter()
            self.task = self.bar.add_task("", total=self.params["steps"], epoch=f"{self.epoch}/{self.params['epochs']}", loss=float("nan"))

        def on_train_batch_end(self, batch, logs=None):
            self.bar.update(self.task, completed=batch + 1, loss=float(logs["loss"]))

        def on_epoch_end(self, epoch, logs=None):
            self.bar.remove_task(self.task)
            console.print(f"epoch {self.epoch}/{self.params['epochs']}  loss {logs['loss']:.5f}  val_loss {logs['val_loss']:.5f}  "
                          f"lr {current_lr(self.model.optimizer):.2e}  {time.perf_counter() - self.t0:.0f}s")

        def on_train_end(self, logs=None):
            self.bar.stop()

    return RichProgress()


def _metrics_table(title: str, rows: list[dict]) -> Table:
    table = Table(title=title)
    for col in ("strategy", "ratio", "eff.", "n", "MSE", "PSNR dB (95% CI)", "SSIM (95% CI)", "masked MSE", "masked PSNR dB"):
        table.add_column(col, justify="right")
    for r in rows:
        ci = lambda m, f: f"{r[m]['mean']:{f}} ({r[m]['ci95'][0]:{f}}-{r[m]['ci95'][1]:{f}})"  # noqa: E731
        table.add_row(r["strategy"], f"{r['ratio']:.2f}", f"{r['effective_ratio']:.3f}", str(r["n_images"]), f"{r['mse']['mean']:.5f}",
                      ci("psnr", ".2f"), ci("ssim", ".4f"), f"{r['masked_mse']['mean']:.5f}", f"{r['masked_psnr']['mean']:.2f}")
    return table


@app.command()
def train(
    model: str = typer.Option("seed", "--model", help="Model preset: seed (reference) or mae (encoder on visible patches)."),
    mask: str = MaskOpt,
    ratio: float = RatioOpt,
    epochs: int = typer.Option(20, "--epochs", help="Training epochs."),
    batch_size: int = typer.Option(128, "--batch-size", help="Images per step."),
    recipe: str = typer.Option("seed", "--recipe", help="seed: Adam 1e-3 + ReduceLROnPlateau; fast: AdamW + warmup-cosine."),
    val_size: int = typer.Option(5000, "--val-size", help="Validation images, the last of the training split."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Train on the first N training images only."),
    seed: int = SeedOpt,
    data: Optional[str] = DataOpt,
    output: Path = typer.Option(Path("saved_models"), "--output", help="Folder for the best/final models and the run JSON."),
    name: Optional[str] = typer.Option(None, "--name", help="File prefix (default <model>_<mask><ratio%>)."),
):
    """Train a model; writes <prefix>_best.keras, <prefix>_final.keras and <prefix>_run.json."""
    from .train import TrainConfig, train as run

    config = TrainConfig(model=model, mask=mask, ratio=ratio, epochs=epochs, batch_size=batch_size, recipe=recipe,
                         val_size=val_size, limit=limit, seed=seed, data=data, output=str(output), name=name)
    config.check()
    record = run(config, progress=_progress_callback())
    console.print(f"best model (epoch {record['best']['epoch']}, val_loss {record['best']['val_loss']:.5f}): {record['best']['path']}")
    console.print(f"final model: {record['final']}   {record['train_images_per_second']:.0f} training images/s")


@app.command()
def evaluate(
    model_path: Path = typer.Argument(..., metavar="MODEL", help="A .keras file written by maskvit train."),
    mask: str = MaskOpt,
    ratio: float = RatioOpt,
    limit: Optional[int] = typer.Option(None, "--limit", help="Score the first N test images only."),
    seed: int = SeedOpt,
    data: Optional[str] = DataOpt,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
):
    """Score a model on the test set: composite-image MSE/PSNR/SSIM and masked-region MSE/PSNR."""
    from . import data as data_mod
    from . import masking, models
    from .evaluate import evaluate as run
    from .files import write_json

    masking.check(mask, ratio)
    if limit is not None and limit < 1:
        raise MaskvitError(f"--limit must be at least 1, got {limit}")
    net = models.load(model_path)
    images, _ = data_mod.load_split("test", data)
    result = {"model": str(model_path), **run(net, images[:limit], mask, ratio, seed)}
    console.print(_metrics_table(f"{model_path.name} on CIFAR-10 test", [result]))
    if json_path:
        write_json(json_path, result)
        console.print(f"wrote {json_path}")


def main() -> None:
    """Console entry point: user errors are one line; nothing ends in a bare traceback."""
    try:
        code = app(standalone_mode=False)  # returns the exit code of --help and typer.Exit
    except MaskvitError as e:
        err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(2)
    except typer.Abort:
        err_console.print("aborted", markup=False)
        sys.exit(130)
    except typer.TyperException as e:  # bad command-line usage: unknown option, "abc" for a number...
        err_console.print(f"error: {e.format_message()} (see maskvit {' '.join(sys.argv[1:2])} --help)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        err_console.print("interrupted", markup=False)
        sys.exit(130)
    except Exception as e:  # a bug: keep the traceback, show one line
        fd, log = tempfile.mkstemp(prefix="maskvit-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            traceback.print_exc(file=f)
        err_console.print(f"error: unexpected {type(e).__name__}: {e} (traceback in {log})", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)
