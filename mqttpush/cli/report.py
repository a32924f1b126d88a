"""The monthly statistics report as HTML (charts as inline SVG: no script, no CDN) or CSV
(docs/statistics.md, "Monthly report"). Pure: report documents in, text out."""

from __future__ import annotations

import csv
import html
import io
from datetime import UTC, datetime
from typing import Any

from mqttpush.store.stats import COUNTERS, rate

_LINES = (("targeted", "#4e79a7"), ("arrived", "#59a14f"), ("opened", "#f28e2b"), ("failed", "#e15759"))
_CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .5em 0 1em; }
th, td { border: 1px solid #ddd; padding: .2em .6em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
.rates span { display: inline-block; margin-right: 2em; font-size: 1.2em; }
svg text { font: 11px system-ui, sans-serif; fill: #444; }
"""


def _day(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d")


def to_csv(reports: list[dict[str, Any]]) -> str:
    """One row per app and section: ``total``, each ``day``, each ``platform`` and ``channel``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(
        ["app_key", "app_name", "month", "section", "value", *COUNTERS, "arrival_rate", "open_rate"]
    )

    def row(report: dict[str, Any], section: str, value: str, counts: dict[str, Any]) -> None:
        writer.writerow(
            [
                report["app_key"],
                report["name"],
                report["month"],
                section,
                value,
                *(counts[c] for c in COUNTERS),
                rate(counts["arrived"], counts["targeted"]),
                rate(counts["opened"], counts["arrived"]),
            ]
        )

    for report in reports:
        row(report, "total", "", report["totals"])
        for point in report["days"]:
            row(report, "day", _day(point["t"]), point)
        for section in ("platform", "channel"):
            for item in report[f"by_{section}"]:
                row(report, section, item["value"] if item["value"] is not None else "", item)
    return out.getvalue()


def _line_chart(days: list[dict[str, Any]], width: int = 760, height: int = 240) -> str:
    """Per-day lines of targeted, arrived, opened and failed, with axes and a legend."""
    left, right, top, bottom = 50, 10, 20, 30
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max([1] + [int(p[c]) for p in days for c, _ in _LINES])
    n = max(1, len(days) - 1)

    def x(i: int) -> float:
        return left + plot_w * i / n

    def y(v: float) -> float:
        return top + plot_h * (1 - v / peak)

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"'
        ' aria-label="deliveries per day">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{peak}</text>',
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>',
    ]
    for i, point in enumerate(days):
        if i % 5 == 0 or i == len(days) - 1:
            anchor = "end" if i == len(days) - 1 and i else "middle"
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 10}" text-anchor="{anchor}">{_day(point["t"])[5:]}</text>'
            )
    for j, (counter, color) in enumerate(_LINES):
        points = " ".join(f"{x(i):.1f},{y(p[counter]):.1f}" for i, p in enumerate(days))
        parts.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{points}"/>')
        lx = left + 10 + j * 110
        parts.append(f'<rect x="{lx}" y="4" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{lx + 14}" y="13">{counter}</text>')
    parts.append("</svg>")
    return "".join(parts)


def _bar_chart(items: list[dict[str, Any]], width: int = 760) -> str:
    """Horizontal bars of targeted (light) and arrived (dark) per value."""
    if not items:
        return "<p>No deliveries.</p>"
    row_h, label_w, top = 22, 140, 22
    height = top + row_h * len(items) + 6
    peak = max([1] + [item["targeted"] for item in items] + [item["arrived"] for item in items])
    plot_w = width - label_w - 160  # room for "arrived / targeted" after the longest bar
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img"'
        ' aria-label="targeted and arrived">',
        f'<rect x="{label_w}" y="4" width="10" height="10" fill="#a0cbe8"/>',
        f'<text x="{label_w + 14}" y="13">targeted</text>',
        f'<rect x="{label_w + 90}" y="4" width="10" height="10" fill="#4e79a7"/>',
        f'<text x="{label_w + 104}" y="13">arrived</text>',
    ]
    for i, item in enumerate(items):
        y = top + i * row_h
        label = html.escape(str(item["value"] if item["value"] is not None else "unknown"))
        targeted_w = plot_w * item["targeted"] / peak
        arrived_w = plot_w * item["arrived"] / peak
        parts.append(f'<text x="{label_w - 6}" y="{y + 14}" text-anchor="end">{label}</text>')
        parts.append(f'<rect x="{label_w}" y="{y + 2}" width="{targeted_w:.1f}" height="16" fill="#a0cbe8"/>')
        parts.append(f'<rect x="{label_w}" y="{y + 6}" width="{arrived_w:.1f}" height="8" fill="#4e79a7"/>')
        parts.append(
            f'<text x="{label_w + max(targeted_w, arrived_w) + 6:.1f}" y="{y + 14}">'
            f"{item['arrived']} / {item['targeted']}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _table(rows: list[tuple[str, dict[str, Any]]], first: str) -> str:
    head = "".join(f"<th>{c}</th>" for c in (first, *COUNTERS))
    body = "".join(
        f"<tr><td>{html.escape(label)}</td>" + "".join(f"<td>{counts[c]}</td>" for c in COUNTERS) + "</tr>"
        for label, counts in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def to_html(reports: list[dict[str, Any]], month: str) -> str:
    """A self-contained HTML page: per app its totals, rates, per-day chart and table, and the
    split by platform and by channel."""
    sections = []
    for r in reports:
        totals, rates = r["totals"], r["rates"]
        days = [(_day(p["t"]), p) for p in r["days"]]
        by = {
            name: [(str(i["value"] if i["value"] is not None else "unknown"), i) for i in r[f"by_{name}"]]
            for name in ("platform", "channel")
        }
        sections.append(
            f"<section><h2>{html.escape(r['name'])} <small>({html.escape(r['app_key'])})</small></h2>"
            f'<p class="rates"><span>arrival rate {rates["arrival_rate"]:.1%}</span>'
            f"<span>open rate {rates['open_rate']:.1%}</span>"
            f"<span>targeted {totals['targeted']}</span><span>arrived {totals['arrived']}</span>"
            f"<span>opened {totals['opened']}</span></p>"
            f"<h3>Totals</h3>{_table([('month', totals)], 'period')}"
            f"<h3>Per day</h3>{_line_chart(r['days'])}{_table(days, 'day (UTC)')}"
            f"<h3>By platform</h3>{_bar_chart(r['by_platform'])}{_table(by['platform'], 'platform')}"
            f"<h3>By channel</h3>{_bar_chart(r['by_channel'])}{_table(by['channel'], 'channel')}"
            "</section>"
        )
    body = "".join(sections) or "<p>No apps in this store.</p>"
    title = f"mqttpush report {html.escape(month)}"
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{_CSS}</style></head><body><h1>{title}</h1>"
        "<p>Counts of delivery events per UTC day (docs/statistics.md). Arrival rate = arrived /"
        " targeted; open rate = opened / arrived.</p>"
        f"{body}</body></html>\n"
    )
