"""Pieces every HTML page of padistill is built from (the run report, the sweep page, the SRe2L and coreset
sections): matplotlib figures drawn on a bare `Figure` with the Agg canvas (no global pyplot state, imported only
when a figure is drawn), PNGs embedded as base64 and written beside the page, and the shared style sheet."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from padistill.utils.io import atomic_write_bytes


def new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def embed(data: bytes, alt: str) -> str:
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" alt="{html.escape(alt)}">'


def img(data: bytes, name: str, out: Path, alt: str, written: list[str]) -> str:
    """Write the PNG beside the page and embed it (the page stays self-contained)."""
    atomic_write_bytes(out / name, data)
    written.append(name)
    return embed(data, alt)


def missing(text: str) -> str:
    return f'<p class="missing">{html.escape(text)}</p>'


CSS = """body{font-family:sans-serif;max-width:980px;margin:2em auto;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;font-size:.9em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
td:first-child,th:first-child{text-align:left}tr.gain td{font-weight:bold;background:#f3f8f3}
.missing{color:#a33;font-style:italic}pre{background:#f6f6f6;padding:.6em;overflow:auto;font-size:.8em}
img{max-width:100%;image-rendering:pixelated}"""


def html_page(title: str, intro: str, parts: list[str]) -> str:
    """A whole self-contained page: `title` (escaped here) as <title> and <h1>, then `intro` and `parts` (HTML)."""
    t = html.escape(title)
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title><style>{CSS}</style></head>"
            f"<body>\n<h1>{t}</h1>{intro}\n" + "\n".join(parts) + "\n</body></html>\n")
