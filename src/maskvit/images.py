"""Any picture in, reconstructions out: decode with Pillow, cover with 32x32 tiles (edges padded
by reflection), mask and reconstruct each tile, crop back. Memory stays bounded for large photos:
tiles go through the model in batches and SSIM is computed in strips."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from . import masking
from .errors import MaskvitError
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
        raise MaskvitError(f"{path}: damaged or truncated image ({e})") from None
    if min(rgb.shape[:2]) < masking.PATCH:
        raise MaskvitError(f"{path}: {rgb.shape[1]}x{rgb.shape[0]} is smaller than one {masking.PATCH}x{masking.PATCH} patch")
    return rgb


def _tile(canvas: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """[rows*32, cols*32, C] -> [rows*cols, 32, 32, C], row-major."""
    return canvas.reshape(rows, TILE, cols, TILE, -1).transpose(0, 2, 1, 3, 4).reshape(-1, TILE, TILE, canvas.shape[-1])


def _untile(tiles: np.ndarray, rows: int, cols: int) -> np.ndarray:
    return tiles.reshape(rows, cols, TILE, TILE, -1).transpose(0, 2, 1, 3, 4).reshape(rows * TILE, cols * TILE, -1)


def to_tiles(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """[H,W,3] -> tiles [rows*cols,32,32,3], padding bottom/right by reflection; and (rows, cols)."""
    h, w = image.shape[:2]
    rows, cols = -(-h // TILE), -(-w // TILE)
    padded = np.pad(image, ((0, rows * TILE - h), (0, cols * TILE - w), (0, 0)), mode="symmetric")
    return _tile(padded, rows, cols), (rows, cols)


def from_tiles(tiles: np.ndarray, grid: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    return _untile(tiles, *grid)[: shape[0], : shape[1]]


def ssim_large(a: np.ndarray, b: np.ndarray, strip: int = 256) -> float:
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


def reconstruct_image(model, image: np.ndarray, strategy: str, ratio: float, seed: int, batch_size: int = 512, on_batch=None,
                      shift: bool = True):
    """Mask every 32x32 tile of a uint8 [H,W,3] image with the strategy and reconstruct the hidden
    patches. Returns (masked view, reconstruction), uint8 [H,W,3]; the masked view shows hidden
    patches grey.

    A patch near a tile's edge has context on one side only, so the image is also cut into three
    tilings shifted by half a tile (down, right, both), each tile carrying the same hidden pixels,
    and a hidden pixel is the mean of the four predictions weighted by their distance to the
    tile's edge. On photographs this gained 1.0 dB over a single tiling (0.7 dB when taking only
    the most central prediction). An axis one tile long is not shifted: the shifted tiles would
    hold only reflections of the same tile (measured 0.2 dB worse on single CIFAR-10 images).
    shift=False: one tiling, for pictures that are grids of unrelated 32x32 images."""
    tiles, (rows, cols) = to_tiles(image)
    masks = masking.make_masks(strategy, ratio, len(tiles), [seed, 0]).numpy()
    canvas, hidden = _untile(tiles, rows, cols), _untile(masking.pixel_mask(masks).numpy(), rows, cols)[..., 0]
    # Half a tile of reflection on every side; patch boundaries stay on the 4-pixel grid.
    big = np.pad(canvas, ((HALF, HALF), (HALF, HALF), (0, 0)), mode="symmetric")
    big_hidden = np.pad(hidden, HALF, mode="symmetric")
    shifts = [(0, 1) if shift and n > 1 else (0,) for n in (rows, cols)]
    offsets = [(dy, dx) for dy in shifts[0] for dx in shifts[1]]  # (0, 0): the tiling the masks were drawn on
    total = sum((rows + dy) * (cols + dx) for dy, dx in offsets)
    done = 0
    weighted = np.zeros((int(hidden.sum()), 3), np.float32)  # sums over tilings, hidden pixels only
    weights = np.zeros(len(weighted), np.float32)
    for dy, dx in offsets:
        n_rows, n_cols = rows + dy, cols + dx  # a shifted tiling starts half a tile early and needs one more tile
        y0, x0 = HALF * (1 - dy), HALF * (1 - dx)
        window = (slice(y0, y0 + n_rows * TILE), slice(x0, x0 + n_cols * TILE))
        t_masks = _tile(big_hidden[window][..., None], n_rows, n_cols)[:, ::masking.PATCH, ::masking.PATCH, 0].reshape(-1, masking.N_PATCHES)
        predicted, usable = _predict(model, _tile(big[window], n_rows, n_cols), t_masks, batch_size,
                                     lambda n: on_batch and on_batch(done + n, total))
        done += len(t_masks)
        crop = (slice(HALF - y0, HALF - y0 + rows * TILE), slice(HALF - x0, HALF - x0 + cols * TILE))
        tile_weight = TILE_WEIGHT[None] * usable[:, None, None, None]  # [n,32,32,1]; 0 where a tile was not reconstructed
        weight = _untile(tile_weight, n_rows, n_cols)[crop][..., 0][hidden]
        weighted += _untile(predicted, n_rows, n_cols)[crop][hidden] * weight[:, None]
        weights += weight
    out = canvas.copy()
    out[hidden] = np.round(weighted / weights[:, None]).astype(np.uint8)  # the unshifted tiling is always usable: weights > 0
    masked = np.where(hidden[..., None], np.uint8(128), canvas)
    h, w = image.shape[:2]
    return masked[:h, :w], out[:h, :w]


def _predict(model, tiles: np.ndarray, masks: np.ndarray, batch_size: int, on_batch) -> tuple[np.ndarray, np.ndarray]:
    """Reconstruct uint8 tiles [n,32,32,3] under masks [n,64] that may hide different counts: one
    count per batch, since the mae model drops the hidden patches. Tiles with nothing or
    everything hidden are left as they are and flagged unusable."""
    out, counts = tiles.copy(), masks.sum(axis=1)
    usable = (counts > 0) & (counts < masking.N_PATCHES)
    done = int((~usable).sum())
    for count in np.unique(counts[usable]):
        index = np.flatnonzero(counts == count)
        for i in range(0, len(index), batch_size):
            j = index[i : i + batch_size]
            x = tiles[j].astype(np.float32) / 255.0
            out[j] = np.round(model.reconstruct(x, masks[j]).numpy() * 255).astype(np.uint8)
            done += len(j)
            on_batch(done)
    return out, usable


def image_scores(original: np.ndarray, reconstructed: np.ndarray) -> dict:
    """MSE, PSNR and SSIM of two uint8 [H,W,3] images, on the [0,1] scale (integer error sums keep
    a 12-megapixel photo's memory small)."""
    diff = original.astype(np.int16) - reconstructed.astype(np.int16)
    mse = float(np.square(diff, dtype=np.int32).sum(dtype=np.int64)) / (255.0**2 * diff.size)
    return {"mse": mse, "psnr": float(10 * np.log10(1.0 / mse)) if mse > 0 else float("inf"), "ssim": ssim_large(original, reconstructed)}


def save_png(path, array: np.ndarray) -> None:
    from .files import atomic_path

    with atomic_path(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")
