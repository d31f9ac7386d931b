"""Writing frames as mp4 and gif, and comparing frames (PSNR, SSIM)."""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def upscale(frames: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour, so 64x64 pixels stay crisp in players that blur small videos."""
    return frames if scale == 1 else frames.repeat(scale, axis=-3).repeat(scale, axis=-2)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 10, scale: int = 4) -> Path:
    """mp4 (H.264) or gif, chosen by the file suffix."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = upscale(np.asarray(frames, dtype=np.uint8), scale)
    if path.suffix == ".gif":
        imageio.mimsave(path, list(frames), duration=1000 / fps, loop=0)
    else:
        imageio.mimsave(path, list(frames), fps=fps, macro_block_size=1, quality=9)
    return path


# What identical frames score instead of infinity, which would swamp any mean over chunks: just above
# the highest finite PSNR of one 8-frame 64x64 chunk (one grey level off in one value: 98 dB).
IDENTICAL_PSNR = 100.0


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a), np.asarray(b)
    return IDENTICAL_PSNR if np.array_equal(a, b) else float(peak_signal_noise_ratio(a, b, data_range=255))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM over frames of (..., H, W, 3) uint8 arrays."""
    a = np.asarray(a).reshape(-1, *np.shape(a)[-3:])
    b = np.asarray(b).reshape(-1, *np.shape(b)[-3:])
    return float(np.mean([structural_similarity(x, y, channel_axis=-1, data_range=255) for x, y in zip(a, b)]))
