"""Loss-curve PNG with matplotlib (a dependency of the package)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def plot_loss_curves(curves: Mapping[str, Sequence[tuple[float, float]]], path: str | Path, title: str = "training loss") -> Path:
    """Write one line per curve (`name -> [(step, loss), ...]`) to `path` (PNG). Steps of later phases should
    already be offset so that phases follow one another on the x axis."""
    path = Path(path)
    curves = {name: list(points) for name, points in curves.items() if points}
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

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


__all__ = ["plot_loss_curves"]
