"""PNGs drawn with Pillow (no plotting library needed): the training curves and image panels.

The curves: training losses against the step (log scale); the adversarial losses (linear scale),
only when the run has them (not with ``--rec-only``); validation PSNR of the model next to
bicubic; written atomically next to the CSV logs after each validation and at the end. The
panels: images side by side with a caption each (evaluate.py's ``--figure``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

from napari_refsr.files import atomic_write

__all__ = ["plot_curves", "plot_panels", "log_interval", "ticks", "MIN_POINTS"]

COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127)]


ADVERSARIAL = ("adv", "d")  # may be negative: plotted on a linear scale


#: training-log rows a run writes at least (short runs log more often than run.log_every)
MIN_POINTS = 20


def log_interval(log_every: int, total_steps: int) -> int:
    """Steps between training-log rows: ``run.log_every``, or less for a short run, so that its
    curve has at least :data:`MIN_POINTS` points (a 30-step run at the default 10 had 3)."""
    return max(1, min(int(log_every), -(-int(total_steps) // MIN_POINTS)))


def _nice(v: float, digits: int = 3) -> str:
    if v == 0:
        return "0"
    if abs(v) >= 1000 or abs(v) < 0.01:
        return f"{v:.{max(1, digits - 2)}e}"
    return f"{v:.{digits}g}"


def _labels(values: Sequence[float]) -> list[str]:
    """Tick labels, with as many digits as it takes for distinct values to read differently."""
    for digits in range(3, 10):
        labels = [_nice(v, digits) for v in values]
        if len(set(labels)) == len(set(values)):
            return labels
    return labels


def ticks(lo: float, hi: float, integer: bool = False, n: int = 4) -> list[float]:
    """About ``n`` + 1 round tick values covering [lo, hi]; whole numbers only when ``integer``
    (steps), so a short run gets no repeated labels such as 1, 1, 2, 2, 3."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / n
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if integer:
        step = max(1.0, float(math.ceil(step)))
    first = math.ceil(lo / step - 1e-9) * step
    out, k = [], 0
    while first + k * step <= hi + 1e-9 * span:
        out.append(first + k * step)
        k += 1
    return out


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

    y_values = [ymin + (ymax - ymin) * i / 4 for i in range(5)]  # y grid and labels (log: even in log10)
    for fy, label in zip(y_values, _labels([10 ** v if log_y else v for v in y_values])):
        py = bottom - (fy - ymin) / (ymax - ymin) * (bottom - top)
        draw.line((left, py, right, py), fill=(225, 225, 225))
        draw.text((x0 + 5, py - 6), label, fill=(0, 0, 0), font=font)
    x_values = ticks(xmin, xmax, integer=all(float(p[0]).is_integer() for p in pts))
    for fx, label in zip(x_values, _labels(x_values)):
        px = left + (fx - xmin) / (xmax - xmin) * (right - left)
        draw.line((px, bottom, px, bottom + 4), fill=(0, 0, 0))
        draw.text((px - 10, bottom + 8), label, fill=(0, 0, 0), font=font)
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

    series = {k: col(train_rows, k) for k in loss_keys}
    positive = [(k, *series[k]) for k in loss_keys if k not in ADVERSARIAL and series[k][0]]
    signed = [(k, *series[k]) for k in loss_keys if k in ADVERSARIAL and series[k][0]]
    val = [(name, *col(val_rows, key)) for name, key in (("model PSNR", "psnr"), ("bicubic PSNR", "psnr_bicubic"))]
    panels = [("training losses (log scale) vs step", positive, True, 320)]
    if signed:  # a --rec-only run has none: no empty panel
        panels.append(("adversarial losses (WGAN-GP: generator, critic) vs step", signed, False, 260))
    panels.append(("validation PSNR (dB) vs step", [s for s in val if s[1]], False, 320))
    img = Image.new("RGB", (900, sum(p[3] for p in panels)), (255, 255, 255))
    draw = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    top = 0
    for title, data, log_y, height in panels:
        _panel(draw, (0, top, 900, top + height), title, data, log_y, font)
        top += height
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
