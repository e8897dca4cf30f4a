import json

import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from maskvit import images, masking, models


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
    masked, recon = images.reconstruct_image(models.load(model_file), rgb, "row", 0.5, seed=0, batch_size=2)
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
    _, recon = images.reconstruct_image(net, rgb, "random", 0.5, seed=seed)

    def predicted(y, x):  # the 32x32 window at (y, x), reconstructed on its own with the same hidden pixels
        window = rgb[y : y + 32, x : x + 32][None] / np.float32(255)
        return np.round(net.reconstruct(window, hidden[y : y + 32 : 4, x : x + 32 : 4].reshape(1, 64)).numpy()[0] * 255)

    # Pixel (29, 29): 2 from the edge of its own tile, 13 from the edge of the tile shifted by 16.
    parts = [(predicted(0, 0)[29, 29], 2.5 * 2.5), (predicted(16, 16)[13, 13], 13.5 * 13.5),
             (predicted(0, 16)[29, 13], 2.5 * 13.5), (predicted(16, 0)[13, 29], 13.5 * 2.5)]
    expected = sum(p * w for p, w in parts) / sum(w for _, w in parts)
    assert np.abs(recon[29, 29] - expected).max() <= 1  # batches of another size may round differently
    assert np.abs(recon[29, 29] - parts[0][0]).max() > 1  # not the unshifted tile's prediction alone
    _, single = images.reconstruct_image(net, rgb, "random", 0.5, seed=seed, shift=False)  # grids of unrelated images
    assert np.abs(single[29, 29] - parts[0][0]).max() <= 1
    _, one_tile = images.reconstruct_image(net, rgb[:32, :32], "random", 0.5, seed=seed)  # nothing to shift over
    assert np.abs(one_tile.astype(int) - predicted(0, 0)).max() <= 1


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
    panel = np.asarray(Image.open(out_dir / "good_column50_panel.png"))
    assert panel.shape[0] == 45 and panel.shape[1] > 3 * 70


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
