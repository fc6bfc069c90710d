"""report.html: report.md rendered by markdown-it-py as one self-contained page to mail or open anywhere.

Inline CSS, plots inlined as base64 PNG, nothing fetched when the page is opened: raw HTML in the Markdown is escaped
and links are not rendered (report.md quotes generated text, which must not turn into markup). Tables scroll
sideways, score cells are right-aligned and text cells wrap, a skipped language's reason spans its row, and the
sections get a table of contents.
"""

from __future__ import annotations

import base64
import html
import os
import re

from markdown_it import MarkdownIt
from markdown_it.token import Token

HTML_STYLE = """
body { font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328; margin: 0; background: #f6f8fa; }
main { max-width: 1320px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 28px; border-bottom: 1px solid #d0d7de; padding-bottom: 8px; }
h2 { font-size: 22px; margin-top: 40px; border-bottom: 1px solid #d0d7de; padding-bottom: 4px; }
h3 { font-size: 16px; margin: 20px 0 6px; }
p { max-width: 90ch; }
nav ul { columns: 2; margin: 0; }
.scroll { overflow-x: auto; margin: 8px 0 16px; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d0d7de; padding: 3px 8px; text-align: right; white-space: nowrap; }
th { background: #f0f3f6; position: sticky; top: 0; }
th:first-child, td:first-child { text-align: left; }
tbody tr:nth-child(even) { background: #f8fafc; }
td.skipped { text-align: left; color: #6e7781; font-style: italic; white-space: normal; }
td.text { text-align: left; white-space: normal; max-width: 40ch; }
tr.average td { background: #eef2f6; border-top: 2px solid #8c959f; }  /* not bold: bold marks the best value */
img { max-width: 100%; height: auto; display: block; margin: 12px 0; }
code { background: #f0f3f6; padding: 1px 4px; border-radius: 4px; font-size: 90%; }
"""

_SCORE_CELL = re.compile(r"^[*+\-\d.\[\] ,]+$")  # `**0.300** [0.10, 0.30]`, `+0.1 *`: right-aligned; other text wraps
_CELL_TAGS = ("tr", "th", "td")


def report_html(markdown: str, image_dir: str) -> str:
    """The HTML page of report.md; images are read from `image_dir` (one that was not drawn is left out)."""
    return ('<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1"><title>bootembed report</title>'
            f"<style>{HTML_STYLE}</style></head>\n<body><main>\n{markdown_to_html(markdown, image_dir)}</main></body></html>\n")


def markdown_to_html(markdown: str, image_dir: str) -> str:
    """The body of report.html."""
    md = _parser()
    env = {"image_dir": image_dir}
    tokens = md.parse(markdown, env)
    tokens = _drop_missing_images(tokens, image_dir)
    _style_tables(tokens)
    tokens = _add_contents(md, tokens)
    return md.renderer.render(tokens, md.options, env)


def _parser() -> MarkdownIt:
    """CommonMark with pipe tables; no raw HTML and no links, so quoted text cannot add markup or fetch anything."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table").disable(["link", "autolink", "reference"])
    md.add_render_rule("table_open", lambda *_: "<div class=scroll><table>\n")
    md.add_render_rule("table_close", lambda *_: "</table></div>\n")
    for tag in _CELL_TAGS:
        md.add_render_rule(f"{tag}_open", _open_tag)
    md.add_render_rule("image", _inline_image)
    return md


def _open_tag(self, tokens: list[Token], idx: int, options, env) -> str:
    """An opening tag with bare attribute values (`<td class=skipped colspan=4>`): each is one word."""
    token = tokens[idx]
    return f"<{token.tag}" + "".join(f" {k}={v}" for k, v in token.attrs.items()) + ">"


def _inline_image(self, tokens: list[Token], idx: int, options, env) -> str:
    """An image as an <img> with its PNG inlined as a data: URI."""
    token = tokens[idx]
    path = os.path.join(env["image_dir"], str(token.attrs["src"]))
    if not os.path.isfile(path):
        return ""
    alt = self.renderInlineAsText(token.children or [], options, env)
    with open(path, "rb") as f:
        data = base64.b64encode(f.read()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _drop_missing_images(tokens: list[Token], image_dir: str) -> list[Token]:
    """Without the paragraphs whose only content is an image that was not drawn (plots off, or nothing to plot)."""
    def missing_image(inline: Token) -> bool:
        children = inline.children or []
        return len(children) == 1 and children[0].type == "image" and \
            not os.path.isfile(os.path.join(image_dir, str(children[0].attrs["src"])))

    drop = {i + k for i, t in enumerate(tokens) if t.type == "paragraph_open" and missing_image(tokens[i + 1]) for k in range(3)}
    return [t for i, t in enumerate(tokens) if i not in drop]


def _style_tables(tokens: list[Token]) -> None:
    """Rows and cells on one line each, with classes: `average` rows, `text` cells (not scores), and a skipped
    language's reason as one cell across the row."""
    columns = 0
    for i, token in enumerate(tokens):
        if token.type == "tr_open":
            cells = _row_cells(tokens, i)
            if tokens[i - 1].type == "thead_open":
                columns = len(cells)
            else:
                _style_row(tokens, token, cells, columns)
        if token.tag in _CELL_TAGS:
            token.block = False  # the renderer puts no newline between the cells of a row
    tokens[:] = [t for t in tokens if not t.meta.get("drop")]


def _row_cells(tokens: list[Token], tr: int) -> list[int]:
    """Indices of the cell-opening tokens of the row that opens at `tr`."""
    cells, i = [], tr + 1
    while tokens[i].type != "tr_close":
        if tokens[i].type in ("th_open", "td_open"):
            cells.append(i)
        i += 1
    return cells


def _style_row(tokens: list[Token], tr: Token, cells: list[int], columns: int) -> None:
    text = [tokens[c + 1].content for c in cells]  # each cell's Markdown source
    if text and text[0].startswith("average"):
        tr.attrs["class"] = "average"
    if len(text) > 1 and text[1].startswith("skipped:"):  # one cell across the row: the reason, not a score
        tokens[cells[1]].attrs.update({"class": "skipped", "colspan": columns - 1})
        for c in cells[2:]:
            for k in range(3):  # td_open, inline, td_close
                tokens[c + k].meta["drop"] = True
        return
    for c, source in zip(cells[1:], text[1:]):
        if not _SCORE_CELL.match(source):
            tokens[c].attrs["class"] = "text"


def _add_contents(md: MarkdownIt, tokens: list[Token]) -> list[Token]:
    """Anchors on the level-2 headings and, when there are more than two, a table of contents after the opening
    paragraph."""
    sections = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.tag == "h2":
            anchor = f"s{len(sections) + 1}"
            token.attrs["id"] = anchor
            sections.append((anchor, md.renderer.renderInline(tokens[i + 1].children or [], md.options, {})))
    if len(sections) <= 2:
        return tokens
    nav = Token("html_block", "", 0)
    nav.content = "<nav><ul>" + "".join(f'<li><a href="#{a}">{title}</a></li>' for a, title in sections) + "</ul></nav>\n"
    first = next((i for i, t in enumerate(tokens) if t.type == "paragraph_close"), 0)
    return [*tokens[:first + 1], nav, *tokens[first + 1:]]
