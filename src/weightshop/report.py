"""Pictures and pages for the reports people read: labelled image grids and self-contained HTML."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from PIL import Image, ImageDraw

from weightshop.io import atomic_write_text


def image_grid(rows: list[list[Image.Image]], row_labels: list[str] | None = None,
               col_labels: list[str] | None = None, cell: int | None = None, pad: int = 2) -> Image.Image:
    """Tile rows of images (upscaled with NEAREST to `cell` px so small images stay legible), with labels."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one image")
    cell = cell or max(max(im.width, im.height) for row in rows for im in row)
    left = 8 + 6 * max((len(label) for label in row_labels or []), default=0)
    top = 14 if col_labels else 0
    ncols = max(len(r) for r in rows)
    grid = Image.new("RGB", (left + ncols * (cell + pad), top + len(rows) * (cell + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for c, label in enumerate(col_labels or []):
        draw.text((left + c * (cell + pad) + 2, 1), label[: cell // 6], fill="black")
    for r, row in enumerate(rows):
        y = top + r * (cell + pad)
        if row_labels:
            draw.text((2, y + cell // 2 - 5), row_labels[r], fill="black")
        for c, im in enumerate(row):
            grid.paste(im.convert("RGB").resize((cell, cell), Image.NEAREST), (left + c * (cell + pad), y))
    return grid


def data_uri(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(empty)</p>"
    cols = list(rows[0])
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(r.get(c)))}</td>" for c in cols) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def write_html(path: str | Path, title: str, sections: list[tuple[str, str]]) -> Path:
    """A self-contained page (images inlined) from (heading, html body) sections."""
    style = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
             "img{image-rendering:pixelated;max-width:100%}")
    parts = [f"<!doctype html><meta charset=utf-8><title>{html.escape(title)}</title><style>{style}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    parts += [f"<h2>{html.escape(h)}</h2>{body}" for h, body in sections]
    return atomic_write_text(path, "\n".join(parts))
