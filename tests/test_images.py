import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from maskvit import images, inpaint, masking, models


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("m") / "tiny.keras"
    models.build("mae", depth=1, decoder_depth=1).save(path)
    return path


def photo(h=45, w=70):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // w, y * 255 // h, (x + y) % 256], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("mode, suffix", [("RGB", ".png"), ("L", ".jpg"), ("RGBA", ".webp"), ("P", ".gif"), ("RGB", ".bmp"), ("I;16", ".png")])
def test_reads_any_mode_as_rgb(tmp_path, mode, suffix):
    rgb = photo()
    if mode == "I;16":
        img = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)  # 16-bit grey, full range
    else:
        img = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"pic{suffix}"
    img.save(path)
    out = images.read_rgb(path)
    assert out.shape == (45, 70, 3) and out.dtype == np.uint8
    if mode == "I;16":
        np.testing.assert_array_equal(out[..., 0], rgb[..., 0])  # scaled, not clipped to 255/65535


def test_tiles_round_trip_and_ssim_matches_skimage():
    rgb = photo(101, 67)
    tiles, grid = images.to_tiles(rgb)
    assert grid == (4, 3) and tiles.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(images.from_tiles(tiles, grid, rgb.shape), rgb)
    other = np.roll(rgb, 3, axis=1)
    expected = structural_similarity(rgb / 255.0, other / 255.0, win_size=7, channel_axis=-1, data_range=1.0)
    assert images.ssim_large(rgb, other, strip=16) == pytest.approx(expected, abs=1e-12)


def test_reconstruction_keeps_visible_pixels_and_size(model_file):
    rgb = photo(50, 77)
    masked, recon, _ = images.reconstruct_image(models.load(model_file), rgb, "row", 0.5, seed=0, batch_size=2)
    assert recon.shape == rgb.shape and masked.shape == rgb.shape
    visible = masked != 128  # hidden patches are shown grey in the masked view
    assert (recon[visible] == rgb[visible]).mean() > 0.99




def test_hidden_pixels_average_the_shifted_tilings_by_centrality(model_file):
    """A hidden pixel is the mean of the four tilings' predictions (the tiles drawn on, and copies
    shifted by half a tile), each weighted by its distance to its tile's edge."""
    net = models.load(model_file)
    rgb = photo(64, 64)
    seed = next(s for s in range(100) if masking.make_masks("random", 0.5, 4, [s, 0]).numpy()[0].reshape(8, 8)[7, 7])
    masks = masking.make_masks("random", 0.5, 4, [seed, 0]).numpy()  # tiles 0 1 / 2 3 of the 64x64 image
    hidden = np.block([[np.kron(masks[0].reshape(8, 8), np.ones((4, 4))), np.kron(masks[1].reshape(8, 8), np.ones((4, 4)))],
                       [np.kron(masks[2].reshape(8, 8), np.ones((4, 4))), np.kron(masks[3].reshape(8, 8), np.ones((4, 4)))]]).astype(bool)
    _, recon, _ = images.reconstruct_image(net, rgb, "random", 0.5, seed=seed, calibrate=False)

    def predicted(y, x):  # the 32x32 window at (y, x), reconstructed on its own with the same hidden pixels
        window = rgb[y : y + 32, x : x + 32][None] / np.float32(255)
        return np.round(net.reconstruct(window, hidden[y : y + 32 : 4, x : x + 32 : 4].reshape(1, 64)).numpy()[0] * 255)

    # Pixel (29, 29): 2 from the edge of its own tile, 13 from the edge of the tile shifted by 16.
    parts = [(predicted(0, 0)[29, 29], 2.5 * 2.5), (predicted(16, 16)[13, 13], 13.5 * 13.5),
             (predicted(0, 16)[29, 13], 2.5 * 13.5), (predicted(16, 0)[13, 29], 13.5 * 2.5)]
    expected = sum(p * w for p, w in parts) / sum(w for _, w in parts)
    assert np.abs(recon[29, 29] - expected).max() <= 1  # batches of another size may round differently
    assert np.abs(recon[29, 29] - parts[0][0]).max() > 1  # not the unshifted tile's prediction alone
    _, single, _ = images.reconstruct_image(net, rgb, "random", 0.5, seed=seed, shift=False, calibrate=False)  # grids of unrelated images
    assert np.abs(single[29, 29] - parts[0][0]).max() <= 1
    _, one_tile, _ = images.reconstruct_image(net, rgb[:32, :32], "random", 0.5, seed=seed, calibrate=False)  # nothing to shift over
    assert np.abs(one_tile.astype(int) - predicted(0, 0)).max() <= 1


def test_bands_change_nothing(model_file, monkeypatch):
    """A picture is reconstructed a few tile rows at a time (bounded memory); the shifted tiles on
    a band's border are predicted for both bands, and the result is that of one band."""
    net, rgb = models.load(model_file), photo(150, 70)
    whole = images.reconstruct_image(net, rgb, "column", 0.5, seed=3, calibrate=False).image
    monkeypatch.setattr(images, "BAND", 1)
    np.testing.assert_array_equal(images.reconstruct_image(net, rgb, "column", 0.5, seed=3, calibrate=False).image, whole)


class HalfwayModel:
    """A stand-in model that cheats: its prediction is halfway between the truth and the short
    fill, so the blend that restores the truth is f + 2 (m - f), with no long fill."""

    def reconstruct_and_fill(self, images, mask):
        fill = masking.composite(images, inpaint.smooth_fill(images, mask), mask)
        return (images + fill) / 2, fill


def test_blend_weights_are_the_least_squares_fit_on_visible_pixels():
    rgb = (np.random.default_rng(0).random((96, 96, 3)) * 255).astype(np.uint8)
    tiles, (rows, cols) = images.to_tiles(rgb)
    masks = masking.make_masks("random", 0.5, len(tiles), [0, 0]).numpy()
    a, b = images.blend_weights(HalfwayModel(), images._untile(tiles, rows, cols), rgb.shape, masks, "random", seed=0)
    assert a == pytest.approx(2.0, abs=0.02) and b == pytest.approx(0.0, abs=0.02)  # uint8 rounding aside


@pytest.mark.parametrize("size, passes", [((32, 32), 8), ((64, 96), 2), ((160, 128), 4)])
def test_calibration_sees_about_as_many_tiles_whatever_the_picture_size(size, passes, monkeypatch):
    """A small picture is calibrated whole under several extra masks (one left its weights to
    chance), a large one on crops, each crop or pass with an extra mask of its own. (Budget
    scaled down: 16 tiles, 4 crops of 2x2 tiles.)"""
    for name, value in (("CALIBRATION_TILES", 16), ("CROP", 2), ("CALIBRATION_CROPS", 4)):
        monkeypatch.setattr(images, name, value)
    rgb = (np.random.default_rng(0).random(size + (3,)) * 255).astype(np.uint8)
    tiles, (rows, cols) = images.to_tiles(rgb)
    masks = masking.make_masks("random", 0.5, len(tiles), [0, 0]).numpy()
    seen, tilings = [], images._tiling_tiles

    def recording(canvas, hidden, *args):
        seen.append((canvas.shape, hidden.copy()))
        return tilings(canvas, hidden, *args)

    monkeypatch.setattr(images, "_tiling_tiles", recording)
    images.blend_weights(HalfwayModel(), images._untile(tiles, rows, cols), rgb.shape, masks, "random", seed=0)
    assert len(seen) == passes
    assert sum(h.size for _, h in seen) / (32 * 32) <= images.CALIBRATION_TILES
    if rows * cols <= 16:  # whole picture: the same canvas, different extra patches hidden each time
        assert all(shape == (rows * 32, cols * 32, 3) for shape, _ in seen)
        assert len({h.tobytes() for _, h in seen}) == passes


def test_calibration_predicts_all_its_passes_together():
    """Batches hold one hidden count each, so the passes and tilings of a calibration go through
    the model together: one batch per count, not one per count and pass (then batches were a few
    tiles each, and calibration took most of a reconstruction's time)."""
    calls = []

    class Recording(HalfwayModel):
        def reconstruct_and_fill(self, images, mask):
            calls.append(mask.sum(axis=1))
            return super().reconstruct_and_fill(images, mask)

    rgb = (np.random.default_rng(0).random((64, 96, 3)) * 255).astype(np.uint8)
    tiles, (rows, cols) = images.to_tiles(rgb)
    masks = masking.make_masks("random", 0.5, len(tiles), [0, 0]).numpy()
    images.blend_weights(Recording(), images._untile(tiles, rows, cols), rgb.shape, masks, "random", seed=0)
    counts = [set(c.tolist()) for c in calls]
    assert all(len(c) == 1 for c in counts)  # one hidden count per batch
    assert len(calls) == len(set().union(*counts))  # and one batch per count
    assert sum(map(len, calls)) > 8 * len(tiles)  # all 8 passes (6 tiles: 8 passes), each over 4 tilings


@pytest.mark.parametrize("size", [(70, 90), (33, 40)])
def test_calibrated_reconstruction_never_reads_hidden_pixels(model_file, size):
    """Not even through the reflection that pads a picture to whole tiles."""
    net, rgb = models.load(model_file), photo(*size)
    first = images.reconstruct_image(net, rgb, "row", 0.5, seed=1)
    tiles, grid = images.to_tiles(rgb)
    masks = masking.make_masks("row", 0.5, len(tiles), [1, 0])
    hidden = images.from_tiles(masking.pixel_mask(masks).numpy(), grid, rgb.shape).repeat(3, -1)
    tampered = np.where(hidden, 255 - rgb, rgb)
    second = images.reconstruct_image(net, tampered, "row", 0.5, seed=1)
    assert second.weights == first.weights and first.weights != (1.0, 0.0)
    assert first.image.shape == rgb.shape and np.isfinite(first.weights).all()
    np.testing.assert_array_equal(second.image[~hidden], tampered[~hidden])
    np.testing.assert_array_equal(second.image[hidden], first.image[hidden])


def test_a_tile_hidden_whole_by_the_padding_still_reconstructs(model_file):
    """Padding patches that would show hidden pixels are hidden too; here that hides a whole
    tile, which no model can reconstruct: its pixels take the long fill, with no NaN in sight."""
    net, rgb = models.load(model_file), photo(33, 40)
    tiles, grid = images.to_tiles(rgb)
    masks = images._hide_reflections(masking.make_masks("row", 0.5, len(tiles), [5, 0]).numpy(), rgb.shape, grid)
    assert (masks.sum(axis=1) == masking.N_PATCHES).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # NaN cast to uint8 warns
        for calibrate in (False, True):
            result = images.reconstruct_image(net, rgb, "row", 0.5, seed=5, calibrate=calibrate)
            assert result.image.shape == rgb.shape and np.isfinite(result.weights).all()


def make_bad(tmp_path, kind):
    path = tmp_path / f"{kind}.png"
    if kind == "missing":
        return path
    if kind == "directory":
        path.mkdir()
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("this is not an image")
    elif kind == "truncated":
        Image.fromarray(photo(200, 200)).save(path)
        path.write_bytes(path.read_bytes()[:300])
    elif kind == "tiny":
        Image.fromarray(photo(3, 3)).save(path)
    return path


@pytest.mark.parametrize("kind, message", [("missing", "no such file"), ("directory", "is a folder"), ("empty", "empty file"),
                                           ("text", "not an image"), ("truncated", "truncated"), ("tiny", "smaller than one 4x4 patch")])
def test_bad_image_is_reported_and_good_ones_still_processed(kind, message, tmp_path, model_file, cli):
    good = tmp_path / "good.jpg"
    Image.fromarray(photo()).save(good)
    bad = make_bad(tmp_path, kind)
    out_dir = tmp_path / "out"
    code, out, err = cli("reconstruct", bad, good, "--model", model_file, "--output", out_dir,
                         "--json", tmp_path / "r.json", "--mask", "column")
    assert code == 2 and message in err and "Traceback" not in err
    assert all(line.startswith("error: ") for line in err.strip().splitlines())
    assert (out_dir / "good_column50_panel.png").exists() and (out_dir / "good_column50_reconstructed.png").exists()
    result = json.loads((tmp_path / "r.json").read_text())
    assert [r["image"] for r in result["images"]] == [str(good)] and result["failed"] == [str(bad)]
    assert result["model"]["file"] == str(Path(model_file).resolve())
    panel = np.asarray(Image.open(out_dir / "good_column50_panel.png"))
    assert panel.shape[0] == 45 and panel.shape[1] > 3 * 70


def test_unreadable_pictures_leave_no_new_output_folder(tmp_path, model_file, cli):
    bad = make_bad(tmp_path, "text")
    code, out, err = cli("reconstruct", bad, "--model", model_file, "--output", tmp_path / "new" / "out")
    assert code == 2 and "not an image" in err and not (tmp_path / "new").exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    other = tmp_path / "other.png"
    other.write_text("not an image either")
    code, out, err = cli("reconstruct", bad, other, "--model", model_file, "--output", kept)
    assert code == 2 and "2 of 2 images could not be read" in err and kept.is_dir()


def test_pictures_of_one_name_keep_their_own_outputs(tmp_path, model_file, cli):
    for folder, size in (("a", 40), ("b", 48)):
        (tmp_path / folder).mkdir()
        Image.fromarray(photo(size, size)).save(tmp_path / folder / "x.png")
    Image.fromarray(photo(36, 36)).save(tmp_path / "x-2.png")
    pictures = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "x-2.png", tmp_path / "b" / ".." / "a" / "x.png"]
    code, out, err = cli("reconstruct", *pictures, "--model", model_file, "--output", tmp_path / "out", "--json", tmp_path / "r.json",
                         "--no-calibrate")
    assert code == 0, err
    rows = json.loads((tmp_path / "r.json").read_text())["images"]  # a/x.png, named twice, is done once
    assert [(Path(r["image"]), Path(r["panel"]).name, r["width"]) for r in rows] == [
        (pictures[0], "x_random50_panel.png", 40), (pictures[1], "x-3_random50_panel.png", 48), (pictures[2], "x-2_random50_panel.png", 36)]
    for r in rows:  # each panel is its own picture's: original | masked | reconstructed, side by side
        assert Image.open(r["panel"]).size[1] == r["height"] and Image.open(r["reconstructed"]).size == (r["width"], r["height"])


def test_reconstruct_reports_the_blend_and_can_skip_it(tmp_path, model_file, cli):
    picture = tmp_path / "pic.png"
    Image.fromarray(photo(60, 80)).save(picture)
    blends = {}
    for flag in ("--calibrate", "--no-calibrate"):
        code, out, err = cli("reconstruct", picture, "--model", model_file, "--output", tmp_path / flag, "--json", tmp_path / "r.json", flag)
        assert code == 0 and "model weight" in out
        blends[flag] = json.loads((tmp_path / "r.json").read_text())["images"][0]["blend"]
    assert blends["--no-calibrate"] == {"prediction": 1.0, "long_fill": 0.0, "short_fill": 0.0}
    assert blends["--calibrate"] != blends["--no-calibrate"]
    assert sum(blends["--calibrate"].values()) == pytest.approx(1.0)


def test_reconstruct_defaults_to_the_picture_model(tmp_path, cli):
    picture = tmp_path / "pic.png"
    Image.fromarray(photo(40, 40)).save(picture)
    code, out, err = cli("reconstruct", picture, "--no-calibrate", "--output", tmp_path / "out", "--json", tmp_path / "r.json")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["model"]["file"] == str(models.PICTURE_MODEL.resolve())
    assert models.PICTURE_MODEL.resolve() != models.DEFAULT_MODEL.resolve()


def test_reconstruct_rejects_other_architectures(tmp_path, cli):
    import keras

    foreign = tmp_path / "foreign.keras"
    keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Conv2D(3, 3, padding="same")]).save(foreign)
    code, out, err = cli("reconstruct", "x.png", "--model", foreign)
    assert code == 2 and "not a maskvit one" in err


def test_masks_differ_per_tile_but_are_seeded():
    a = masking.make_masks("random", 0.5, 4, [7, 0]).numpy()
    assert len({row.tobytes() for row in a}) == 4


def test_image_scores_match_skimage():
    from skimage.metrics import peak_signal_noise_ratio

    a, b = photo(40, 50), np.roll(photo(40, 50), 2, axis=0)
    scores = images.image_scores(a, b)
    assert scores["psnr"] == pytest.approx(peak_signal_noise_ratio(a / 255.0, b / 255.0, data_range=1), abs=1e-9)
    assert scores["mse"] == pytest.approx(np.mean((a / 255.0 - b / 255.0) ** 2), rel=1e-12)
    assert scores["ssim"] == pytest.approx(structural_similarity(a / 255.0, b / 255.0, win_size=7, channel_axis=-1, data_range=1.0), abs=1e-12)
