import base64
import re

from pipeline.evaluation.report_html import markdown_to_html, report_html

REPORT = """# bootembed report

Languages: yor, kha.

## Verdict

**Training helped.** `parallel` is best.

## Bilingual lexicon induction

| language | base P@1 | trained P@1 | Δ trained | n | source |
|---|---|---|---|---|---|
| yor | 0.200 [0.10, 0.30] | **0.300** [0.20, 0.40] | +0.100 [-0.10, +0.30] p = .210 | 50 | FreeDict a\\|b |
| kha | skipped: no dictionary for kha | | | | |
| average (1 languages) | 0.200 | **0.300** | +0.100 * | 50 | |

![retrieval](retrieval.png)

![tasks](tasks.png)

## Data

- generated text <script>alert(1)</script> and [a link](http://example.com) stay text
"""


def test_tables_keep_rows_on_one_line_with_score_text_average_and_skipped_cells(tmp_path):
    body = markdown_to_html(REPORT, str(tmp_path))
    assert "<div class=scroll><table>" in body and body.count("<table>") == 1
    assert ("<tr><th>language</th><th>base P@1</th><th>trained P@1</th><th>Δ trained</th><th>n</th><th>source</th></tr>"
            in body)
    assert ("<tr><td>yor</td><td>0.200 [0.10, 0.30]</td><td><strong>0.300</strong> [0.20, 0.40]</td>"
            "<td class=text>+0.100 [-0.10, +0.30] p = .210</td><td>50</td><td class=text>FreeDict a|b</td></tr>") in body
    assert "<tr><td>kha</td><td class=skipped colspan=5>skipped: no dictionary for kha</td></tr>" in body
    assert "<tr class=average><td>average (1 languages)</td><td>0.200</td>" in body


def test_images_are_inlined_and_a_plot_not_drawn_is_left_out(tmp_path):
    png = b"\x89PNG\r\n\x1a\nnot really"
    (tmp_path / "retrieval.png").write_bytes(png)
    body = markdown_to_html(REPORT, str(tmp_path))
    images = re.findall(r'<img alt="([^"]*)" src="data:image/png;base64,([^"]+)">', body)
    assert images == [("retrieval", base64.b64encode(png).decode())], "tasks.png was not drawn: no image, no error"
    assert "<p></p>" not in body and "tasks.png" not in body


def test_quoted_text_cannot_add_markup_or_links_and_sections_get_contents(tmp_path):
    page = report_html(REPORT, str(tmp_path))
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script" not in page
    assert "[a link](http://example.com)" in page and "href=\"http" not in page
    assert page.startswith("<!doctype html>") and "<style>" in page and not re.search(r"<link|@import|url\(", page)
    nav = re.search(r"<nav><ul>(.*?)</ul></nav>", page).group(1)
    assert re.findall(r'href="#(s\d)">([^<]+)<', nav) == [("s1", "Verdict"), ("s2", "Bilingual lexicon induction"), ("s3", "Data")]
    assert '<h2 id="s2">Bilingual lexicon induction</h2>' in page
    assert page.index("Languages: yor, kha.") < page.index("<nav>") < page.index('<h2 id="s1">'), "after the opening paragraph"
