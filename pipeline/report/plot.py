"""A PNG scatter plot of 2-D map coordinates, drawn with Pillow."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from pipeline.report.projection import Projection

WIDTH, HEIGHT = 1200, 900
_MARGIN = {"left": 90, "right": 30, "top": 60, "bottom": 80}
_BACKGROUND = (255, 255, 255)
_INK = (40, 40, 40)
_GRID = (228, 228, 228)
_POINT = (31, 119, 180)


def axis_label(projection: Projection | None, index: int) -> str:
    name = f"PC{index + 1}"
    if projection is None:
        return name
    return f"{name} ({projection.explained_variance_ratio[index]:.1%} of variance)"


def nice_ticks(low: float, high: float, count: int = 6) -> list[float]:
    """Round tick values covering [low, high]."""
    if not high > low:
        return [low]
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.ceil(low / step) * step
    return [first + i * step for i in range(int((high - first) / step + 1e-9) + 1)]


def _bounds(values: np.ndarray) -> tuple[float, float]:
    low, high = float(values.min()), float(values.max())
    pad = (high - low) * 0.05 or 1.0
    return low - pad, high + pad


def _point_radius(count: int) -> int:
    return 5 if count <= 500 else 3 if count <= 10_000 else 2 if count <= 50_000 else 1


def scatter_png(points: Sequence[tuple[str, float, float]], projection: Projection | None) -> bytes:
    """The points (uri, x, y) as a scatter plot with axes, ticks and a title."""
    image = Image.new("RGB", (WIDTH, HEIGHT), _BACKGROUND)
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=16)
    title_font = ImageFont.load_default(size=22)
    left, top = _MARGIN["left"], _MARGIN["top"]
    right, bottom = WIDTH - _MARGIN["right"], HEIGHT - _MARGIN["bottom"]

    total = projection.count if projection else 0
    drawn = len(points)
    title = f"Image embeddings, PCA to 2-D: {total:,} images"
    if drawn < total:
        title += f" ({drawn:,} drawn, a seeded sample)"
    draw.text((WIDTH / 2, top / 2), title, fill=_INK, font=title_font, anchor="mm")
    draw.text(
        ((left + right) / 2, HEIGHT - 25),
        axis_label(projection, 0),
        fill=_INK,
        font=font,
        anchor="mm",
    )
    y_label = Image.new("RGB", (bottom - top, 24), _BACKGROUND)
    ImageDraw.Draw(y_label).text(
        ((bottom - top) / 2, 12), axis_label(projection, 1), fill=_INK, font=font, anchor="mm"
    )
    image.paste(y_label.rotate(90, expand=True), (8, top))

    if not points:
        draw.rectangle((left, top, right, bottom), outline=_INK)
        draw.text(
            ((left + right) / 2, (top + bottom) / 2),
            "no images embedded",
            fill=_INK,
            font=font,
            anchor="mm",
        )
        return _encode(image)

    xy = np.array([(x, y) for _, x, y in points], dtype=np.float64)
    (x_low, x_high), (y_low, y_high) = _bounds(xy[:, 0]), _bounds(xy[:, 1])

    def to_pixels(x, y):
        px = left + (x - x_low) / (x_high - x_low) * (right - left)
        py = bottom - (y - y_low) / (y_high - y_low) * (bottom - top)
        return px, py

    for tick in nice_ticks(x_low, x_high):
        px, _ = to_pixels(tick, y_low)
        draw.line((px, top, px, bottom), fill=_GRID)
        draw.line((px, bottom, px, bottom + 6), fill=_INK)
        draw.text((px, bottom + 10), f"{tick:g}", fill=_INK, font=font, anchor="mt")
    for tick in nice_ticks(y_low, y_high):
        _, py = to_pixels(x_low, tick)
        draw.line((left, py, right, py), fill=_GRID)
        draw.line((left - 6, py, left, py), fill=_INK)
        draw.text((left - 10, py), f"{tick:g}", fill=_INK, font=font, anchor="rm")
    draw.rectangle((left, top, right, bottom), outline=_INK)

    # An RGBA drawing context blends each translucent dot onto the image, so that dense
    # regions read darker.
    dots = ImageDraw.Draw(image, "RGBA")
    radius = _point_radius(drawn)
    alpha = 200 if drawn <= 2_000 else 90
    for px, py in zip(*to_pixels(xy[:, 0], xy[:, 1]), strict=True):
        dots.ellipse((px - radius, py - radius, px + radius, py + radius), fill=(*_POINT, alpha))
    return _encode(image)


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
