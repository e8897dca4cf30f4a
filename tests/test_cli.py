"""The real `maskvit` entry point, run in-process: results, exit codes and one-line errors."""

import hashlib
import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import TINY, tiny_flag
import maskvit
from maskvit import models




def test_train_then_evaluate(fake_archive, tmp_path, cli):
    out_dir = tmp_path / "models"
    code, out, err = cli("train", "--recipe", "seed", "--mask", "row", "--ratio", "0.5", "--epochs", "2", "--batch-size", "32",
                         *tiny_flag("seed"), "--val-size", "40", "--data", fake_archive, "--output", out_dir)
    assert code == 0, err
    assert "epoch 2/2" in out and "val_loss" in out
    # What is being trained, said before the data is read (the rate scaled to the batch: 1e-3 x sqrt(32/128)).
    assert out.startswith("training seed (dim=32, depth=1, heads=2, mlp_dim=64): seed recipe (adam 0.0005, float32, batch 32, mse loss), row 0.50 masks, 2 epochs\n"
                          f"data: {fake_archive.resolve()}; files: {out_dir / 'seed_row50'}_*\n")
    record = json.loads((out_dir / "seed_row50_run.json").read_text())
    assert record["config"]["mask"] == "row" and record["n_train"] == 160 and record["n_val"] == 40
    assert len(record["history"]["val_loss"]) == 2 and record["best"]["epoch"] in (1, 2)
    assert record["history"]["val_loss"][record["best"]["epoch"] - 1] == min(record["history"]["val_loss"])
    for kind in ("best", "final"):
        assert isinstance(models.load(out_dir / f"seed_row50_{kind}.keras"), models.SeedViT)
    assert not list(out_dir.glob(".*tmp*"))  # no temporary files left behind

    result_path = tmp_path / "result.json"
    code, out, err = cli("evaluate", out_dir / "seed_row50_best.keras", "--mask", "column", "--ratio", "0.3",
                         "--data", fake_archive, "--json", result_path, "--limit", "30")
    assert code == 0, err
    written = json.loads(result_path.read_text())
    # Which weights and data: enough to tell this result from another model file of the same name.
    best = out_dir / "seed_row50_best.keras"
    assert written["model"] == {"file": str(best.resolve()), "sha256": hashlib.sha256(best.read_bytes()).hexdigest()}
    assert written["data"] == str(fake_archive.resolve())
    result = written["rows"][0]
    assert result["strategy"] == "column" and result["effective_ratio"] == 0.25 and result["n_images"] == 30
    for metric in ("mse", "psnr", "ssim", "masked_mse", "masked_psnr"):
        low, high = result[metric]["ci95"]
        assert low <= result[metric]["mean"] <= high
    assert "PSNR" in out


def test_evaluate_on_embedded_sample(tmp_path, cli, thread_setup_calls):
    path = tmp_path / "m.keras"
    models.build("mae").save(path)
    results = tmp_path / "new" / "folder"  # results files may name folders that do not exist yet
    code, out, err = cli("evaluate", path, "--data", "sample", "--limit", "16", "--json", results / "r.json", "--csv", results / "r.csv")
    assert code == 0, err
    assert "random" in out and "16" in out
    assert thread_setup_calls == [1]  # inference spread as one batch per core
    assert json.loads((results / "r.json").read_text())["rows"][0]["n_images"] == 16
    assert (results / "r.csv").read_text().count("\n") == 2


def test_evaluate_names_the_shipped_model_by_its_file(cli, tmp_path, monkeypatch):
    """Not by the package's link to it, assets/default.keras; in the table and in the JSON."""
    monkeypatch.setenv("MASKVIT_DATA", "sample")
    code, out, err = cli("evaluate", "--limit", "8", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert "maskvit_refine_decoder128.keras on CIFAR-10 test" in out and "default.keras" not in out
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["model"]["file"].endswith("saved_models/maskvit_refine_decoder128.keras") and len(written["model"]["sha256"]) == 64
    assert written["data"] == "sample" and written["seconds"] > 0  # named by the environment, recorded all the same


@pytest.mark.parametrize("args, message", [
    (["train", "--ratio", "1.5"], "strictly between 0 and 1"),
    (["train", "--ratio", "0"], "strictly between 0 and 1"),
    (["train", "--ratio", "1"], "strictly between 0 and 1"),
    (["train", "--ratio", "-0.2"], "strictly between 0 and 1"),
    (["train", "--ratio", "nan"], "strictly between 0 and 1"),
    (["train", "--ratio", "abc"], "Invalid value for '--ratio'"),
    (["train", "--mask", "diagonal"], "unknown mask strategy 'diagonal'"),
    (["train", "--model", "resnet"], "unknown model 'resnet'"),
    (["train", "--epochs", "0"], "--epochs must be at least 1"),
    (["train", "--epochs", "-1"], "--epochs must be at least 1"),
    (["train", "--batch-size", "0"], "--batch-size must be at least 1"),
    (["train", "--recipe", "magic"], "unknown recipe"),
    (["train", "--loss", "l1"], "unknown loss 'l1'"),
    (["train", "--name", "../escape"], "--name must be a plain file prefix"),
    (["train", "--scorer", "x.keras"], "--scorer ranks patches for importance masks"),
    (["train", "--strategy", "ring"], "unknown distribution strategy 'ring'"),
    (["train", "--zoom", "0.5"], "--zoom must be between 1"),
    (["train", "--init", "missing.keras"], "--init missing.keras: no such model file"),
    (["train", "--hparams", "depht=2"], "unknown hyper-parameter 'depht' for the mae-refine model"),
    (["train", "--model", "seed", "--hparams", "decoder_depth=1"], "unknown hyper-parameter 'decoder_depth' for the seed model"),
    (["train", "--hparams", "dim=30"], "dim=30 does not split over heads=4"),
    (["train", "--hparams", "depth=0"], "depth=0: must be a whole number from 1"),
    (["train", "--hparams", "depth=2.5"], "depth='2.5' is not a whole number"),
    (["train", "--hparams", "dropout=1"], "dropout=1.0: must be in [0, 1)"),
    (["train", "--hparams", "depth"], "'depth' is not key=value"),
    (["train", "--data", "/nonexistent/cifar.tar.gz"], "no such file or folder"),
    (["evaluate", "/nonexistent/model.keras"], "no such model file"),
    (["evaluate", "."], ".: is a folder; name a .keras model file in it"),
    (["evaluate", "MODEL_TEXT"], "not a Keras model file"),
    (["evaluate", "MODEL_TEXT", "--mask", "zigzag"], "unknown mask strategy"),
    # Checked before the work, which would otherwise be lost (run in tmp_path, which holds model.keras).
    (["evaluate", "--data", "sample", "--json", "."], "is a folder; give --json a file name"),
    (["compare", "--data", "sample", "--json", "."], "is a folder; give --json a file name"),
    (["evaluate", "--data", "sample", "--csv", "model.keras/r.csv"], "is a file, not a folder; choose another --csv"),
    (["reconstruct", "x.png", "--mask", "importance"], "reconstruct cannot hide importance patches"),
    (["reconstruct", "x.png", "--mask", "mixed"], "reconstruct cannot hide mixed patches"),
    (["reconstruct", "missing.png"], "missing.png: no such file"),  # one picture: one line, no summary
    # Usage mistakes point to the help of the command they were made in.
    (["frobnicate"], "No such command 'frobnicate'. (see maskvit --help)"),
    (["--bogus"], "No such option: --bogus (see maskvit --help)"),
    (["train", "--bogus"], "(see maskvit train --help)"),
    (["train", "--epochs"], "Option '--epochs' requires an argument. (see maskvit train --help)"),
    (["--bogus", "train"], "(see maskvit --help)"),
    (["evaluate", "--ratio", "half"], "Invalid value for '--ratio'"),
])
def test_bad_input_is_one_line_and_nonzero(args, message, tmp_path, cli, monkeypatch):
    monkeypatch.chdir(tmp_path)  # should a case ever be accepted, it trains there, not in the checkout
    text_model = tmp_path / "model.keras"
    text_model.write_text("not a model")
    args = [str(text_model) if a == "MODEL_TEXT" else a for a in args]
    code, out, err = cli(*args)
    assert code != 0
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith("error: ")
    assert "" not in out.splitlines()  # not even the empty last line of a progress bar


def test_version_is_the_installed_one(cli):
    code, out, err = cli("--version")
    assert code == 0 and not err
    assert out == f"maskvit {importlib.metadata.version('maskvit')}\n" == f"maskvit {maskvit.__version__}\n"


@pytest.mark.parametrize("damage", ["corrupt", "output-is-file"])
def test_bad_files_leave_nothing_behind(damage, fake_archive, tmp_path, cli):
    output = tmp_path / "out"
    if damage == "corrupt":
        fake_archive.write_bytes(fake_archive.read_bytes()[:300])
    else:
        output.write_text("precious")
    code, out, err = cli("train", "--epochs", "1", "--data", fake_archive, "--output", output, "--val-size", "40")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert ("corrupt or truncated" in err) if damage == "corrupt" else ("is a file" in err and output.read_text() == "precious")


def test_default_recipe_is_fast_mae_refine_in_mixed_precision(fake_archive, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("MASKVIT_DATA", str(fake_archive))
    code, out, err = cli("train", "--mask", "mixed", "--epochs", "2", "--batch-size", "32", *tiny_flag("mae-refine"),
                         "--val-size", "40", "--output", tmp_path)
    assert code == 0, err
    record = json.loads((tmp_path / "mae-refine_mixed50_run.json").read_text())
    assert record["config"]["data"] is None and record["data_source"] == str(fake_archive.resolve())
    assert record["config"]["recipe"] == "fast" and record["config"]["model"] == "mae-refine"
    assert record["config"]["precision"] == "bfloat16" and record["config"]["optimizer"] == "muon"
    assert record["config"]["loss"] == "log-mse" and max(record["history"]["val_loss"]) < 0  # a log of MSEs below 1
    lrs = record["history"]["lr"]
    assert lrs[0] < lrs[1]  # linear warm-up over the first epoch
    final = models.load(tmp_path / "mae-refine_mixed50_final.keras")
    assert isinstance(final, models.RefineMAE) and record["config"]["hparams"] == TINY["mae-refine"]
    assert final.hparams == {**models.RefineMAE.DEFAULTS, **TINY["mae-refine"]}


def test_bug_shows_short_message_and_traceback_log(cli, monkeypatch, tmp_path):
    from maskvit import data

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(data, "load_split", broken)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # the log goes here, not into the machine's /tmp
    code, out, err = cli("train", "--epochs", "1", "--output", tmp_path)
    assert code == 1 and "unexpected RuntimeError: simulated bug" in err and len(err.strip().splitlines()) == 1
    log = Path(err.strip().split("traceback in ")[1].rstrip(")"))
    text = log.read_text()
    assert log.parent == tmp_path and "Traceback" in text and "simulated bug" in text


def test_demo_runs_with_the_shipped_model(cli, tmp_path):
    """The README's main job: shipped model, packaged pictures, no download."""
    assert models.DEFAULT_MODEL.exists(), "the shipped model is missing from saved_models/"
    code, out, err = cli("demo", "--output", tmp_path)
    assert code == 0, err
    result = json.loads((tmp_path / "demo.json").read_text())
    # CIFAR-10 is scored with the shipped model, the pictures reconstructed with the picture model.
    assert result["model"]["file"] == str(models.DEFAULT_MODEL.resolve())
    assert result["picture_model"]["file"] == str(models.PICTURE_MODEL.resolve()) != result["model"]["file"]
    assert len(result["pictures"]) == 9 and [r["strategy"] for r in result["cifar10_sample"]] == ["random", "row", "column"]
    assert (tmp_path / "chelsea_cat_row50_panel.png").exists()
    # The shipped model must beat filling the hole with the visible mean by a wide margin.
    assert all(r["psnr"]["mean"] > 20 for r in result["cifar10_sample"])


def test_a_successful_command_writes_nothing_to_stderr(tmp_path):
    """In a process of its own: TensorFlow's C++ log lines bypass pytest's capture. Scoring importance
    masks with the shipped model runs its fill and its input gradients."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "MASKVIT_TF_LOGS")}
    done = subprocess.run([sys.executable, "-m", "maskvit", "evaluate", "--data", "sample", "--limit", "20", "--mask", "importance"],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "importance 0.50" in done.stdout
    assert done.stderr == ""


def test_data_folder_with_a_batch_missing(cli, tmp_path):
    from conftest import cifar_members

    for name, payload in cifar_members().items():
        if not name.endswith("data_batch_4"):
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_bytes(payload)
    code, out, err = cli("train", "--epochs", "1", "--data", tmp_path, "--output", tmp_path / "out")
    assert code == 2 and "data_batch_4: missing" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out" / "mae-refine_random50_run.json").exists()


def test_bare_command_shows_help(cli):
    code, out, err = cli()
    assert code == 0 and "Commands:" in out and "reconstruct" in out and err == ""


def test_readme_library_example_runs(real_data, tmp_path):
    """README's 'As a library' code, as written there, in a process of its own (its own main module)."""
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("## As a library", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.py").write_text(code)
    done = subprocess.run([sys.executable, "example.py"], cwd=tmp_path, env={**os.environ, "MASKVIT_DATA": real_data},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "{'mean': 21.55" in done.stdout  # the shipped model at row 50% on the packaged images, as the comment says
    assert json.loads((tmp_path / "runs" / "mae_mixed50_run.json").read_text())["best"]["epoch"] == 1


@pytest.mark.parametrize("args, message", [
    (["train"], "interrupted; the same command continues from the last completed epoch (--no-resume starts over)\n"),
    (["evaluate", "--data", "sample", "--limit", "4"], "interrupted\n"),
])
def test_ctrl_c_says_so_in_one_line_and_exits_130(args, message, cli, monkeypatch, tmp_path):
    from maskvit import cli as cli_module, train

    monkeypatch.chdir(tmp_path)  # train's default --output lands here

    def interrupt(*_, **__):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "train", interrupt)
    monkeypatch.setattr(cli_module, "_run_grid", interrupt)
    code, out, err = cli(*args)
    assert code == 130 and err == message


def test_an_error_that_ends_training_stops_the_progress_bar(cli, monkeypatch, tmp_path):
    """In a terminal the bar hides the cursor and holds stderr while it runs; whatever ends
    training must stop it, or the user's terminal is left without a cursor."""
    from rich.console import Console
    from rich.file_proxy import FileProxy

    from maskvit import cli as cli_module, train
    from maskvit.errors import MaskvitError

    monkeypatch.setattr(cli_module, "console", Console(file=sys.stdout, force_terminal=True))

    def fail_mid_training(config, progress):
        progress.on_train_begin()
        raise MaskvitError("simulated failure mid-training")

    monkeypatch.setattr(train, "train", fail_mid_training)
    code, out, err = cli("train", "--output", tmp_path)
    assert code == 2 and err == "error: simulated failure mid-training\n"
    assert out.rfind("\x1b[?25l") < out.rfind("\x1b[?25h")  # the cursor hidden, then shown again
    assert not isinstance(sys.stderr, FileProxy)
