"""Baselines, grids, compare and visualize: identical masks, exact skimage agreement, files written."""

import hashlib
import json

import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio
from skimage.restoration import inpaint_biharmonic

from conftest import tiny_flag
from maskvit import baselines, data, evaluate, figures, importance, masking, models


def sample(n):
    return data.load_split("test", data.SAMPLE)[0][:n]


def test_mean_fill_uses_visible_mean_per_channel():
    images = sample(3) / 255.0
    masks = data.fixed_masks("row", 0.5, 3, 0)
    out = baselines.mean_fill(images, masks)
    hidden = masking.pixel_mask(masks).numpy()[..., 0]
    for i in range(3):
        np.testing.assert_allclose(out[i][hidden[i]], np.broadcast_to(images[i][~hidden[i]].mean(axis=0), out[i][hidden[i]].shape), rtol=1e-5)
        np.testing.assert_array_equal(out[i][~hidden[i]], images[i][~hidden[i]].astype(np.float32))


def test_biharmonic_row_agrees_with_independent_skimage():
    images = sample(6)
    rows = evaluate.cell({"biharmonic": "biharmonic"}, images, "random", 0.5, seed=4)
    masks = data.fixed_masks("random", 0.5, 6, 4)
    psnrs = []
    for i in range(6):
        hidden = np.kron(masks[i].reshape(8, 8), np.ones((4, 4), bool))  # an independent pixel mask
        img = images[i] / 255.0
        psnrs.append(peak_signal_noise_ratio(img, inpaint_biharmonic(img, hidden, channel_axis=-1).astype(np.float32), data_range=1))
    assert rows[0]["psnr"]["mean"] == pytest.approx(np.mean(psnrs), abs=1e-4)


@pytest.mark.parametrize("strategy", ["random", "row", "column", "block"])
def test_biharmonic_is_skimages_bit_for_bit(strategy):
    images = sample(12) / 255.0
    for ratio in (0.3, 0.7):
        hidden = baselines.pixel_mask(data.fixed_masks(strategy, ratio, len(images), 1))
        for image, h in zip(images, hidden):
            np.testing.assert_array_equal(baselines.inpaint_biharmonic(image, h), inpaint_biharmonic(image, h, channel_axis=-1))


def test_biharmonic_is_skimages_for_any_size_and_pixels():
    """Scattered hidden pixels on the border and corners, images narrower than the stencil, one or two channels."""
    rng = np.random.default_rng(0)
    for shape in [(5, 7, 1), (9, 4, 3), (3, 3, 2), (32, 32, 3), (17, 11, 3)]:
        for density in (0.2, 0.6):
            image = rng.random(shape)
            hidden = rng.random(shape[:2]) < density
            hidden[0, 0], hidden[-1, -1], hidden[1, 0] = True, True, False
            ours = baselines.inpaint_biharmonic(image, hidden)
            np.testing.assert_array_equal(ours, inpaint_biharmonic(image, hidden, channel_axis=-1))
            assert not np.array_equal(ours[hidden], image[hidden])  # it did fill them


def test_parallel_biharmonic_equals_serial():
    images = sample(8) / 255.0
    masks = data.fixed_masks("column", 0.3, 8, 0)
    np.testing.assert_array_equal(baselines.biharmonic(images, masks, workers=2, chunk=3), baselines.biharmonic(images, masks, workers=1))


def test_grid_gives_every_method_the_same_masks_and_paired_differences():
    images = sample(10)
    net = models.build("mae", depth=1, decoder_depth=1)
    rows = evaluate.grid({"vit": net, "mean": "mean"}, images, ["random", "column"], [0.3, 0.6], on_ranking=lambda: pytest.fail("no importance masks"))
    assert [(r["method"], r["strategy"], r["ratio"]) for r in rows][:4] == [("vit", "random", 0.3), ("mean", "random", 0.3), ("vit", "random", 0.6), ("mean", "random", 0.6)]
    evaluate.add_baseline_differences(rows)
    vit, mean = rows[0], rows[1]
    diff = vit["vs_best_baseline"]["psnr"]
    assert vit["vs_best_baseline"]["baseline"] == "mean"
    assert diff["mean"] == pytest.approx(vit["psnr"]["mean"] - mean["psnr"]["mean"])
    assert "vs_best_baseline" not in mean
    text = evaluate.csv_text(rows)
    assert text.splitlines()[0].startswith("method,strategy,ratio,effective_ratio") and len(text.splitlines()) == 9




def test_compare_and_visualize_write_results(tmp_path, cli, thread_setup_calls, monkeypatch):
    model_path = tmp_path / "tiny.keras"
    models.build("mae", depth=1, decoder_depth=1).save(model_path)
    out = tmp_path / "results"
    code, stdout, err = cli("compare", model_path, "--grid", "--strategies", "random,row,random", "--ratios", "0.3,0.5,0.50",
                            "--data", "sample", "--limit", "12", "--output", out)
    assert code == 0, err
    assert thread_setup_calls == [1]  # inference spread as one batch per core
    result = json.loads((out / "compare.json").read_text())
    # 2 strategies x 2 ratios x 3 methods: a cell named twice is scored once
    assert {r["method"] for r in result["rows"]} == {"tiny", "biharmonic", "mean"} and len(result["rows"]) == 12
    assert all("vs_best_baseline" in r for r in result["rows"] if r["method"] == "tiny")
    # The printed table (piped here, as in a log) holds every row whole, differences included.
    assert "…" not in stdout
    for r in result["rows"]:
        d = r.get("vs_best_baseline")
        assert f"{r['psnr']['mean']:.2f} ±" in stdout and (not d or f"{d['psnr']['mean']:+.2f} [{d['psnr']['ci95'][0]:+.2f}, " in stdout)
    for name in ("compare.csv", "compare_psnr.png", "compare_ssim.png", "summary.md"):
        assert (out / name).stat().st_size > 0
    sha256 = hashlib.sha256(model_path.read_bytes()).hexdigest()
    assert result["models"] == [{"file": str(model_path.resolve()), "sha256": sha256}] and result["data"] == "sample"
    assert f"tiny.keras (sha256 {sha256[:12]})" in (out / "summary.md").read_text()

    losses = []  # the loss kind each run record's curves are drawn for
    draw = figures.training_curves
    monkeypatch.setattr(figures, "training_curves", lambda *a, **k: losses.append(a[3]) or draw(*a, **k))
    shipped = models.DEFAULT_MODEL.resolve()
    shipped_run = shipped.with_name(f"{shipped.stem}_run.json")
    code, stdout, err = cli("visualize", model_path, "--strategies", "row", "--ratios", "0.5", "--n", "3",
                            "--data", "sample", "--output", out, "--run", shipped_run)
    assert code == 0, err
    assert (out / "examples_row50.png").exists() and (out / "curves_psnr.png").exists()
    assert (out / f"training_{shipped_run.stem}.png").exists() and losses == ["log-mse"]

    # One ratio per line gives no curve: say so rather than draw lone dots.
    one_ratio = tmp_path / "one_ratio.json"
    one_ratio.write_text(json.dumps({**result, "rows": [r for r in result["rows"] if r["ratio"] == 0.5]}))
    code, stdout, err = cli("visualize", model_path, "--strategies", "row", "--ratios", "0.5", "--n", "3",
                            "--data", "sample", "--output", tmp_path / "single", "--results", one_ratio)
    assert code == 0, err
    assert "no metric-vs-ratio curves" in stdout and not (tmp_path / "single" / "curves_psnr.png").exists()


@pytest.mark.parametrize("flag, text, message", [
    ("--results", "[1, 2]", "not a maskvit record (its JSON is not an object)"),
    ("--results", '{"rows": [{"method": "vit", "strategy": "row"}]}', "not a compare or evaluate results file"),
    ("--results", '{"model": "vit"}', "not a compare or evaluate results file"),
    ("--run", '{"history": {"loss": [1.0], "val_loss": [], "lr": [0.001]}}', "not a training run record"),
    ("--run", '{"config": {}}', "not a training run record"),
])
def test_visualize_refuses_bad_records_before_drawing(flag, text, message, cli, tmp_path):
    record = tmp_path / "record.json"
    record.write_text(text)
    code, out, err = cli("visualize", flag, record, "--strategies", "row", "--ratios", "0.5", "--data", "sample",
                         "--output", tmp_path / "figures")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "figures").exists()


@pytest.mark.parametrize("args, message", [
    (["compare", "--baselines", "magic"], "unknown baseline 'magic'"),
    (["compare", "--grid", "--ratios", "0.5,1.2"], "strictly between 0 and 1"),
    (["compare", "--grid", "--ratios", "a,b"], "comma-separated list"),
    (["compare", "--grid", "--ratios", ","], "--ratios names none"),
    (["visualize", "--strategies", " , "], "--strategies names none"),
    (["evaluate", "x.keras", "--grid", "--strategies", "random,spiral"], "unknown mask strategy 'spiral'"),
    (["evaluate", "x.keras", "--strategies", "importance"], "--strategies chooses the cells of --grid; add --grid"),
    (["compare", "--ratios", "0.3"], "--ratios chooses the cells of --grid; add --grid"),
    (["evaluate", "x.keras", "--scorer", "y.keras"], "--scorer ranks patches for importance masks; it has no use with random masks"),
    (["compare", "--grid", "--strategies", "row,block", "--scorer", "y.keras"], "it has no use with row, block masks"),
    (["visualize", "--n", "0"], "--n must be between 1 and 64"),
    (["compare", "m.keras", "./m.keras"], "error: m.keras is named twice; name each model once"),
    (["visualize", "a/m.keras", "b/m.keras"], "two models share the file name m; rename one"),
    (["visualize", "--run", "/nonexistent.json", "--ratios", "0.5", "--strategies", "row"], "no such file"),
])
def test_study_commands_reject_bad_input(args, message, cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*args, *(["--data", "sample"] if args[0] != "evaluate" else []))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_importance_masks_follow_the_scorer_gradients():
    images = sample(12)
    net = models.build("mae", depth=1, decoder_depth=1)
    scores = importance.scores(net, images, seed=0, batch_size=5)
    assert scores.shape == (12, 64) and (scores >= 0).all() and scores.std() > 0
    np.testing.assert_allclose(scores, importance.scores(net, images, seed=0), rtol=1e-4, atol=1e-9)  # batch-size free
    least = evaluate.masks_for("importance", 0.3, images, 0, scorer=net)
    most = evaluate.masks_for("importance-most", 0.3, images, 0, scorer=net)
    assert (least.sum(axis=1) == 19).all() and (most.sum(axis=1) == 19).all()
    for i in range(12):  # every hidden patch is less important than every visible one (and vice versa)
        assert scores[i][least[i]].max() <= scores[i][~least[i]].min()
        assert scores[i][most[i]].min() >= scores[i][~most[i]].max()
    events = []
    rows = evaluate.grid({"vit": net, "mean": "mean"}, images, ["importance"], [0.3, 0.5], on_cell=lambda s, r: events.append((s, r)),
                         on_ranking=lambda: events.append("ranking"))
    assert len(rows) == 4 and rows[0]["effective_ratio"] == 19 / 64
    assert events == ["ranking", ("importance", 0.3), ("importance", 0.5)]  # one ranking, before the cells


def test_importance_training_steps_use_the_importance_masks_of_the_current_weights():
    import tensorflow as tf

    net = models.build("mae", depth=1, decoder_depth=1)
    net.compile(optimizer="adam")
    x = tf.constant(sample(6) / 255.0, tf.float32)
    probe = tf.constant(data.fixed_masks("random", 0.5, 6, 3))
    net.remask = importance.masker(net, "importance", 0.3)
    expected = masking.from_scores(importance.probe_scores(net, x, tf.stack([probe, ~probe])), 19)
    assert (expected.numpy().sum(axis=1) == 19).all() and not np.array_equal(expected, probe)
    loss = float(net.test_step(((x, probe), x))["loss"])
    assert loss == pytest.approx(float(models.masked_mse(x, net((x, expected)), expected)), rel=1e-5)
    assert loss != pytest.approx(float(models.masked_mse(x, net((x, probe)), probe)), rel=1e-3)
    before = [w.numpy().copy() for w in net.trainable_weights]
    net.train_step(((x, probe), x))  # the training step applies the same hook, then updates the weights
    assert any(not np.array_equal(a, w.numpy()) for a, w in zip(before, net.trainable_weights))


def test_train_with_importance_masks_from_itself_or_a_scorer(cli, fake_archive, tmp_path):
    common = ["--model", "mae", *tiny_flag("mae"), "--epochs", "1", "--batch-size", "16", "--val-size", "40", "--data", fake_archive, "--output", tmp_path]
    code, out, err = cli("train", "--mask", "importance", "--ratio", "0.3", *common)
    assert code == 0, err
    record = json.loads((tmp_path / "mae_importance30_run.json").read_text())
    assert record["effective_ratio"] == 19 / 64 and record["config"]["scorer"] is None
    scorer = tmp_path / "mae_importance30_final.keras"
    code, out, err = cli("train", "--mask", "importance-most", "--scorer", scorer, *common)
    assert code == 0, err
    assert json.loads((tmp_path / "mae_importance-most50_run.json").read_text())["config"]["scorer"] == str(scorer)
    code, out, err = cli("train", "--mask", "row", "--scorer", scorer, *common)
    assert code == 2 and "--scorer ranks patches for importance masks" in err
    code, out, err = cli("train", "--mask", "importance", "--scorer", tmp_path / "none.keras", *common)
    assert code == 2 and "no such model file" in err


def test_importance_masks_need_a_scorer_in_evaluate():
    from maskvit.errors import MaskvitError

    with pytest.raises(MaskvitError, match="need a model"):
        evaluate.cell({"mean": "mean"}, sample(4), "importance", 0.5)


def test_raw_scoring_counts_the_models_errors_on_visible_patches_too():
    images = sample(8)
    net = models.build("autoencoder")
    composite, raw = (evaluate.cell({"ae": net, "mean": "mean"}, images, "random", 0.5, raw=r) for r in (False, True))
    assert composite[0]["scored"] == "composite" and raw[0]["scored"] == "output" and raw[1]["scored"] == "composite"
    assert raw[0]["mse"]["mean"] > composite[0]["mse"]["mean"] + 1e-4  # plus the errors on visible pixels
    assert raw[0]["masked_mse"]["mean"] == pytest.approx(composite[0]["masked_mse"]["mean"], rel=1e-6)
    assert raw[1]["psnr"] == composite[1]["psnr"]  # baselines are always composites


@pytest.mark.parametrize("loss, values, lr, scales", [
    # The fast recipe: a negative loss (a mean of logarithms) and a warm-up from 0, neither of which a log axis can show.
    ("log-mse", [-4.2, -4.3, -4.35], [0.0, 4e-3, 2e-3], ("linear", "linear")),
    ("mse", [0.04, 0.03, 0.025], [1e-3, 1e-3, 5e-4], ("log", "log")),
])
def test_training_curves_show_every_epoch(loss, values, lr, scales, tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, path: drawn.setdefault("fig", fig))
    figures.training_curves({"loss": values, "val_loss": [v * 0.99 for v in values], "lr": lr}, tmp_path / "t.png", loss=loss)
    loss_axis, lr_axis = drawn["fig"].axes
    assert (loss_axis.get_yscale(), lr_axis.get_yscale()) == scales
    low, high = loss_axis.get_ylim()
    assert low <= min(values) and max(values) <= high  # every point in view
    assert ("log(hidden-pixel MSE)" in loss_axis.get_ylabel()) == (loss == "log-mse")


@pytest.mark.parametrize("name, title", [
    ("maskvit_refine_depth2", "maskvit_refine_\ndepth2"),
    ("autoencoder_mixed", "autoencoder_\nmixed"),
    ("biharmonic", "biharmonic"),
    ("a_very_long_name_without_breaks_x", "a_very_long_\nname_without_\nbreaks_x"),
    ("unbreakable_averyveryverylongword", "unbreakable_\naveryveryverylongword"),
])
def test_example_column_titles_break_after_underscores(name, title):
    assert figures.column_title(name) == title
