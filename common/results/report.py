"""`make report`: a static HTML page of every committed result, `results/index.html`.

Built from `results/` alone (each table's csv and png, each manifest's claims) and the paper configs'
titles and families: papers grouped by family, every table with its plot and the paper's numbers beside
ours, every claim with its verdict and interval, and the confirmatory totals across papers. Relative links
only, so it opens from the file system with no server and no network."""

from __future__ import annotations

import csv
import html
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from common.config import REPO_ROOT
from common.results.paper_spec import FAMILIES, available_papers, load_paper

VERDICT_COLOURS = {"held": "#1b7f3b", "failed": "#b3261e", "inconclusive": "#8a6d00", "not evaluated": "#666"}
STYLE = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.5rem; border-bottom: 2px solid #ddd; }
h3 { margin-top: 2rem; } h4 { margin: 1.2rem 0 .4rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: 13px; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th:first-child, td:first-child, td.text { text-align: left; }
img { max-width: 100%; border: 1px solid #eee; }
.verdict { font-weight: 600; } .muted { color: #666; font-size: 13px; }
nav a { margin-right: .8rem; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text))


def _verdict(status: str) -> str:
    return f'<span class="verdict" style="color:{VERDICT_COLOURS.get(status, "#333")}">{_e(status)}</span>'


def _table_html(path: Path) -> str:
    """Our mean ± std beside the paper's number, one line per cell."""
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return '<p class="muted">no cells</p>'
    head = "<tr><th>row</th><th>column</th><th>ours (mean ± std, n)</th><th>paper</th><th>source</th></tr>"
    body = []
    for r in rows:
        ours = f"{float(r['mean']):.2f} ± {float(r['std'] or 0):.2f} ({r['n']})" if r.get("mean") else "-"
        paper = r.get("reported") or "-"
        if r.get("reported_std"):
            paper += f" ± {r['reported_std']}"
        body.append(
            f"<tr><td>{_e(r['row'])}</td><td class=text>{_e(r['column'])}</td><td>{_e(ours)}</td>"
            f"<td>{_e(paper)}</td><td class=text>{_e(r.get('reported_source') or '')}</td></tr>"
        )
    return f"<table>{head}{''.join(body)}</table>"


def _claims_html(claims: list[dict[str, Any]]) -> str:
    if not claims:
        return ""
    rows = []
    for claim in claims:
        kind = "confirmatory" if claim.get("confirmatory") else "exploratory"
        text, detail = _e(claim.get("text", claim.get("id"))), _e(claim.get("detail", ""))
        rows.append(
            f"<tr><td class=text>{text}</td><td>{kind}</td><td>{_verdict(claim.get('status', ''))}</td>"
            f"<td class=text>{detail}</td></tr>"
        )
    head = "<tr><th>claim</th><th>kind</th><th>verdict</th><th>estimate, 95% interval</th></tr>"
    return f"<table>{head}{''.join(rows)}</table>"


def build(results_root: Path, out: Path) -> list[Path]:
    """Write `out` (an HTML file inside `results_root`); returns every file it links."""
    linked: list[Path] = []
    sections, totals, nav = [], Counter(), []
    papers = {key: load_paper(key) for key in available_papers()}
    for family in FAMILIES:
        keys = [key for key, paper in papers.items() if paper.family == family]
        papers_html = []
        for key in keys:
            paper = papers[key]
            parts = []
            for scale_dir in sorted(p for p in (results_root / key).glob("*") if p.is_dir()):
                manifest_path = scale_dir / "manifest.json"
                if not manifest_path.is_file():
                    continue
                manifest = json.loads(manifest_path.read_text())
                claims = manifest.get("claims") or []
                totals.update(c["status"] for c in claims if c.get("confirmatory"))
                for table_id, table in paper.tables.items():
                    csv_path = scale_dir / f"{table_id}.csv"
                    if not csv_path.is_file():
                        continue
                    png = scale_dir / f"{table_id}.png"
                    image = ""
                    if png.is_file():
                        linked.append(png)
                        image = (
                            f'<img src="{_e(png.relative_to(out.parent).as_posix())}" alt="{_e(table_id)}">'
                        )
                    md = scale_dir / f"{table_id}.md"
                    linked.append(md)
                    own = [c for c in claims if c.get("table") == table_id]
                    parts.append(
                        f'<h4 id="{_e(key)}-{_e(table_id)}">{_e(table.title)} '
                        f'<span class="muted">({_e(scale_dir.name)}; '
                        f'<a href="{_e(md.relative_to(out.parent).as_posix())}">markdown</a>)</span></h4>'
                        f"{_table_html(csv_path)}{image}{_claims_html(own)}"
                    )
            readme = REPO_ROOT / "papers" / key / "README.md"
            link = ""
            if readme.is_file():
                target = Path("..", "papers", key, "README.md").as_posix()
                link = f' <a class="muted" href="{_e(target)}">README</a>'
            body = "".join(parts) or '<p class="muted">no committed results</p>'
            papers_html.append(f'<h3 id="{_e(key)}">{_e(key)}: {_e(paper.title)}{link}</h3>{body}')
            nav.append(f'<a href="#{_e(key)}">{_e(key)}</a>')
        if papers_html:
            sections.append(f'<h2 id="{_e(family)}">{_e(family)}</h2>{"".join(papers_html)}')
    total = ", ".join(f"{_verdict(v)} {totals[v]}" for v in VERDICT_COLOURS if totals[v])
    page = (
        "<!doctype html><html lang=en><head><meta charset=utf-8><title>PNU-Repro results</title>"
        f"<style>{STYLE}</style></head><body><h1>PNU-Repro results</h1>"
        '<p class="muted">Built from results/ by <code>make report</code>. '
        f"Confirmatory claims across papers: {total}.</p>"
        f"<nav>{''.join(nav)}</nav>{''.join(sections)}</body></html>"
    )
    out.write_text(page, encoding="utf-8")
    return linked


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    results_root = Path(args[0]) if args else REPO_ROOT / "results"
    out = results_root / "index.html"
    linked = build(results_root, out)
    print(f"{out} ({len(linked)} tables and plots linked); open it in a browser")
    return 0


if __name__ == "__main__":
    sys.exit(main())
