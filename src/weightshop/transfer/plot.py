"""A line plot of score against LoRA strength, drawn with Pillow (matplotlib is not a dependency)."""

from __future__ import annotations

from PIL import Image, ImageDraw

COLOURS = ((31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14))
GREY = (120, 120, 120)


def _dashed(draw: ImageDraw.ImageDraw, x0: float, x1: float, y: float, colour, dash: int = 6) -> None:
    x = x0
    while x < x1:
        draw.line([(x, y), (min(x + dash, x1), y)], fill=colour, width=2)
        x += 2 * dash


def score_plot(strengths: list[float], series: dict[str, list[float | None]], levels: dict[str, float | None],
               marker: float | None = None, title: str = "", width: int = 720, height: int = 400) -> Image.Image:
    """Lines of `series` (one value per strength) on [0, 1], dashed horizontal `levels` (settings without a
    strength, such as Raw + LoRA), and a vertical line at `marker` (the recommended strength)."""
    left, right, top, bottom = 48, 190, 28, 36
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    lo, hi = min(0.0, *strengths), max(strengths)
    hi = hi if hi > lo else lo + 1.0
    pw, ph = width - left - right, height - top - bottom

    def xy(s: float, v: float) -> tuple[float, float]:
        return left + (s - lo) / (hi - lo) * pw, top + (1.0 - max(0.0, min(1.0, v))) * ph

    draw.text((left, 6), title, fill="black")
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        y = xy(lo, v)[1]
        draw.line([(left, y), (left + pw, y)], fill=(225, 225, 225))
        draw.text((6, y - 6), f"{v:.2f}", fill="black")
    for s in strengths:
        x = xy(s, 0)[0]
        draw.line([(x, top + ph), (x, top + ph + 4)], fill="black")
        draw.text((x - 10, top + ph + 8), f"{s:g}", fill="black")
    draw.rectangle([left, top, left + pw, top + ph], outline="black")
    draw.text((left + pw // 2 - 30, height - 14), "LoRA strength on Turbo", fill="black")
    if marker is not None:
        x = xy(marker, 0)[0]
        draw.line([(x, top), (x, top + ph)], fill=GREY, width=1)
    legend_y = top
    for i, (label, values) in enumerate(series.items()):
        colour = COLOURS[i % len(COLOURS)]
        points = [xy(s, v) for s, v in zip(strengths, values) if v is not None]
        if len(points) > 1:
            draw.line(points, fill=colour, width=2)
        for x, y in points:
            draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=colour)
        draw.line([(left + pw + 10, legend_y + 6), (left + pw + 30, legend_y + 6)], fill=colour, width=2)
        draw.text((left + pw + 34, legend_y), label, fill="black")
        legend_y += 16
    for j, (label, value) in enumerate(levels.items()):
        if value is None:
            continue
        colour = COLOURS[(len(series) + j) % len(COLOURS)]
        _dashed(draw, left, left + pw, xy(lo, value)[1], colour)
        _dashed(draw, left + pw + 10, left + pw + 30, legend_y + 6, colour, dash=4)
        draw.text((left + pw + 34, legend_y), label, fill="black")
        legend_y += 16
    if marker is not None:
        draw.line([(left + pw + 20, legend_y), (left + pw + 20, legend_y + 12)], fill=GREY)
        draw.text((left + pw + 34, legend_y), f"recommended {marker:g}", fill="black")
    return img
