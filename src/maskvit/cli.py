"""The `maskvit` command: a thin Typer layer over the library. Every user error ends as one
line on stderr and exit code 2; an unexpected error prints one line and the path of a log
holding the traceback (exit 1)."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path
from typing import Optional

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # before TensorFlow is imported anywhere

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

import numpy as np

from . import __version__
from .errors import Interrupted, MaskvitError, reason

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Masked image reconstruction with Vision Transformers on CIFAR-10.")
# Logs and pipes get one line per table row (the widest, compare with its differences column, is
# about 155 characters); a narrow terminal folds cells onto more lines rather than cut numbers short.
console = Console(width=None if sys.stdout.isatty() else 200)
err_console = Console(stderr=True)


def _show_version(value: bool) -> None:
    if value:
        console.print(f"maskvit {__version__}", markup=False, highlight=False)
        raise typer.Exit()


@app.callback()
def _root(version: bool = typer.Option(False, "--version", callback=_show_version, is_eager=True,
                                        help="Show the version and exit.")) -> None:
    pass  # the app's own options; its help text is the Typer app's


DATA_HELP = "CIFAR-10 python archive (.tar.gz) or its extracted folder; 'sample' for the embedded test images. Default: $MASKVIT_DATA, else download."
MaskOpt = typer.Option("random", "--mask", help="Masking strategy: random, row, column, block, importance / importance-most (the least / most important patches by a model's loss gradients; see --scorer), or (training) mixed: random, row or column per batch at ratio +-0.25.")
RatioOpt = typer.Option(0.5, "--ratio", help="Fraction of patches hidden, strictly between 0 and 1.")
DataOpt = typer.Option(None, "--data", help=DATA_HELP)
SeedOpt = typer.Option(0, "--seed", help="Seed for masks, shuffling and initialisation.")
MaskSeedOpt = typer.Option(0, "--seed", help="Seed for the masks: the same seed gives every model the same masks.")


def _bar(*columns):
    """A transient progress bar (rich's default columns if none are given). None is drawn when
    stdout is not a terminal, where rich would still end the bar with an empty line."""
    from rich.progress import Progress

    return Progress(*columns, console=console, transient=True, disable=not console.is_terminal)


def _progress_callback():
    import keras
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from .train import current_lr

    class RichProgress(keras.callbacks.Callback):
        """A bar per epoch, and one line per epoch with loss, validation loss and learning rate."""

        bar = None

        def close(self):
            """Stop the bar whatever ended training: while it runs in a terminal it hides the
            cursor and holds stdout and stderr, which an error or Ctrl-C (neither reaches
            on_train_end) would otherwise leave so."""
            if self.bar is not None:
                self.bar.stop()

        def on_train_begin(self, logs=None):
            self.bar = _bar(TextColumn("epoch {task.fields[epoch]}"), BarColumn(), MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]:.5f}"), TimeRemainingColumn())
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
            self.close()

    return RichProgress()


def _metrics_table(title: str, rows: list[dict]) -> Table:
    """One row per method and cell; within a cell the best value of each column is bold green."""
    table = Table(title=f"{title} ({rows[0]['n_images']} images)")
    several = len({r["method"] for r in rows}) > 1
    diffs = any("vs_best_baseline" in r for r in rows)
    cols = (["method"] if several else []) + ["mask", "MSE", "PSNR dB", "SSIM", "masked MSE", "masked PSNR"]
    for col in cols + (["ΔPSNR vs best baseline"] if diffs else []):
        table.add_column(col, justify="left" if col == "method" else "right", overflow="fold")
    best = {}
    for r in rows:
        key = (r["strategy"], r["ratio"])
        for m, higher in (("mse", False), ("psnr", True), ("ssim", True), ("masked_mse", False), ("masked_psnr", True)):
            value = r[m]["mean"] if higher else -r[m]["mean"]
            best[key, m] = max(best.get((key, m), -np.inf), value)
    for r in rows:
        key = (r["strategy"], r["ratio"])

        def fmt(m, f, ci=True):
            text = f"{r[m]['mean']:{f}}" + (f" ±{(r[m]['ci95'][1] - r[m]['ci95'][0]) / 2:{f}}" if ci else "")
            top = best[key, m] == (r[m]["mean"] if "mse" not in m else -r[m]["mean"])
            return f"[bold green]{text}[/]" if several and top else text

        eff = f" ({r['effective_ratio']:.3f})" if abs(r["effective_ratio"] - r["ratio"]) > 1e-9 else ""
        cells = ([escape(r["method"])] if several else []) + [f"{r['strategy']} {r['ratio']:.2f}{eff}",
                 fmt("mse", ".5f", False), fmt("psnr", ".2f"), fmt("ssim", ".4f"), fmt("masked_mse", ".5f", False), fmt("masked_psnr", ".2f")]
        if diffs:
            d = r.get("vs_best_baseline")
            cells.append(f"{d['psnr']['mean']:+.2f} [{d['psnr']['ci95'][0]:+.2f}, {d['psnr']['ci95'][1]:+.2f}] {d['baseline']}" if d else "")
        table.add_row(*cells)
    scored = "whole model output (--raw)" if any(r.get("scored") == "output" for r in rows) else "composite images"
    table.caption = (f"mean ± half-width of the 95% confidence interval over images; {scored}; masked = hidden pixels only"
                     + ("; Δ: paired difference, [95% CI]" if diffs else ""))
    return table


@app.command()
def train(
    model: Optional[str] = typer.Option(None, "--model", help="Default: the recipe's (fast: mae-refine, seed: seed). Model preset: seed (reference ViT), mae (encoder on visible patches), mae-refine (mae gated with an in-graph biharmonic fill), autoencoder (the seed's conv autoencoder, on zero-filled patches) or autoencoder-dropout (the seed's original: a denoiser trained on 50% per-pixel dropout noise)."),
    mask: str = MaskOpt,
    ratio: float = RatioOpt,
    epochs: int = typer.Option(20, "--epochs", help="Training epochs."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Images per step (default: the recipe's, fast 256, seed 128)."),
    recipe: str = typer.Option("fast", "--recipe", help="fast: mae-refine, bf16, log-mse loss, Muon 4e-3 + warm-up and cosine decay; seed: the reference notebook's seed model, Adam 1e-3 + ReduceLROnPlateau."),
    val_size: int = typer.Option(5000, "--val-size", help="Validation images, the last of the training split."),
    limit: Optional[int] = typer.Option(None, "--limit", help="Train on the first N training images only."),
    seed: int = SeedOpt,
    data: Optional[str] = DataOpt,
    output: Path = typer.Option(Path("saved_models"), "--output", help="Folder for the best/final models and the run JSON."),
    name: Optional[str] = typer.Option(None, "--name", help="File prefix (default <model>_<mask><ratio%>)."),
    precision: Optional[str] = typer.Option(None, "--precision", help="float32 or bfloat16 (mixed precision; default: the recipe's)."),
    loss: Optional[str] = typer.Option(None, "--loss", help="mse: over the batch's hidden pixels; log-mse: the mean over images of log(hidden-pixel MSE), the loss whose minimum is the best mean PSNR. Default: the recipe's (fast: log-mse, seed: mse)."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer", help="fast recipe: muon (default: Keras' Muon on the dense kernels, peak rate 4e-3, ahead of AdamW in short runs from scratch and in fine-tuning) or adamw (2e-3); seed recipe: adam."),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="Continue an interrupted run of the same settings in --output and refuse to replace a finished one (default), or start over, replacing the files of a run of this name."),
    scorer: Optional[Path] = typer.Option(None, "--scorer", help="With --mask importance(-most): the model that ranks patches (default: the model being trained, at every step)."),
    strategy: str = typer.Option("default", "--strategy", help="default: one device; mirrored: every local GPU (or the CPU); multiworker: the cluster in TF_CONFIG. --batch-size is the global batch."),
    zoom: float = typer.Option(1.0, "--zoom", help="Above 1: train on random crops zoomed up to this factor (side 32/z px, resized to 32x32), as tiles of large photographs look; 1: whole images."),
    init: Optional[Path] = typer.Option(None, "--init", help="Start from this model file's weights instead of random ones: fine-tuning. The same --model, or mae-refine from a mae (it starts as the fill plus 12% of the mae's prediction)."),
    hparams: str = typer.Option("", "--hparams", help="A smaller or larger model than the preset: comma-separated key=value, e.g. depth=2,dim=64. ViTs: dim, depth, heads, mlp_dim, dropout; mae(-refine) also decoder_dim, decoder_depth, decoder_mlp_dim, decode_visible (true, or false: the decoder updates the hidden tokens only: trains 6-15% faster) (and fill_steps); autoencoders: bottleneck (and pixel_dropout)."),
):
    """Train a model; writes <prefix>_best.keras, <prefix>_final.keras and <prefix>_run.json."""
    from .data import source_label
    from .models import parse_hparams
    from .train import TrainConfig, peak_lr, train as run

    config = TrainConfig(model=model, mask=mask, ratio=ratio, epochs=epochs, batch_size=batch_size, recipe=recipe,
                         val_size=val_size, limit=limit, seed=seed, data=data, output=str(output), name=name, resume=resume, precision=precision,
                         loss=loss, optimizer=optimizer, scorer=scorer and str(scorer), strategy=strategy, zoom=zoom, init=init and str(init))
    config.check()
    config.hparams = parse_hparams(hparams, config.model)
    size = ", ".join(f"{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in config.hparams.items())  # as --hparams takes them
    size = f" ({size})" if size else ""
    console.print(f"training {config.model}{size}: {config.recipe} recipe ({config.optimizer} {peak_lr(config):g}, {config.precision}, batch "
                  f"{config.batch_size}, {config.loss} loss), {config.mask} {config.ratio:.2f} masks, {config.epochs} epoch{'s' * (config.epochs > 1)}\n"
                  f"data: {source_label(config.data)}; files: {output / config.prefix}_*", highlight=False, soft_wrap=True)
    progress = _progress_callback()
    try:
        record = run(config, progress=progress)
    except KeyboardInterrupt:
        raise Interrupted("interrupted; the same command continues from the last completed epoch (--no-resume starts over)") from None
    finally:
        progress.close()
    if record.get("resumed_at_epochs"):
        console.print(f"resumed an interrupted run after epoch {record['resumed_at_epochs'][-1]}")
    if not record["chief"]:
        console.print(f"worker done: the chief writes the models and the run record in {config.output}")
        return
    console.print(f"best model (epoch {record['best']['epoch']}, val_loss {record['best']['val_loss']:.5f}): {record['best']['path']}")
    console.print(f"final model: {record['final']}   {record['train_images_per_second']:.0f} training images/s")


GridOpt = typer.Option(False, "--grid", help="Every strategy x ratio in --strategies and --ratios instead of one --mask/--ratio.")
StrategiesOpt = typer.Option(None, "--strategies",
                             help="Comma-separated strategies for --grid; default random,row,column,block,importance (also: importance-most).")
ScorerOpt = typer.Option(None, "--scorer", help="Model whose patch importance sets the importance masks (default: the first model).")
RatiosOpt = typer.Option(None, "--ratios", help="Comma-separated ratios for --grid; default 0.3,0.5,0.7.")
# visualize draws every strategy x ratio: it has no --grid to qualify them.
DrawStrategiesOpt = typer.Option(None, "--strategies", help="Comma-separated strategies to draw; default random,row,column,block,importance (also: importance-most).")
DrawRatiosOpt = typer.Option(None, "--ratios", help="Comma-separated ratios to draw; default 0.3,0.5,0.7.")
LimitOpt = typer.Option(None, "--limit", help="Score the first N test images only.")


def _cells(grid: bool, mask: str, ratio: float, strategies: Optional[str], ratios: Optional[str], scorer: Optional[Path] = None) -> tuple[list[str], list[float]]:
    from . import masking
    from .evaluate import GRID_RATIOS, GRID_STRATEGIES, parse_list

    if not grid and (strategies or ratios):  # else they would be ignored and one --mask/--ratio cell scored
        raise MaskvitError(f"--{'strategies' if strategies else 'ratios'} chooses the cells of --grid; add --grid, or give one cell with --mask and --ratio")
    # A cell named twice is scored once: the same masks would give the same rows again.
    strategy_list = list(dict.fromkeys(parse_list(strategies, str))) if strategies else list(GRID_STRATEGIES)
    ratio_list = list(dict.fromkeys(parse_list(ratios))) if ratios else list(GRID_RATIOS)
    if not strategy_list or not ratio_list:
        raise MaskvitError(f"--{'strategies' if not strategy_list else 'ratios'} names none; give a comma-separated list")
    cells = (strategy_list, ratio_list) if grid else ([mask], [ratio])
    for s in cells[0]:
        for r in cells[1]:
            masking.check(s, r)
    if scorer:
        masking.check_scorer(cells[0])
    return cells


def _test_images(data: Optional[str], limit: Optional[int]):
    from . import data as data_mod

    if limit is not None and limit < 1:
        raise MaskvitError(f"--limit must be at least 1, got {limit}")
    return data_mod.load_split("test", data)[0][:limit]


def _run_grid(methods: dict, images, strategies, ratios, seed, scorer=None, raw=False) -> list[dict]:
    from .evaluate import grid

    label = f"scoring {len(methods)} method(s) on {len(images)} images"
    with _bar() as bar:
        task = bar.add_task(label, total=len(strategies) * len(ratios))
        # Ranking patches for importance masks comes before the first cell: on the full test set
        # a third of the run, which the bar would otherwise spend at 0 cells done, unexplained.
        return grid(methods, images, strategies, ratios, seed, on_cell=lambda s, r: bar.update(task, advance=1, description=label),
                    scorer=scorer, raw=raw,
                    on_ranking=lambda: bar.update(task, description=f"ranking patches by importance on {len(images)} images"))


@app.command()
def evaluate(
    model_path: Optional[Path] = typer.Argument(None, metavar="[MODEL]", help="A .keras file written by maskvit train (default: the shipped model)."),
    mask: str = MaskOpt,
    ratio: float = RatioOpt,
    grid: bool = GridOpt,
    strategies: str = StrategiesOpt,
    ratios: str = RatiosOpt,
    limit: Optional[int] = LimitOpt,
    seed: int = MaskSeedOpt,
    data: Optional[str] = DataOpt,
    scorer: Optional[Path] = ScorerOpt,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the results to this JSON file."),
    csv_path: Optional[Path] = typer.Option(None, "--csv", help="Also write the results to this CSV file."),
    raw: bool = typer.Option(False, "--raw", help="Score the model's whole output instead of the composite (visible patches taken from the original), as the seed notebook scored its autoencoder."),
):
    """Score a model on the test set: composite-image MSE/PSNR/SSIM and masked-region MSE/PSNR."""
    from . import distribute, models
    from .data import source_label as data_label
    from .evaluate import csv_text, public
    from .files import output_file, write_json, write_text

    distribute.one_thread_per_op()  # before TensorFlow's first op

    cells = _cells(grid, mask, ratio, strategies, ratios, scorer)
    json_path = json_path and output_file(json_path, "--json")
    csv_path = csv_path and output_file(csv_path, "--csv")
    model_path = model_path or models.DEFAULT_MODEL
    net = models.load(model_path)
    images = _test_images(data, limit)
    t0 = time.perf_counter()
    shown = model_path.resolve()  # the shipped model by its file, not by the package's link to it
    rows = _run_grid({shown.stem: net}, images, *cells, seed, scorer and models.load(scorer), raw)
    seconds = time.perf_counter() - t0
    console.print(_metrics_table(f"{shown.name} on CIFAR-10 test", rows))
    console.print(f"{len(rows)} cell(s) in {seconds:.1f}s")
    if json_path:
        write_json(json_path, {"model": models.fingerprint(model_path), "data": data_label(data), "seconds": seconds, "rows": public(rows)})
        console.print(f"wrote {json_path}")
    if csv_path:
        write_text(csv_path, csv_text(rows))
        console.print(f"wrote {csv_path}")


def _methods(model_paths: Optional[list[Path]], baselines: str) -> tuple[list[Path], dict, list[str]]:
    """Model files (default: the shipped model and the autoencoder shipped beside it) loaded and
    named by file stem, and checked baseline names."""
    from . import baselines as baselines_mod
    from . import models
    from .evaluate import parse_list

    chosen = parse_list(baselines, str)
    for b in chosen:
        if b not in baselines_mod.BASELINES:
            raise MaskvitError(f"unknown baseline {b!r}; choose from {', '.join(baselines_mod.BASELINES)}")
    paths = model_paths or [models.DEFAULT_MODEL] + [p for p in [models.DEFAULT_AUTOENCODER] if p.exists()]
    resolved = [p.resolve() for p in paths]
    for i, path in enumerate(resolved):  # checked before any model is loaded
        if path in resolved[:i]:
            raise MaskvitError(f"{paths[i]} is named twice; name each model once")
        if path.stem in {q.stem for q in resolved[:i]}:
            raise MaskvitError(f"two models share the file name {path.stem}; rename one so the results can tell them apart")
    nets = {path.stem: models.load(p) for path, p in zip(resolved, paths)}
    return paths, nets, chosen


@app.command()
def compare(
    model_paths: Optional[list[Path]] = typer.Argument(None, metavar="[MODEL]...", help="Model files (default: the shipped model and autoencoder)."),
    mask: str = MaskOpt,
    ratio: float = RatioOpt,
    grid: bool = GridOpt,
    strategies: str = StrategiesOpt,
    ratios: str = RatiosOpt,
    baselines: str = typer.Option("biharmonic,mean", "--baselines", help="Comma-separated classical baselines (biharmonic, mean); '' for none."),
    limit: Optional[int] = LimitOpt,
    seed: int = MaskSeedOpt,
    data: Optional[str] = DataOpt,
    scorer: Optional[Path] = ScorerOpt,
    output: Path = typer.Option(Path("results"), "--output", help="Results folder: compare.json/.csv, bar charts, summary.md."),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write the JSON here."),
):
    """Models against classical inpainting on identical masks, with paired 95% CIs."""
    from . import distribute, figures
    from .data import source_label as data_label
    from .evaluate import add_baseline_differences, csv_text, public
    from .models import fingerprint
    from .models import load as load_model
    from .files import ensure_folder, output_file, write_json, write_text

    distribute.one_thread_per_op()  # before TensorFlow's first op

    cells = _cells(grid, mask, ratio, strategies, ratios, scorer)
    json_path = json_path and output_file(json_path, "--json")
    paths, nets, chosen = _methods(model_paths, baselines)
    methods = {**nets, **{b: b for b in chosen}}
    folder = ensure_folder(output)
    images = _test_images(data, limit)
    t0 = time.perf_counter()
    rows = _run_grid(methods, images, *cells, seed, scorer and load_model(scorer))
    add_baseline_differences(rows)
    seconds = time.perf_counter() - t0
    console.print(_metrics_table("comparison on CIFAR-10 test", rows))
    result = {"models": [fingerprint(p) for p in paths], "baselines": chosen, "data": data_label(data), "seed": seed, "seconds": seconds,
              "rows": public(rows)}
    write_json(folder / "compare.json", result)
    if json_path:
        write_json(json_path, result)
    write_text(folder / "compare.csv", csv_text(rows))
    for metric in ("psnr", "ssim", "masked_psnr"):
        figures.bar_chart(rows, metric, folder / f"compare_{metric}.png")
    write_text(folder / "summary.md", _summary_markdown(result))
    console.print(f"{len(rows)} rows in {seconds:.0f}s; wrote {folder}/compare.json, compare.csv, compare_*.png, summary.md")


@app.command()
def visualize(
    model_paths: Optional[list[Path]] = typer.Argument(None, metavar="[MODEL]...", help="Model files (default: the shipped model)."),
    strategies: str = DrawStrategiesOpt,
    ratios: str = DrawRatiosOpt,
    baselines: str = typer.Option("biharmonic", "--baselines", help="Classical baselines shown beside the models; '' for none."),
    n: int = typer.Option(6, "--n", help="Test images per example figure."),
    results: Optional[Path] = typer.Option(None, "--results", help="A compare/evaluate JSON for metric-vs-ratio curves (default: OUTPUT/compare.json if present)."),
    runs: Optional[list[Path]] = typer.Option(None, "--run", help="A <prefix>_run.json from train, for loss and learning-rate curves (repeatable)."),
    seed: int = MaskSeedOpt,
    data: Optional[str] = DataOpt,
    output: Path = typer.Option(Path("results"), "--output", help="Folder for the PNG figures."),
):
    """PNG figures: original / masked / reconstructed examples per strategy and ratio,
    metric-vs-ratio curves, and training curves."""
    from . import baselines as baselines_mod
    from . import figures, masking
    from .evaluate import masks_for, reconstruct
    from .files import ensure_folder

    strategy_list, ratio_list = _cells(True, "", 0, strategies, ratios)
    if not 1 <= n <= 64:
        raise MaskvitError(f"--n must be between 1 and 64, got {n}")
    _, nets, chosen = _methods(model_paths, baselines)
    # Read before anything is drawn, so a bad file costs no wait.
    results = results or (output / "compare.json" if (output / "compare.json").exists() else None)
    rows = _curve_rows(results) if results else []
    records = {run: _run_record(run) for run in runs or []}
    folder = ensure_folder(output)
    images = _test_images(data, n)
    originals = images.astype(np.float32) / 255.0
    written = []
    for strategy in strategy_list:
        for ratio in ratio_list:
            masks = masks_for(strategy, ratio, images, seed, scorer=next(iter(nets.values())))
            masked = np.where(masking.pixel_mask(masks).numpy(), 0.5, originals)
            recons = {name: reconstruct(net, images, masks) for name, net in nets.items()}
            recons.update({b: baselines_mod.fill(b, originals, masks) for b in chosen})
            path = folder / f"examples_{strategy}{round(ratio * 100)}.png"
            figures.examples(originals, masked, recons, path, f"{strategy} masking, ratio {ratio:.2f}")
            written.append(path)
    # A curve needs two ratios: a single-cell compare (its default) would draw lone dots.
    if rows and max(Counter((r["method"], r["strategy"]) for r in rows).values()) > 1:
        for metric in ("psnr", "ssim"):
            figures.ratio_curves(rows, metric, folder / f"curves_{metric}.png")
            written.append(folder / f"curves_{metric}.png")
    elif results:
        console.print(f"no metric-vs-ratio curves: {results} scores one ratio per method and strategy (compare --grid scores three)")
    for run, record in records.items():
        figures.training_curves(record["history"], folder / f"training_{run.stem}.png", run.stem, (record.get("config") or {}).get("loss") or "mse")
        written.append(folder / f"training_{run.stem}.png")
    console.print("wrote " + ", ".join(str(p) for p in written))


def _curve_rows(path: Path) -> list[dict]:
    """The rows of a compare or evaluate JSON, checked for what the ratio curves read."""
    rows = _read_json(path).get("rows")
    try:
        ok = isinstance(rows, list) and rows and all(
            isinstance(r["method"], str) and isinstance(r["strategy"], str)
            and all(isinstance(v, (int, float)) for v in (r["effective_ratio"], r["psnr"]["mean"], r["ssim"]["mean"])) for r in rows)
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise MaskvitError(f"{path}: not a compare or evaluate results file (no rows of method, strategy, ratio, PSNR and SSIM)")
    return rows


def _run_record(path: Path) -> dict:
    """A train run record, checked for what the training curves read."""
    record = _read_json(path)
    history = record.get("history")
    columns = [history.get(k) for k in ("loss", "val_loss", "lr")] if isinstance(history, dict) else [None]
    if not (all(isinstance(c, list) and c and all(isinstance(v, (int, float)) for v in c) for c in columns)
            and len({len(c) for c in columns}) == 1):
        raise MaskvitError(f"{path}: not a training run record (no history of loss, val_loss and lr per epoch)")
    return record


def _read_json(path: Path) -> dict:
    import json

    try:
        record = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise MaskvitError(f"{path}: no such file") from None
    except (OSError, ValueError) as e:
        raise MaskvitError(f"{path}: not readable JSON ({reason(e)})") from None
    if not isinstance(record, dict):
        raise MaskvitError(f"{path}: not a maskvit record (its JSON is not an object)")
    return record


def _summary_markdown(result: dict) -> str:
    from .evaluate import METRICS

    shown = ", ".join(f"{m['file']} (sha256 {m['sha256'][:12]})" for m in result["models"])
    lines = ["# maskvit comparison", "", f"- models: {shown}", f"- baselines: {', '.join(result['baselines']) or 'none'}",
             f"- data: {result['data']}, CIFAR-10 test split, {result['rows'][0]['n_images']} images",
             f"- masks: seeded (seed {result['seed']}), identical for every method within a cell", f"- wall time: {result['seconds']:.0f} s",
             "- metrics: per image on the composite (original visible patches + reconstructed hidden ones); PSNR = skimage "
             "peak_signal_noise_ratio(data_range=1), SSIM = skimage structural_similarity(win_size=7, channel_axis=-1, data_range=1.0); "
             "masked = hidden pixels only; mean over images with 95% CI (Student t); differences are paired over images.", "",
             "| method | strategy | ratio (eff.) | " + " | ".join(METRICS) + " | PSNR vs best baseline |", "|" + "---|" * (len(METRICS) + 4)]
    for r in result["rows"]:
        diff = r.get("vs_best_baseline")
        d = f"{diff['psnr']['mean']:+.2f} [{diff['psnr']['ci95'][0]:+.2f}, {diff['psnr']['ci95'][1]:+.2f}] vs {diff['baseline']}" if diff else ""
        lines.append(f"| {r['method']} | {r['strategy']} | {r['ratio']:.2f} ({r['effective_ratio']:.3f}) | "
                     + " | ".join(f"{r[m]['mean']:.4f}" if "mse" in m or m == "ssim" else f"{r[m]['mean']:.2f}" for m in METRICS) + f" | {d} |")
    return "\n".join(lines) + "\n"


ModelOpt = typer.Option(None, "--model", help="A .keras file written by maskvit train (default: the shipped model).")
PictureMaskOpt = typer.Option("random", "--mask", help="Masking strategy: random, row, column or block (importance masks are for evaluate and compare).")
PictureModelOpt = typer.Option(None, "--model", help="A .keras file written by maskvit train (default: the shipped picture model, saved_models/maskvit_refine_zoom_decoder128.keras; for CIFAR-10 images, the default of the other commands, saved_models/maskvit_refine_decoder128.keras, scores higher).")


def _reconstruct_files(net, paths: list[Path], mask: str, ratio: float, seed: int, output: Path, shift: bool = True,
                       calibrate: bool = True) -> tuple[list[dict], list[str]]:
    """Reconstruct each file; a bad file among several is reported and skipped, the others still run."""
    from . import images

    rows, failures = [], []
    with _bar() as bar:
        for path, name in zip(paths, _output_names(paths)):
            try:
                rgb = images.read_rgb(path)
                task = bar.add_task(f"{path.name}", total=None)
                masked, recon, (a, b) = images.reconstruct_image(net, rgb, mask, ratio, seed, shift=shift, calibrate=calibrate,
                                                                 on_batch=lambda done, total: bar.update(task, completed=done, total=total))
                bar.remove_task(task)
                stem = f"{name}_{mask}{round(ratio * 100)}"
                panel_path, recon_path = output / f"{stem}_panel.png", output / f"{stem}_reconstructed.png"
                gap = np.full((rgb.shape[0], max(2, rgb.shape[1] // 64), 3), 255, np.uint8)
                images.save_png(panel_path, np.concatenate([rgb, gap, masked, gap, recon], axis=1))
                images.save_png(recon_path, recon)
                rows.append({"image": str(path), "width": rgb.shape[1], "height": rgb.shape[0], "strategy": mask, "ratio": ratio, "shifted_tilings": shift,
                             "blend": {"prediction": a, "long_fill": b, "short_fill": 1 - a - b},
                             "panel": str(panel_path), "reconstructed": str(recon_path), **images.image_scores(rgb, recon)})
            except MaskvitError as e:
                if len(paths) == 1:
                    raise  # one picture: its own error says it all
                err_console.print(f"error: {e}", markup=False, highlight=False, soft_wrap=True)
                failures.append(str(path))
    return rows, failures


def _output_names(paths: list[Path]) -> list[str]:
    """Each picture's name for its outputs: its stem, numbered where another picture has the same
    (a/x.png and b/x.jpg give x and x-2), so no picture's outputs overwrite another's."""
    stems, names = {p.stem for p in paths}, []
    for path in paths:
        name, k = path.stem, 1
        while name in names or (k > 1 and name in stems):
            k += 1
            name = f"{path.stem}-{k}"
        names.append(name)
    return names


def _images_table(rows: list[dict]) -> Table:
    table = Table(title="reconstructions")
    for col in ("image", "size", "mask", "MSE", "PSNR dB", "SSIM", "model weight", "panel"):
        table.add_column(col, justify="right" if col in ("MSE", "PSNR dB", "SSIM", "model weight") else "left", overflow="fold")
    for r in rows:
        table.add_row(Path(r["image"]).name, f"{r['width']}x{r['height']}", f"{r['strategy']} {r['ratio']:.2f}", f"{r['mse']:.5f}",
                      f"{r['psnr']:.2f}", f"{r['ssim']:.4f}", f"{r['blend']['prediction']:.2f}", Path(r["panel"]).name)
    return table


@app.command()
def reconstruct(
    paths: list[Path] = typer.Argument(..., metavar="IMAGE...", help="PNG, JPEG, BMP, GIF or WebP files of any size."),
    mask: str = PictureMaskOpt,
    ratio: float = RatioOpt,
    model_path: Optional[Path] = PictureModelOpt,
    output: Path = typer.Option(Path("reconstructions"), "--output", help="Folder for the panels and reconstructions."),
    seed: int = MaskSeedOpt,
    json_path: Optional[Path] = typer.Option(None, "--json", help="Also write per-image metrics to this JSON file."),
    shift: bool = typer.Option(True, "--shift/--no-shift", help="Also predict from tilings shifted by half a tile, so patches on tile borders get context (default); --no-shift for pictures that are grids of unrelated 32x32 images, such as CIFAR-10 mosaics."),
    calibrate: bool = typer.Option(True, "--calibrate/--no-calibrate", help="Blend the model's prediction with smooth (biharmonic) fills, weighted by how well each restores extra patches hidden from the picture's own visible ones (default; the model's weight is printed); --no-calibrate: the model's prediction alone."),
):
    """Hide patches of your own images and reconstruct them (32x32 tiles, 4x4 patches)."""
    from . import masking, models
    from .files import ensure_folder, output_file, write_json

    masking.check(mask, ratio)
    firsts = {}  # a picture named twice is done once
    for path in paths:
        firsts.setdefault(path.resolve(), path)
    paths = list(firsts.values())
    if mask in (*masking.SCORED, "mixed"):  # mixed: a picture would get one of three strategies at a ratio it does not report
        why = ("mixed draws a strategy and a ratio per batch, for training" if mask == "mixed"
               else "those masks are ranked on CIFAR-10 test images by evaluate and compare")
        raise MaskvitError(f"reconstruct cannot hide {mask} patches: {why}; choose random, row, column or block")
    json_path = json_path and output_file(json_path, "--json")
    model_path = model_path or models.PICTURE_MODEL
    net = models.load(model_path)
    new_folders = [p for p in (output, *output.parents) if not p.exists()]  # deepest first
    ensure_folder(output)  # first, so that a bad --output fails before the work
    try:
        rows, failures = _reconstruct_files(net, paths, mask, ratio, seed, output, shift, calibrate)
    finally:
        for folder in new_folders:  # no picture could be read: leave no empty folders behind
            if any(folder.iterdir()):
                break
            folder.rmdir()
    if rows:
        console.print(_images_table(rows))
        console.print(f"outputs in {output}/")
    if json_path:
        write_json(json_path, {"model": models.fingerprint(model_path), "images": rows, "failed": failures})
    if failures:
        raise MaskvitError(f"{len(failures)} of {len(paths)} images could not be read: {', '.join(failures)}")


@app.command()
def demo(
    output: Path = typer.Option(Path("maskvit-demo"), "--output", help="Folder for the demo's pictures and results."),
    model_path: Optional[Path] = ModelOpt,
):
    """The main job, with nothing to download: the shipped picture model reconstructs packaged
    pictures and the shipped model is scored on the 256 CIFAR-10 test images packaged with maskvit
    (--model: one model for both)."""
    from skimage import data as skdata

    from . import data as data_mod
    from . import images, models
    from .evaluate import evaluate as score
    from .files import ensure_folder, write_json

    cifar_path, picture_path = model_path or models.DEFAULT_MODEL, model_path or models.PICTURE_MODEL
    net = models.load(cifar_path)
    picture_net = net if model_path else models.load(picture_path)
    inputs = ensure_folder(output / "inputs")
    sample, _ = data_mod.load_split("test", data_mod.SAMPLE)
    mosaic = sample[:64].reshape(8, 8, 32, 32, 3).transpose(0, 2, 1, 3, 4).reshape(256, 256, 3)
    pictures = {"cifar10_test_mosaic.png": mosaic, "chelsea_cat.png": skdata.chelsea(), "coffee.png": skdata.coffee()}
    for name, array in pictures.items():
        images.save_png(inputs / name, array)
    rows = []
    for strategy in ("random", "row", "column"):
        for name in pictures:  # the mosaic's tiles are unrelated images: no context across them
            rows += _reconstruct_files(picture_net, [inputs / name], strategy, 0.5, 0, output, shift=name != "cifar10_test_mosaic.png")[0]
    console.print(_images_table(rows))
    results = [score(net, sample, strategy, 0.5) for strategy in ("random", "row", "column")]
    console.print(_metrics_table(f"{cifar_path.resolve().name} on the packaged CIFAR-10 test sample", results))
    write_json(output / "demo.json", {"model": models.fingerprint(cifar_path), "picture_model": models.fingerprint(picture_path), "pictures": rows,
                                      "cifar10_sample": results})
    console.print(f"outputs in {output}/: *_panel.png (original | masked | reconstructed), demo.json")


def quiet_tensorflow() -> None:
    """Import TensorFlow with stderr closed: its C++ start-up lines (oneDNN, CUDA probing on a
    machine without a GPU) ignore TF_CPP_MIN_LOG_LEVEL. MASKVIT_TF_LOGS=1 shows them."""
    if os.environ.get("MASKVIT_TF_LOGS"):
        return
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()  # the CUDA probe, while stderr is closed
    except Exception:
        pass  # a broken install shows its error again at the real import, with stderr back
    finally:
        os.dup2(saved, 2)
        os.close(devnull)
        os.close(saved)


def _usage_path(e: typer.TyperException) -> str:
    """The command a usage mistake was made in: `maskvit train --bogus` points to train's help,
    `maskvit --bogus` and `maskvit bogus` to the list of commands."""
    if getattr(e, "ctx", None):
        return e.ctx.command_path
    # An option missing its value fails before its command's context exists.
    given = sys.argv[1] if len(sys.argv) > 1 else ""
    return f"maskvit {given}" if given in typer.main.get_command(app).commands else "maskvit"


def main() -> None:
    """Console entry point: user errors are one line; nothing ends in a bare traceback."""
    if len(sys.argv) == 1:
        sys.argv.append("--help")  # a bare `maskvit` shows its help, not an error
    if not {"--help", "-h", "--version"} & set(sys.argv):
        quiet_tensorflow()
    try:
        # prog_name: usage lines and hints name the command, also under `python -m maskvit`.
        code = app(standalone_mode=False, prog_name="maskvit")  # returns the exit code of --help, typer.Exit and Ctrl-C (130)
    except MaskvitError as e:
        err_console.print(f"{'' if isinstance(e, Interrupted) else 'error: '}{e}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except typer.Abort:
        err_console.print("aborted", markup=False)
        sys.exit(130)
    except typer.TyperException as e:  # bad command-line usage: unknown option, "abc" for a number...
        err_console.print(f"error: {e.format_message()} (see {_usage_path(e)} --help)", markup=False, highlight=False, soft_wrap=True)
        sys.exit(e.exit_code)
    except Exception as e:  # a bug: keep the traceback, show one line
        fd, log = tempfile.mkstemp(prefix="maskvit-error-", suffix=".log")
        with os.fdopen(fd, "w") as f:
            traceback.print_exc(file=f)
        first = (str(e).splitlines() or [""])[0][:300]  # TensorFlow errors can span pages
        err_console.print(f"error: unexpected {type(e).__name__}: {first} (traceback in {log})", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    if code == 130:  # Typer ends a Ctrl-C with this code and no word
        err_console.print("interrupted", markup=False)
    sys.exit(code if isinstance(code, int) else 0)
