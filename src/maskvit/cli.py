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

import numpy as np

from .errors import MaskvitError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Masked image reconstruction with Vision Transformers on CIFAR-10.")
console = Console(width=None if sys.stdout.isatty() else 120)  # logs and pipes get whole table rows
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
    table.title += f" ({rows[0]['n_images']} images)"
    for col in ("strategy", "ratio (eff.)", "MSE", "PSNR dB", "SSIM", "masked MSE", "masked PSNR"):
        table.add_column(col, justify="right", no_wrap=True)
    for r in rows:
        ci = lambda m, f: f"{r[m]['mean']:{f}} ±{(r[m]['ci95'][1] - r[m]['ci95'][0]) / 2:{f}}"  # noqa: E731
        table.add_row(r["strategy"], f"{r['ratio']:.2f} ({r['effective_ratio']:.3f})", f"{r['mse']['mean']:.5f}",
                      ci("psnr", ".2f"), ci("ssim", ".4f"), f"{r['masked_mse']['mean']:.5f}", ci("masked_psnr", ".2f"))
    table.caption = "mean ± half-width of the 95% confidence interval over images; composite images, masked = hidden pixels only"
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
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run of the same settings in --output (default), or start over."),
):
    """Train a model; writes <prefix>_best.keras, <prefix>_final.keras and <prefix>_run.json."""
    from .train import TrainConfig, train as run

    config = TrainConfig(model=model, mask=mask, ratio=ratio, epochs=epochs, batch_size=batch_size, recipe=recipe,
                         val_size=val_size, limit=limit, seed=seed, data=data, output=str(output), name=name, resume=resume)
    config.check()
    record = run(config, progress=_progress_callback())
    if record.get("resumed_at_epochs"):
        console.print(f"resumed an interrupted run after epoch {record['resumed_at_epochs'][-1]}")
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


ModelOpt = typer.Option(None, "--model", help="A .keras file written by maskvit train (default: the shipped model).")


def _reconstruct_files(net, paths: list[Path], mask: str, ratio: float, seed: int, output: Path) -> tuple[list[dict], list[str]]:
    """Reconstruct each file; a bad file is reported and skipped, the others still run."""
    from rich.progress import Progress

    from . import images

    rows, failures = [], []
    with Progress(console=console, transient=True) as bar:
        for path in paths:
            try:
                rgb = images.read_rgb(path)
                task = bar.add_task(f"{path.name}", total=None)
                masked, recon = images.reconstruct_image(net, rgb, mask, ratio, seed, on_batch=lambda done, total: bar.update(task, completed=done, total=total))
                bar.remove_task(task)
                panel_path, recon_path = output / f"{path.stem}_{mask}{round(ratio * 100)}_panel.png", output / f"{path.stem}_{mask}{round(ratio * 100)}_reconstructed.png"
                gap = np.full((rgb.shape[0], max(2, rgb.shape[1] // 64), 3), 255, np.uint8)
                images.save_png(panel_path, np.concatenate([rgb, gap, masked, gap, recon], axis=1))
                images.save_png(recon_path, recon)
                rows.append({"image": str(path), "width": rgb.shape[1], "height": rgb.shape[0], "strategy": mask, "ratio": ratio,
                             "panel": str(panel_path), "reconstructed": str(recon_path), **images.image_scores(rgb, recon)})
            except MaskvitError as e:
                err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
                failures.append(str(path))
    return rows, failures


def _images_table(rows: list[dict]) -> Table:
    table = Table(title="reconstructions")
    for col in ("image", "size", "mask", "MSE", "PSNR dB", "SSIM", "panel"):
        table.add_column(col, justify="right" if col in ("MSE", "PSNR dB", "SSIM") else "left")
    for r in rows:
        table.add_row(Path(r["image"]).name, f"{r['width']}x{r['height']}", f"{r['strategy']} {r['ratio']:.2f}", f"{r['mse']:.5f}",
                      f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", Path(r["panel"]).name)
    return table


@app.command()
def reconstruct(
    paths: list[Path] = typer.Argument(..., metavar="IMAGE...", help="PNG, JPEG, BMP, GIF or WebP files of any size."),
    mask: str = MaskOpt,
    ratio: float = RatioOpt,
    model_path: Optional[Path] = ModelOpt,
    output: Path = typer.Option(Path("reconstructions"), "--output", help="Folder for the panels and reconstructions."),
    seed: int = SeedOpt,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write per-image metrics to this JSON file."),
):
    """Hide patches of your own images and reconstruct them (32x32 tiles, 4x4 patches)."""
    from . import masking, models
    from .files import ensure_folder, write_json

    masking.check(mask, ratio)
    net = models.load(model_path)
    ensure_folder(output)
    rows, failures = _reconstruct_files(net, paths, mask, ratio, seed, output)
    if rows:
        console.print(_images_table(rows))
        console.print(f"outputs in {output}/")
    if json_path:
        write_json(json_path, {"model": str(model_path or models.DEFAULT_MODEL), "images": rows, "failed": failures})
    if failures:
        raise MaskvitError(f"{len(failures)} of {len(paths)} images could not be read: {', '.join(failures)}")


@app.command()
def demo(
    output: Path = typer.Option(Path("maskvit-demo"), "--output", help="Folder for the demo's pictures and results."),
    model_path: Optional[Path] = ModelOpt,
):
    """The main job, with nothing to download: the shipped model reconstructs packaged pictures
    and is scored on the 256 CIFAR-10 test images packaged with maskvit."""
    from skimage import data as skdata

    from . import data as data_mod
    from . import images, models
    from .evaluate import evaluate as score
    from .files import ensure_folder, write_json

    net = models.load(model_path)
    inputs = ensure_folder(output / "inputs")
    sample, _ = data_mod.load_split("test", data_mod.SAMPLE)
    mosaic = sample[:64].reshape(8, 8, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(256, 256, 3)
    pictures = {"cifar10_test_mosaic.png": mosaic, "chelsea_cat.png": skdata.chelsea(), "coffee.png": skdata.coffee()}
    for name, array in pictures.items():
        images.save_png(inputs / name, array)
    rows = []
    for strategy in ("random", "row", "column"):
        rows += _reconstruct_files(net, [inputs / name for name in pictures], strategy, 0.5, 0, output)[0]
    console.print(_images_table(rows))
    results = [score(net, sample, strategy, 0.5) for strategy in ("random", "row", "column")]
    console.print(_metrics_table("shipped model on the 256 packaged CIFAR-10 test images", results))
    write_json(output / "demo.json", {"model": str(model_path or models.DEFAULT_MODEL), "pictures": rows, "cifar10_sample": results})
    console.print(f"outputs in {output}/: *_panel.png (original | masked | reconstructed), demo.json")


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
