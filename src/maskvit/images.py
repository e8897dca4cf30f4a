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


def to_tiles(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """[H,W,3] -> tiles [rows*cols,32,32,3], padding bottom/right by reflection; and (rows, cols)."""
    h, w = image.shape[:2]
    rows, cols = -(-h // TILE), -(-w // TILE)
    padded = np.pad(image, ((0, rows * TILE - h), (0, cols * TILE - w), (0, 0)), mode="symmetric")
    tiles = padded.reshape(rows, TILE, cols, TILE, 3).transpose(0, 2, 1, 3, 4).reshape(-1, TILE, TILE, 3)
    return tiles, (rows, cols)


def from_tiles(tiles: np.ndarray, grid: tuple[int, int], shape: tuple[int, ...]) -> np.ndarray:
    rows, cols = grid
    full = tiles.reshape(rows, cols, TILE, TILE, 3).transpose(0, 2, 1, 3, 4).reshape(rows * TILE, cols * TILE, 3)
    return full[: shape[0], : shape[1]]


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


def reconstruct_image(model, image: np.ndarray, strategy: str, ratio: float, seed: int, batch_size: int = 512, on_batch=None):
    """Mask and reconstruct every tile of a uint8 [H,W,3] image.

    Returns (masked view, reconstruction) as uint8 [H,W,3]; the masked view shows hidden patches grey."""
    tiles, grid = to_tiles(image)
    masks = masking.make_masks(strategy, ratio, len(tiles), [seed, 0]).numpy()
    out = np.empty_like(tiles)
    for i in range(0, len(tiles), batch_size):
        x = tiles[i : i + batch_size].astype(np.float32) / 255.0
        out[i : i + batch_size] = np.round(model.reconstruct(x, masks[i : i + batch_size]).numpy() * 255).astype(np.uint8)
        if on_batch:
            on_batch(min(i + batch_size, len(tiles)), len(tiles))
    hidden = masking.pixel_mask(masks).numpy()
    masked = np.where(hidden, np.uint8(128), tiles)
    return from_tiles(masked, grid, image.shape), from_tiles(out, grid, image.shape)


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
