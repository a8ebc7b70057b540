"""Line plots drawn with PIL, so reports need no plotting library."""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
from PIL import Image, ImageDraw

_COLORS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
           (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
           (0, 0, 0), (120, 60, 0), (0, 90, 60), (90, 0, 120)]


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
  if hi <= lo:
    return [lo]
  step = 10 ** math.floor(math.log10((hi - lo) / n))
  for m in (1, 2, 5, 10):
    if (hi - lo) / (step * m) <= n:
      step *= m
      break
  start = math.ceil(lo / step) * step
  return [start + i * step for i in range(int((hi - start) / step) + 1)]


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], *, title: str,
              xlabel: str, ylabel: str, log_x: bool = False, size: tuple[int, int] = (640, 420)
              ) -> np.ndarray:
  """Plot named (xs, ys) series with markers, axes, ticks and a legend; returns uint8 HWC."""
  width, height = size
  # The legend sits right of the axes: wide enough for the longest name (~6 px per character).
  left, right, top, bottom = 70, max(170, 45 + 6 * max(map(len, series), default=0)), 30, 50
  img = Image.new("RGB", size, "white")
  draw = ImageDraw.Draw(img)
  xs_all = [x for xs, _ in series.values() for x in xs]
  ys_all = [y for _, ys in series.values() for y in ys if np.isfinite(y)]
  tx = (lambda v: math.log10(v)) if log_x else (lambda v: v)
  x_lo, x_hi = min(map(tx, xs_all)), max(map(tx, xs_all))
  y_lo, y_hi = min(ys_all), max(ys_all)
  pad_y = (y_hi - y_lo) * 0.05 or 1.0
  y_lo, y_hi = y_lo - pad_y, y_hi + pad_y
  pad_x = (x_hi - x_lo) * 0.03 or 1.0
  x_lo, x_hi = x_lo - pad_x, x_hi + pad_x

  def px(x: float, y: float) -> tuple[float, float]:
    u = left + (tx(x) - x_lo) / (x_hi - x_lo) * (width - left - right)
    v = height - bottom - (y - y_lo) / (y_hi - y_lo) * (height - top - bottom)
    return u, v

  draw.rectangle([left, top, width - right, height - bottom], outline="black")
  for y in _ticks(y_lo, y_hi):
    _, v = px(10 ** x_lo if log_x else x_lo, y)
    draw.line([left - 4, v, left, v], fill="black")
    draw.text((5, v - 6), f"{y:.3g}", fill="black")
  if log_x:
    x_ticks = [10 ** e for e in range(math.floor(x_lo), math.ceil(x_hi) + 1)
               if x_lo <= e <= x_hi]
  else:
    x_ticks = _ticks(x_lo, x_hi)
  for x in x_ticks:
    u, _ = px(x, y_lo)
    draw.line([u, height - bottom, u, height - bottom + 4], fill="black")
    draw.text((u - 12, height - bottom + 6), f"{x:.3g}", fill="black")
  draw.text((left, 8), title, fill="black")
  draw.text(((width - right + left) // 2 - 40, height - 20), xlabel + (" (log)" if log_x else ""),
            fill="black")
  draw.text((5, top - 22), ylabel, fill="black")
  for i, (name, (xs, ys)) in enumerate(series.items()):
    color = _COLORS[i % len(_COLORS)]
    points = [px(x, y) for x, y in zip(xs, ys) if np.isfinite(y)]
    if len(points) > 1:
      draw.line(points, fill=color, width=2)
    for u, v in points:
      draw.ellipse([u - 3, v - 3, u + 3, v + 3], fill=color)
    ly = top + 10 + 16 * i
    draw.line([width - right + 10, ly + 6, width - right + 30, ly + 6], fill=color, width=2)
    draw.text((width - right + 35, ly), name, fill="black")
  return np.asarray(img)
