"""Server-rendered SVG charts: the balance over time and spending by action.

Each SVG carries a <title> and <desc> (read out by screen readers), its own styles and a dark
variant that follows the system colour scheme, and no script.
"""

from __future__ import annotations

import math
from datetime import datetime
from xml.sax.saxutils import escape

from web.ledger_view import action_label

WIDTH = 520
HEIGHT = 240
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 52, 16, 16, 36

STYLE = """
svg { font: 14px system-ui, sans-serif; }
.bg { fill: #ffffff; }
.axis, .grid { stroke: #c8ccd4; stroke-width: 1; }
.label { fill: #3b4150; }
.line { fill: none; stroke: #3257d6; stroke-width: 2.5; stroke-linejoin: round; }
.area { fill: #3257d6; fill-opacity: 0.12; }
.bar { fill: #c2410c; }
.value { fill: #1f2430; font-weight: 600; }
.empty { fill: #3b4150; font-size: 14px; }
@media (prefers-color-scheme: dark) {
  .bg { fill: #171a21; }
  .axis, .grid { stroke: #3a404d; }
  .label { fill: #c3c8d3; }
  .line { stroke: #8aa8ff; }
  .area { fill: #8aa8ff; }
  .bar { fill: #fb923c; }
  .value { fill: #eef0f5; }
  .empty { fill: #c3c8d3; }
}
"""


def nice_max(value: float) -> int:
    """The next 'round' number at or above value, for the top of a y-axis."""
    if value <= 0:
        return 1
    magnitude = 10.0 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * magnitude:
            return max(1, math.ceil(step * magnitude))
    return math.ceil(value)


def _svg(title: str, desc: str, body: list[str], height: int = HEIGHT) -> str:
    return "\n".join(
        [
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
            f'width="{WIDTH}" height="{height}" role="img" aria-labelledby="t d">',
            f'<title id="t">{escape(title)}</title>',
            f'<desc id="d">{escape(desc)}</desc>',
            f"<style>{STYLE}</style>",
            f'<rect class="bg" x="0" y="0" width="{WIDTH}" height="{height}" rx="8"/>',
            *body,
            "</svg>",
        ]
    )


def _empty(title: str, message: str) -> str:
    text = (
        f'<text class="empty" x="{WIDTH / 2}" y="{HEIGHT / 2}" '
        f'text-anchor="middle">{escape(message)}</text>'
    )
    return _svg(title, message, [text])


def _day(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d")


def _tick(moment: datetime, span_seconds: float) -> str:
    """An axis label precise enough for the span shown."""
    if span_seconds < 120:
        return moment.strftime("%H:%M:%S")
    if span_seconds < 2 * 86400:
        return moment.strftime("%m-%d %H:%M")
    return _day(moment)


def balance_chart(points: list[tuple[datetime, int]], since: datetime, until: datetime) -> str:
    """A line through the sampled balance from `since` to `until`."""
    title = "Balance over time"
    if not points:
        return _empty(title, f"No balance history between {_day(since)} and {_day(until)}.")
    top = nice_max(max(v for _, v in points))
    span = max((until - since).total_seconds(), 1.0)
    plot_w = WIDTH - PAD_LEFT - PAD_RIGHT
    plot_h = HEIGHT - PAD_TOP - PAD_BOTTOM
    bottom = PAD_TOP + plot_h

    def x(moment: datetime) -> float:
        return PAD_LEFT + plot_w * (moment - since).total_seconds() / span

    def y(value: int) -> float:
        return PAD_TOP + plot_h * (1 - value / top)

    coords = [(x(moment), y(value)) for moment, value in points]
    line = " ".join(
        f"{'M' if index == 0 else 'L'}{cx:.1f},{cy:.1f}" for index, (cx, cy) in enumerate(coords)
    )
    first_x, last_x = coords[0][0], coords[-1][0]
    area = f"{line} V{bottom:.1f} H{first_x:.1f} Z"
    body = [
        f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(top):.1f}" '
        f'y2="{y(top):.1f}"/>',
        f'<line class="grid" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{y(top // 2):.1f}" '
        f'y2="{y(top // 2):.1f}"/>',
        f'<line class="axis" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" y1="{bottom}" '
        f'y2="{bottom}"/>',
        f'<text class="label" x="{PAD_LEFT - 8}" y="{y(top) + 4:.1f}" '
        f'text-anchor="end">{top}</text>',
        f'<text class="label" x="{PAD_LEFT - 8}" y="{y(top // 2) + 4:.1f}" '
        f'text-anchor="end">{top // 2}</text>',
        f'<text class="label" x="{PAD_LEFT - 8}" y="{bottom + 4}" text-anchor="end">0</text>',
        f'<text class="label" x="{PAD_LEFT}" y="{HEIGHT - 12}">{_tick(since, span)}</text>',
        f'<text class="label" x="{PAD_LEFT + plot_w / 2:.1f}" y="{HEIGHT - 12}" '
        f'text-anchor="middle">{_tick(since + (until - since) / 2, span)}</text>',
        f'<text class="label" x="{WIDTH - PAD_RIGHT}" y="{HEIGHT - 12}" '
        f'text-anchor="end">{_tick(until, span)}</text>',
        f'<path class="area" d="{area}"/>',
        f'<path class="line" d="{line}"/>',
        f'<circle class="bar" cx="{last_x:.1f}" cy="{y(points[-1][1]):.1f}" r="4"/>',
    ]
    values = [v for _, v in points]
    desc = (
        f"Balance from {_day(since)} to {_day(until)}: started at {values[0]}, "
        f"ended at {values[-1]}, lowest {min(values)}, highest {max(values)}."
    )
    return _svg(title, desc, body)


def spending_chart(spending: dict[str, int], since: datetime, until: datetime) -> str:
    """Horizontal bars: credits spent per action, largest first."""
    title = "Spending by action"
    items = sorted(((a, n) for a, n in spending.items() if n > 0), key=lambda i: (-i[1], i[0]))
    if not items:
        return _empty(title, f"No credits spent between {_day(since)} and {_day(until)}.")
    items = items[:8]
    bar_h, gap, label_w = 24, 12, 100
    height = PAD_TOP * 2 + len(items) * (bar_h + gap)
    top = nice_max(items[0][1])
    plot_w = WIDTH - label_w - PAD_RIGHT - 60
    body: list[str] = []
    for index, (action, amount) in enumerate(items):
        y = PAD_TOP + index * (bar_h + gap)
        width = max(2.0, plot_w * amount / top)
        body += [
            f'<text class="label" x="{label_w - 8}" y="{y + bar_h * 0.7:.1f}" '
            f'text-anchor="end">{escape(action_label(action))}</text>',
            f'<rect class="bar" x="{label_w}" y="{y}" width="{width:.1f}" height="{bar_h}" '
            f'rx="3"/>',
            f'<text class="value" x="{label_w + width + 8:.1f}" y="{y + bar_h * 0.7:.1f}">'
            f"{amount}</text>",
        ]
    total = sum(amount for _, amount in items)
    desc = (
        f"Credits spent from {_day(since)} to {_day(until)}, {total} in all: "
        + ", ".join(f"{action_label(a)} {n}" for a, n in items)
        + "."
    )
    return _svg(title, desc, body, height=height)
