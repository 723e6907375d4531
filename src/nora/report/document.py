"""Documents: one template (Markdown) for every report, and self-contained HTML made from it.

A report is a list of blocks. ``to_markdown`` is the only renderer of blocks; ``to_html`` converts
that Markdown (python-markdown with tables) and embeds every image as a data URI, so the HTML file
can be mailed or archived on its own and always says exactly what the Markdown says.
"""

from __future__ import annotations

import base64
import html
import math
import re
from pathlib import Path
from typing import Any, Sequence

Block = tuple  # ("h1"|"h2"|"p", text) | ("table", columns, rows) | ("img", path, caption)

_STYLE = ("body{font-family:sans-serif;max-width:64em;margin:2em auto;padding:0 1em}"
          "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:2px 8px;text-align:right}"
          "img{max-width:100%}")


def cell(value: Any) -> str:
    """A table cell: numbers to 4 significant digits, missing values (None, NaN) as "-"."""
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4g}"
    return "-" if value is None else str(value)


def to_markdown(blocks: Sequence[Block]) -> str:
    out = []
    for block in blocks:
        kind = block[0]
        if kind in ("h1", "h2"):
            out.append(f"{'#' if kind == 'h1' else '##'} {block[1]}\n")
        elif kind == "p":
            out.append(f"{block[1]}\n")
        elif kind == "table":
            columns, rows = block[1], block[2]
            out.append("| " + " | ".join(columns) + " |")
            out.append("|" + "---|" * len(columns))
            out += ["| " + " | ".join(cell(v).replace("|", "\\|") for v in row) + " |" for row in rows]
            out.append("")
        elif kind == "img":
            out.append(f"![{block[2]}]({block[1]})\n")
    return "\n".join(out) + "\n"


def to_html(markdown_text: str, title: str, folder: Path) -> str:
    """The Markdown as one HTML page; images beside it in ``folder`` are embedded."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")

    def embed(match: re.Match) -> str:
        source = html.unescape(match.group(2))
        path = folder / source
        if "/" in source or not path.is_file():
            return match.group(0)
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        mime = "image/svg+xml" if path.suffix == ".svg" else f"image/{path.suffix.lstrip('.')}"
        return f'{match.group(1)}data:{mime};base64,{data}{match.group(3)}'

    body = re.sub(r'(<img[^>]*?src=")([^"]+)(")', embed, body)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_STYLE}</style></head><body>{body}</body></html>\n")
