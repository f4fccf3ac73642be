"""The pieces both HTML reports (backtest and sweep) are built from: one self-contained page
(style inline, figures as data URIs), its sections, tables and figures."""

from __future__ import annotations

import html
import json
from typing import Any

STYLE = """body{font-family:sans-serif;max-width:960px;margin:2em auto}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}td{white-space:nowrap}
dt{font-weight:bold}
figure{margin:0.5em 0}"""


def html_page(title: str, heading: str, intro: str, sections: list[str]) -> str:
    """The whole page; `intro` (a paragraph's HTML) and `sections` are already escaped."""
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{title}</title>
<style>{STYLE}</style></head><body>
<h1>{heading}</h1>
<p>{intro}</p>
{"".join(sections)}</body></html>"""


def html_section(anchor: str, title: str, body: str) -> str:
    return f"<section id='{anchor}'><h2>{html.escape(title)}</h2>{body}</section>\n"


def html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def html_figure(alt: str, png_base64: str) -> str:
    return (
        f"<figure><img alt='{html.escape(alt)}' src='data:image/png;base64,{png_base64}'/></figure>"
    )


def closing_sections(
    folds_html: str, definitions: list[tuple[str, str]], config: dict[str, Any]
) -> list[str]:
    """The sections a run's report ends with: its folds' bookkeeping, the definitions of its
    terms, and the resolved config."""
    terms = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in definitions)
    return [
        html_section("folds", "Folds (bookkeeping)", folds_html),
        html_section("definitions", "Definitions", f"<dl>{terms}</dl>"),
        html_section(
            "config", "Resolved config", f"<pre>{html.escape(json.dumps(config, indent=2))}</pre>"
        ),
    ]
