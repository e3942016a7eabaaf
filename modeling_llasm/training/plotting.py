"""Loss-curve PNG: matplotlib when it is installed, else a dependency-free rasterizer (numpy + zlib)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np


COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str = "training loss") -> Path:
    """Write one line per curve (`name -> [(step, loss), ...]`) to `path` (PNG). Steps of later phases should
    already be offset so that phases follow one another on the x axis."""
    path = Path(path)
    curves = {name: list(points) for name, points in curves.items() if points}
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _plot_without_matplotlib(curves, path)
        return path
    figure, axis = plt.subplots(figsize=(8, 4.5), dpi=100)
    for name, points in curves.items():
        steps, losses = zip(*points)
        axis.plot(steps, losses, label=name)
    axis.set_xlabel("optimizer step (phases in order)")
    axis.set_ylabel("loss")
    axis.set_title(title)
    axis.grid(alpha=0.3)
    if curves:
        axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _plot_without_matplotlib(curves: Mapping[str, list[tuple[float, float]]], path: Path, width: int = 800,
                             height: int = 450, margin: int = 40) -> None:  # fmt: skip
    """Axes, light grid and one colored polyline per curve (no text: the legend order is the color order of
    `COLORS`, and the numbers are in the run's loss_curves.json)."""
    image = np.full((height, width, 3), 255, dtype=np.uint8)
    points = [p for pts in curves.values() for p in pts]
    if points:
        xs, ys = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
        x0, x1 = xs.min(), max(xs.max(), xs.min() + 1e-9)
        y0, y1 = min(ys.min(), 0.0), max(ys.max(), 1e-9)

        def to_pixel(x: float, y: float) -> tuple[int, int]:
            px = margin + (x - x0) / (x1 - x0) * (width - 2 * margin)
            py = height - margin - (y - y0) / (y1 - y0) * (height - 2 * margin)
            return int(round(px)), int(round(py))

        for k in range(1, 5):  # grid
            gy = margin + k * (height - 2 * margin) // 5
            image[gy, margin : width - margin] = 225
        for index, pts in enumerate(curves.values()):
            color = COLORS[index % len(COLORS)]
            pixels = [to_pixel(x, y) for x, y in pts]
            if len(pixels) == 1:
                pixels = pixels * 2
            for (ax, ay), (bx, by) in zip(pixels, pixels[1:]):
                _line(image, ax, ay, bx, by, color)
    image[margin : height - margin + 1, margin] = 0  # y axis
    image[height - margin, margin : width - margin + 1] = 0  # x axis
    _write_png(image, path)


def _line(image: np.ndarray, x0: int, y0: int, x1: int, y1: int, color: tuple[int, int, int]) -> None:
    steps = max(abs(x1 - x0), abs(y1 - y0), 1)
    xs = np.linspace(x0, x1, steps + 1).round().astype(int)
    ys = np.linspace(y0, y1, steps + 1).round().astype(int)
    for dx in (0, 1):
        for dy in (0, 1):
            valid = (xs + dx < image.shape[1]) & (ys + dy < image.shape[0]) & (ys + dy >= 0)
            image[ys[valid] + dy, xs[valid] + dx] = color


def _write_png(image: np.ndarray, path: Path) -> None:
    height, width, _ = image.shape
    raw = b"".join(b"\x00" + image[row].tobytes() for row in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b""))


__all__ = ["plot_loss_curves"]
