"""PNGs drawn with Pillow (no plotting library needed): the training curves and image panels.

The curves: training losses against the step (log scale), and validation PSNR of the model next
to bicubic, written atomically next to the CSV logs after each validation and at the end. The
panels: images side by side with a caption each (evaluate.py's ``--figure``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from napari_refsr.files import atomic_write

__all__ = ["plot_curves", "plot_panels"]

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


ADVERSARIAL = ("adv", "d")  # may be negative: plotted on a linear scale


def _nice(v: float) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.1e}"
    return f"{v:.3g}"


def _panel(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], title: str,
           series: Sequence[tuple[str, Sequence[float], Sequence[float]]], log_y: bool, font) -> None:
    x0, y0, x1, y1 = box
    left, bottom, top, right = x0 + 70, y1 - 30, y0 + 25, x1 - 150
    draw.text((x0 + 70, y0 + 5), title, fill=(0, 0, 0), font=font)
    draw.rectangle((left, top, right, bottom), outline=(0, 0, 0))
    pts = [(x, y) for _, xs, ys in series for x, y in zip(xs, ys)
           if math.isfinite(y) and (y > 0 or not log_y)]
    if not pts:
        draw.text((left + 10, top + 10), "no data yet", fill=(90, 90, 90), font=font)
        return
    tf = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = min(tf(p[1]) for p in pts), max(tf(p[1]) for p in pts)
    if xmax == xmin:
        xmax = xmin + 1
    if ymax == ymin:
        ymin, ymax = ymin - 0.5, ymax + 0.5
    pad = (ymax - ymin) * 0.05
    ymin, ymax = ymin - pad, ymax + pad

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - xmin) / (xmax - xmin) * (right - left),
                bottom - (tf(y) - ymin) / (ymax - ymin) * (bottom - top))

    for i in range(5):  # y grid and labels
        fy = ymin + (ymax - ymin) * i / 4
        py = bottom - (bottom - top) * i / 4
        draw.line((left, py, right, py), fill=(225, 225, 225))
        draw.text((x0 + 5, py - 6), _nice(10 ** fy if log_y else fy), fill=(0, 0, 0), font=font)
    for i in range(5):
        fx = xmin + (xmax - xmin) * i / 4
        px = left + (right - left) * i / 4
        draw.text((px - 10, bottom + 8), _nice(fx), fill=(0, 0, 0), font=font)
    for k, (name, xs, ys) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        line = [to_px(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log_y)]
        if len(line) > 1:
            draw.line(line, fill=colour, width=2)
        for p in line if len(line) < 40 else []:
            draw.ellipse((p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2), fill=colour)
        draw.line((right + 10, top + 10 + 16 * k, right + 30, top + 10 + 16 * k), fill=colour, width=3)
        draw.text((right + 35, top + 4 + 16 * k), name, fill=(0, 0, 0), font=font)


def plot_curves(path: str | Path, train_rows: Sequence[dict], val_rows: Sequence[dict],
                loss_keys: Sequence[str]) -> Path:
    """Write the curves PNG; rows are the CSV logs' dicts (values may be strings). Losses named
    ``adv``/``d`` go to a linear-scale panel, the others to a log-scale one."""
    def col(rows, key):
        xs, ys = [], []
        for r in rows:
            try:
                x, y = float(r["step"]), float(r[key])
            except (KeyError, TypeError, ValueError):
                continue
            xs.append(x)
            ys.append(y)
        return xs, ys

    img = Image.new("RGB", (900, 900), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    series = {k: col(train_rows, k) for k in loss_keys}
    positive = [(k, *series[k]) for k in loss_keys if k not in ADVERSARIAL and series[k][0]]
    signed = [(k, *series[k]) for k in loss_keys if k in ADVERSARIAL and series[k][0]]
    _panel(draw, (0, 0, 900, 320), "training losses (log scale) vs step", positive, True, font)
    _panel(draw, (0, 320, 900, 580), "adversarial losses (WGAN-GP: generator, critic) vs step", signed, False, font)
    val = [(name, *col(val_rows, key)) for name, key in (("model PSNR", "psnr"), ("bicubic PSNR", "psnr_bicubic"))]
    _panel(draw, (0, 580, 900, 900), "validation PSNR (dB) vs step", [s for s in val if s[1]], False, font)
    return atomic_write(path, lambda f: img.save(f, format="PNG"))


def plot_panels(path: str | Path, panels: Sequence[tuple[str, "np.ndarray"]], *, zoom: int = 1) -> Path:
    """Write images (H, W) or (H, W, 3) uint8 side by side, each captioned, enlarged ``zoom``×
    (nearest neighbour, so that pixels stay visible)."""
    import numpy as np

    font = ImageFont.load_default()
    tiles = [Image.fromarray(np.ascontiguousarray(a)).convert("RGB") for _, a in panels]
    tiles = [t.resize((t.width * zoom, t.height * zoom), Image.NEAREST) for t in tiles]
    gap, caption = 8, 18
    width = sum(t.width for t in tiles) + gap * (len(tiles) + 1)
    height = max(t.height for t in tiles) + caption + 2 * gap
    img = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    x = gap
    for (title, _), tile in zip(panels, tiles):
        draw.text((x, gap // 2), title, fill=(0, 0, 0), font=font)
        img.paste(tile, (x, gap + caption))
        x += tile.width + gap
    return atomic_write(path, lambda f: img.save(f, format="PNG"))
