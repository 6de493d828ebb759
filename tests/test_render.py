"""The report's HTML page: tables, escaping of text that comes from data, embedded plots."""

from __future__ import annotations

import base64
from pathlib import Path

from semrl.results.render import md_table, render_html


def test_render_html_escapes_data_and_embeds_plots(tmp_path: Path) -> None:
    png = b"\x89PNG\r\n\x1a\nnot-really-a-png"
    (tmp_path / "reward_curve.png").write_bytes(png)
    table = md_table(["method", "example output"], [["grpo", "<script>alert(1)</script> a | b"]])  # cells are text
    text = f"# Report <b>x</b>\n\nModel `tiny` said <img src=x onerror=alert(2)>.\n\n{table}\n\n![reward](plots/reward_curve.png)\n"
    page = render_html(text, tmp_path)
    assert "<script>" not in page and "<b>" not in page and "<img src=x" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "<h1>Report &lt;b&gt;x&lt;/b&gt;</h1>" in page
    assert "<code>tiny</code>" in page
    # A GFM table: header cells, one body row, the pipe in the text kept inside its cell.
    assert "<th>method</th>" in page and "<th>example output</th>" in page
    assert page.count("<tr>") == 2 and "a | b</td>" in page
    assert f'src="data:image/png;base64,{base64.b64encode(png).decode()}"' in page
    assert "plots/reward_curve.png" not in page
