"""Any picture in, reconstructions out: decode with Pillow, cover with 32x32 tiles (edges padded
by reflection), mask and reconstruct each tile, crop back. Memory stays bounded for large photos:
tiles go through the model in batches and SSIM is computed in strips."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from scipy import optimize

from . import baselines, inpaint, masking
from .errors import MaskvitError, reason
from .evaluate import SSIM_WIN, ssim_map

TILE = masking.IMAGE


def read_rgb(path) -> np.ndarray:
    """Decode an image file of any mode to uint8 RGB [H,W,3]; transparent areas become white."""
    path = Path(path)
    if path.is_dir():
        raise MaskvitError(f"{path}: is a folder, not an image")
    if not path.is_file():
        raise MaskvitError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise MaskvitError(f"{path}: empty file")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so truncated data fails here
            img = ImageOps.exif_transpose(img)
            if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit grey: scale, do not clip
                grey = np.asarray(img, dtype=np.float64) / 65535.0
                img = Image.fromarray(np.round(np.clip(grey, 0, 1) * 255).astype(np.uint8))
            elif img.mode == "F":
                img = Image.fromarray(np.round(np.clip(np.asarray(img), 0, 1) * 255).astype(np.uint8))
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                background = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(background, img)
            rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise MaskvitError(f"{path}: not an image Pillow can read") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise MaskvitError(f"{path}: damaged or truncated image ({reason(e)})") from None
    if min(rgb.shape[:2]) < masking.PATCH:
        raise MaskvitError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than one {masking.PATCH}x{masking.PATCH} patch")
    return rgb


def _tile(canvas: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[rows*32, cols*32, C] -> [rows*cols, 32, 32, C], row-major."""
    return canvas.reshape(rows, TILE, cols, TILE, -1).transpose(0, 2, 1, 3, 4).reshape(-1, TILE, TILE, canvas.shape[-1])


def _untile(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return tiles.reshape(rows, cols, TILE, TILE, -1).transpose(0, 2, 1, 3, 4).reshape(rows * TILE, cols * TILE, -1)


def _hidden_pixels(masks: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Tile masks [rows*cols,64] -> the canvas's hidden pixels [rows*32, cols*32] bool."""
    return _untile(baselines.pixel_mask(masks), rows, cols)[..., 0]


def to_tiles(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """[H,W,3] -> tiles [rows*cols,32,32,3], padding bottom/right by reflection; and (rows, cols)."""
    h, w = image.shape[:2]
    rows, cols = -(-h // TILE), -(-w // TILE)
    padded = np.pad(image, ((0, rows * TILE - h), (0, cols * TILE - w), (0, 0)), mode="symmetric")
    return _tile(padded, rows, cols), (rows, cols)


def from_tiles(tiles: np.ndarray, grid: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    return _untile(tiles, *grid)[: shape[0], : shape[1]]


def ssim_large(a: np.ndarray, b: np.ndarray, strip: int = 64) -> float:
    """skimage's structural_similarity(win_size=7, channel_axis=-1, data_range=1.0) of two uint8
    [H,W,3] images, computed over strips of rows so a 12-megapixel photo needs little memory.

    Each strip is filtered with a margin of 3 rows on each side, so its rows see the same 7x7
    windows as in the whole image; only the image's true border uses reflection, as skimage."""
    h = a.shape[0]
    if min(a.shape[:2]) < SSIM_WIN:
        return float("nan")  # skimage refuses images smaller than its window
    pad = (SSIM_WIN - 1) // 2
    total, count = 0.0, 0
    for r0 in range(pad, h - pad, strip):
        r1 = min(r0 + strip, h - pad)
        lo, hi = max(r0 - 2 * pad, 0), min(r1 + 2 * pad, h)  # filter inputs need 3 more rows beyond the margin
        s = ssim_map(a[lo:hi].astype(np.float64) / 255.0, b[lo:hi].astype(np.float64) / 255.0, (SSIM_WIN, SSIM_WIN, 1))
        s = s[r0 - lo : r1 - lo, pad:-pad]
        total, count = total + s.sum(), count + s.size
    return total / count


HALF = TILE // 2
# Weight of a tile's prediction at each row (column): the distance to the tile's edge, so a
# pixel counts most in the tiling that holds it nearest the centre, with context on every side.
EDGE_DISTANCE = np.minimum(np.arange(TILE), TILE - 1 - np.arange(TILE)) + 0.5
TILE_WEIGHT = np.outer(EDGE_DISTANCE, EDGE_DISTANCE).astype(np.float32)[..., None]  # [32,32,1]


class Reconstruction(NamedTuple):
    masked: np.ndarray  # uint8 [H,W,3], hidden patches grey
    image: np.ndarray  # uint8 [H,W,3], visible pixels original, hidden ones reconstructed
    weights: tuple[float, float]  # (a, b) of the calibrated blend; (1, 0): the model's prediction alone


BAND = 16  # tile rows reconstructed at a time: memory stays bounded whatever the picture's height


def reconstruct_image(model, image: np.ndarray, strategy: str, ratio: float, seed: int, batch_size: int = 512, on_batch=None,
                      shift: bool = True, calibrate: bool = True) -> Reconstruction:
    """Mask every 32x32 tile of a uint8 [H,W,3] image with the strategy and reconstruct the hidden
    patches.

    A patch near a tile's edge has context on one side only, so the image is also cut into three
    tilings shifted by half a tile (down, right, both), each tile carrying the same hidden pixels,
    and a hidden pixel is the mean of the four predictions weighted by their distance to the
    tile's edge. On photographs this gained 1.0 dB over a single tiling (0.7 dB when taking only
    the most central prediction). An axis one tile long is not shifted: the shifted tiles would
    hold only reflections of the same tile (measured 0.2 dB worse on single CIFAR-10 images).
    shift=False: one tiling, for pictures that are grids of unrelated 32x32 images.

    calibrate: a hidden pixel becomes f + a * (m - f) + b * (g - f): m the model's prediction,
    f the tile's short smooth fill (the one mae-refine sees), g the picture's own long fill
    (inpaint.fill_picture), with (a, b) from `blend_weights`. calibrate=False: m alone.

    The picture is reconstructed in bands of BAND tile rows (a shifted tile on a band's border is
    predicted for both bands), so beyond the picture itself and its mask, memory does not grow
    with its height (4000x3000: 1.6 GB peak in all)."""
    tiles, (rows, cols) = to_tiles(image)
    masks = _hide_reflections(masking.make_masks(strategy, ratio, len(tiles), [seed, 0]).numpy(), image.shape, (rows, cols))
    canvas, hidden = _untile(tiles, rows, cols), _hidden_pixels(masks, rows, cols)
    del tiles
    weights = blend_weights(model, canvas, image.shape, masks, strategy, seed, batch_size, shift) if calibrate else (1.0, 0.0)
    bands = [(r, min(r + BAND, rows)) for r in range(0, rows, BAND)]
    plans = [_tilings_plan(rows, cols, band, shift) for band in bands]
    tile_counts = [sum(n * (cols + dx) for _, dx, _, n in plan) for plan in plans]  # for progress
    total, done = sum(tile_counts), 0
    out = canvas.copy()
    for (r0, r1), plan, count in zip(bands, plans, tile_counts):
        here = slice(r0 * TILE, r1 * TILE)
        predicted, *fill = _tilings(model, canvas, hidden, (r0, r1), plan, batch_size, lambda n: on_batch and on_batch(done + n, total), calibrate)
        done += count
        missing = np.isnan(predicted[:, 0])  # rare: small pictures whose padding hid a whole tile
        if calibrate or missing.any():
            long_fill = inpaint.fill_picture(canvas, hidden, here)[hidden[here]]
        if calibrate:  # f + a (m - f) + b (g - f)
            predicted = fill[0] + weights[0] * (predicted - fill[0]) + weights[1] * (long_fill - fill[0])
        if missing.any():
            predicted[missing] = long_fill[missing]
        out[here][hidden[here]] = np.round(np.clip(predicted, 0, 255)).astype(np.uint8)
    masked = np.where(hidden[..., None], np.uint8(128), canvas)
    h, w = image.shape[:2]
    return Reconstruction(masked[:h, :w], out[:h, :w], weights)


def _hide_reflections(masks: np.ndarray, shape: tuple[int, ...], grid: tuple[int, int]) -> np.ndarray:
    """The canvas beyond the picture's bottom and right edges is the picture reflected, so a
    visible patch there can show hidden pixels: hide such patches too. They are cropped away,
    and the picture's own patches keep their masks. (Filling them with a flat colour instead
    cost 0.4-0.9 dB on a 500x500 drawing: false edges beside the border tiles.)"""
    (h, w), (rows, cols) = shape[:2], grid
    hidden = _hidden_pixels(masks, rows, cols)
    source_rows, source_cols = _source(h, 0, rows * TILE - h), _source(w, 0, cols * TILE - w)  # where each canvas pixel comes from
    shows_hidden = hidden[source_rows][:, source_cols] & ~hidden  # [rows*32, cols*32]
    per_patch = shows_hidden.reshape(rows, TILE // masking.PATCH, masking.PATCH, cols, TILE // masking.PATCH, masking.PATCH).any(axis=(2, 5))
    return masks | per_patch.transpose(0, 2, 1, 3).reshape(rows * cols, masking.N_PATCHES)


def _tilings_plan(rows: int, cols: int, band: tuple[int, int], shift: bool) -> list[tuple[int, int, int, int]]:
    """The tiles that cover tile rows [band[0], band[1]) of a rows x cols canvas: per tiling
    (dy, dx), its first tile row and row count. A tiling shifted by half a tile starts half a
    tile early and has one more row (column) than the canvas."""
    shifts = [(0, 1) if shift and n > 1 else (0,) for n in (rows, cols)]
    return [(dy, dx, band[0], band[1] + dy - band[0]) for dy in shifts[0] for dx in shifts[1]]


def _source(n: int, before: int, after: int) -> np.ndarray:
    """For each position of an axis of length n padded by reflection (np.pad's "symmetric"
    mode), the index it copies."""
    return np.pad(np.arange(n), (before, after), mode="symmetric")


def _tilings(model, canvas: np.ndarray, hidden: np.ndarray, band: tuple[int, int], plan, batch_size: int, on_batch,
             with_fill: bool) -> list[np.ndarray]:
    """The model's composite (and with_fill, the short fill's) at the hidden pixels of tile rows
    [band[0], band[1]) of the canvas, averaged over the tilings of `plan` (see _tilings_plan):
    float32 [n_hidden_here,3] each, 0-255 scale, row-major."""
    tiles, masks = _tiling_tiles(canvas, hidden, band, plan)
    outputs, usable = _predict(model, tiles, masks, batch_size, on_batch, with_fill)
    return _merge_tilings(hidden, band, plan, outputs, usable)


def _tiling_windows(hidden: np.ndarray, band: tuple[int, int], plan):
    """Per tiling of `plan`: its canvas rows and columns (reflected beyond the canvas by half a
    tile; patch boundaries stay on the 4-pixel grid), its first canvas row, and its tile grid."""
    rows, cols = hidden.shape[0] // TILE, hidden.shape[1] // TILE
    source_rows, source_cols = _source(rows * TILE, HALF, HALF), _source(cols * TILE, HALF, HALF)
    for dy, dx, t0, n in plan:
        top = t0 * TILE - HALF * dy
        ys = source_rows[HALF + top : HALF + top + n * TILE]
        xs = source_cols[HALF * (1 - dx) : HALF * (1 - dx) + (cols + dx) * TILE]
        yield ys, xs, top, (n, cols + dx)


def _tiling_tiles(canvas: np.ndarray, hidden: np.ndarray, band: tuple[int, int], plan) -> tuple[np.ndarray, np.ndarray]:
    """The tiles of every tiling of `plan`, concatenated: uint8 [n,32,32,3] and their masks [n,64].
    All of them go through the model together: batches hold one hidden count each, so
    predicting tilings (and calibration passes) apart made many tiny batches."""
    tiles, masks = [], []
    for ys, xs, _, grid in _tiling_windows(hidden, band, plan):
        tiles.append(_tile(canvas[ys][:, xs], *grid))
        masks.append(_tile(hidden[ys][:, xs][..., None], *grid)[:, :: masking.PATCH, :: masking.PATCH, 0].reshape(-1, masking.N_PATCHES))
    return np.concatenate(tiles), np.concatenate(masks)


def _merge_tilings(hidden: np.ndarray, band: tuple[int, int], plan, outputs: list[np.ndarray], usable: np.ndarray) -> list[np.ndarray]:
    """Average the tilings' predicted tiles (outputs: uint8 [n,32,32,3] each, in _tiling_tiles'
    order; usable [n]: reconstructed at all) at the hidden pixels of tile rows [band[0], band[1]),
    each weighted by its distance to its tile's edge (see reconstruct_image)."""
    cols = hidden.shape[1] // TILE
    lo_row, hi_row = band[0] * TILE, band[1] * TILE
    first_hidden = np.concatenate([[0], np.cumsum(hidden[lo_row:hi_row].sum(axis=1))])  # per row here: index of its first hidden pixel
    sums = [np.zeros((first_hidden[-1], 3), np.float32) for _ in outputs]  # weighted sums over tilings
    weights = np.zeros(first_hidden[-1], np.float32)
    start = 0
    for (dy, dx, _, n), (_, _, top, grid) in zip(plan, _tiling_windows(hidden, band, plan)):
        here_tiles = slice(start, start + grid[0] * grid[1])
        start = here_tiles.stop
        lo, hi = max(top, lo_row), min(top + n * TILE, hi_row)
        crop = (slice(lo - top, hi - top), slice(HALF * dx, HALF * dx + cols * TILE))
        here, run = hidden[lo:hi], slice(first_hidden[lo - lo_row], first_hidden[hi - lo_row])
        tile_weight = TILE_WEIGHT[None] * usable[here_tiles, None, None, None]  # [n,32,32,1]; 0 where a tile was not reconstructed
        weight = _untile(tile_weight, *grid)[crop][..., 0][here]
        for total_sum, o in zip(sums, outputs):
            total_sum[run] += _untile(o[here_tiles], *grid)[crop][here] * weight[:, None]
        weights[run] += weight
    with np.errstate(invalid="ignore"):  # NaN where no tiling could predict: every tile there hidden whole
        for total_sum in sums:
            total_sum /= weights[:, None]
    return sums


# Calibration: hide this share more of each tile's patches (the same strategy, another seed) and
# see how well the prediction and the fills restore the visible pixels so hidden. A large photo
# is calibrated on CALIBRATION_CROPS crops of CROP x CROP tiles drawn at random, each with its own
# extra mask; a smaller picture whole, under as many extra masks as make about as many tiles (at
# most CALIBRATION_PASSES). One mask on a small picture left the weights to chance: on a 400x300
# drawing at row masks, a and b ranged over 0.00-0.08 and 0.00-1.16 across six seeds.
CALIBRATION_RATIO = 0.25
CROP = 8
CALIBRATION_CROPS = 16
CALIBRATION_TILES = CROP * CROP * CALIBRATION_CROPS
CALIBRATION_PASSES = 8


def blend_weights(model, canvas: np.ndarray, shape: tuple[int, ...], masks: np.ndarray, strategy: str, seed: int,
                  batch_size: int = 512, shift: bool = True) -> tuple[float, float]:
    """The weights a, b >= 0 minimising the squared error of f + a * (m - f) + b * (g - f) on
    this picture's own visible pixels (m, f, g: see reconstruct_image; canvas: the picture of
    `shape` padded to whole tiles, masks: its tiles' masks): some visible patches are
    hidden as well, the picture (whole, under several such extra masks, or crops of it) is
    reconstructed exactly as in reconstruct_image, and (a, b) is the non-negative least-squares
    fit on those patches, all passes or crops pooled.

    Why: the model learnt on CIFAR-10 how far to trust its prediction over the short fill, and on
    other pictures that trust can be off: smooth photographs want more fill, flat-colour
    drawings a converged one (measured in MODEL_CARD.md)."""
    rows, cols = canvas.shape[0] // TILE, canvas.shape[1] // TILE
    grid_masks = masks.reshape(rows, cols, -1)
    if rows * cols <= CALIBRATION_TILES:
        crops = [(0, 0, rows, cols)] * min(CALIBRATION_TILES // (rows * cols), CALIBRATION_PASSES)  # each its own extra mask
    else:
        rng = np.random.default_rng(seed)
        h, w = min(CROP, rows), min(CROP, cols)
        crops = [(y, x, h, w) for y, x in zip(rng.integers(0, rows - h + 1, CALIBRATION_CROPS), rng.integers(0, cols - w + 1, CALIBRATION_CROPS))]
    passes = []  # per crop or pass: its pixels, hidden pixels, extra patches, tilings plan
    for k, (y, x, h, w) in enumerate(crops):
        sub_masks = grid_masks[y : y + h, x : x + w].reshape(h * w, -1)
        extra = masking.make_masks(strategy, CALIBRATION_RATIO, h * w, [seed, 1 + k]).numpy() & ~sub_masks
        if not extra.any():
            continue
        test_masks = sub_masks | extra
        if y + h == rows or x + w == cols:  # the crop holds padding: it must not show the extra patches either
            full = grid_masks.copy()
            full[y : y + h, x : x + w] = test_masks.reshape(h, w, -1)
            full = _hide_reflections(full.reshape(rows * cols, -1), shape, (rows, cols)).reshape(rows, cols, -1)
            test_masks = full[y : y + h, x : x + w].reshape(h * w, -1)
        sub = canvas[TILE * y : TILE * (y + h), TILE * x : TILE * (x + w)]
        inside = np.zeros((TILE * h, TILE * w), bool)  # the picture itself, not the padding: only it is scored
        inside[: shape[0] - TILE * y, : shape[1] - TILE * x] = True
        passes.append((sub, _hidden_pixels(test_masks, h, w), _hidden_pixels(test_masks & ~sub_masks, h, w) & inside, _tilings_plan(h, w, (0, h), shift)))
    if not passes:
        return 1.0, 0.0
    # All passes' tiles through the model at once (see _tiling_tiles), then each pass on its own.
    tiles, masks = zip(*(_tiling_tiles(sub, hidden, (0, sub.shape[0] // TILE), plan) for sub, hidden, _, plan in passes))
    outputs, usable = _predict(model, np.concatenate(tiles), np.concatenate(masks), batch_size, lambda n: None, with_fill=True)
    columns, target, start = [], [], 0
    for (sub, hidden, held, plan), count in zip(passes, map(len, tiles)):
        part, start = slice(start, start + count), start + count
        predicted, fill = _merge_tilings(hidden, (0, sub.shape[0] // TILE), plan, [o[part] for o in outputs], usable[part])
        long_fill = inpaint.fill_picture(sub, hidden)[hidden]
        held = held[hidden] & ~np.isnan(predicted[:, 0])  # the extra patches among the hidden pixels (NaN: a tile hidden whole)
        truth = sub[hidden][held].astype(np.float64)
        columns.append(np.stack([predicted[held] - fill[held], long_fill[held] - fill[held]], axis=-1).reshape(-1, 2))
        target.append((truth - fill[held]).ravel())
    a, b = optimize.nnls(np.concatenate(columns), np.concatenate(target))[0]
    return float(a), float(b)


def _predict(model, tiles: np.ndarray, masks: np.ndarray, batch_size: int, on_batch, with_fill: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """Reconstruct uint8 tiles [n,32,32,3] under masks [n,64] that may hide different counts: one
    count per batch, since the mae model drops the hidden patches. Returns the composites as
    uint8 tiles ([model's], or [model's, smooth fill's] with_fill), and which tiles were usable:
    tiles with nothing or everything hidden are left as they are."""
    counts = masks.sum(axis=1)
    usable = (counts > 0) & (counts < masking.N_PATCHES)
    outs, done = [tiles.copy() for _ in range(1 + with_fill)], int((~usable).sum())
    for count in np.unique(counts[usable]):
        index = np.flatnonzero(counts == count)
        for i in range(0, len(index), batch_size):
            j = index[i : i + batch_size]
            x = tiles[j].astype(np.float32) / 255.0
            result = model.reconstruct_and_fill(x, masks[j]) if with_fill else (model.reconstruct(x, masks[j]),)
            for o, r in zip(outs, result):
                o[j] = np.round(r.numpy() * 255).astype(np.uint8)
            done += len(j)
            on_batch(done)
    return outs, usable


def image_scores(original: np.ndarray, reconstructed: np.ndarray) -> dict:
    """MSE, PSNR and SSIM of two uint8 [H,W,3] images, on the [0,1] scale (exact integer error
    sums, over strips of rows: a 12-megapixel photo's memory stays small)."""
    squared = 0
    for r in range(0, original.shape[0], 256):
        diff = original[r : r + 256].astype(np.int32) - reconstructed[r : r + 256]
        squared += int(np.square(diff).sum(dtype=np.int64))
    mse = squared / (255.0**2 * original.size)
    return {"mse": mse, "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"), "ssim": ssim_large(original, reconstructed)}


def save_png(path, array: np.ndarray) -> None:
    from .files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
