"""Inline SVG bar charts, drawn on the server: no script, no external asset.

A chart is decoration beside a table that holds the same numbers (screen readers get the table;
the SVG is ``aria-hidden``). Each bar carries its label in ``data-label`` and its value in
``data-value``, and the chart its total in ``data-total``, which is what the tests compare
with the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from markupsafe import Markup, escape

WIDTH = 720
HEIGHT = 220
_PAD_LEFT, _PAD_BOTTOM, _PAD_TOP = 8, 40, 16
#: The width of a tick label's character in the chart's units (the tick font is small).
_CHAR_PX = 7


def bars(
    points: Sequence[tuple[str, int]], *, label: str, fmt: Callable[[int], str] = str
) -> Markup:
    """Vertical bars, one per (label, value), in the order given."""
    total = sum(v for _, v in points)
    top = max((v for _, v in points), default=0) or 1
    n = max(len(points), 1)
    plot_h = HEIGHT - _PAD_BOTTOM - _PAD_TOP
    step = (WIDTH - _PAD_LEFT * 2) / n
    width = min(max(step * 0.7, 1.0), 64.0)
    parts = [
        f'<svg class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-hidden="true"'
        f' data-total="{total}" preserveAspectRatio="xMidYMid meet">',
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{HEIGHT - _PAD_BOTTOM}" x2="{WIDTH - _PAD_LEFT}"'
        f' y2="{HEIGHT - _PAD_BOTTOM}"/>',
    ]
    # Label every bar only while the labels fit: a 30-day chart labels every fourth day.
    widest = max((len(_short(name)) for name, _ in points), default=1)
    room = (WIDTH - _PAD_LEFT * 2) / (widest * _CHAR_PX + 12)
    every = max(1, math.ceil(n / max(room, 1)))
    for i, (name, value) in enumerate(points):
        h = plot_h * value / top
        x = _PAD_LEFT + i * step + (step - width) / 2
        y = HEIGHT - _PAD_BOTTOM - h
        parts.append(
            f'<rect class="bar" x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{h:.1f}"'
            f' data-label="{escape(name)}" data-value="{value}">'
            f"<title>{escape(name)}: {escape(fmt(value))}</title></rect>"
        )
        if i % every == 0:
            parts.append(
                f'<text class="tick" x="{x + width / 2:.1f}" y="{HEIGHT - _PAD_BOTTOM + 14}"'
                f' text-anchor="middle">{escape(_short(name))}</text>'
            )
    parts.append(
        f'<text class="caption" x="{_PAD_LEFT}" y="{HEIGHT - 6}">{escape(label)}; top bar'
        f" {escape(fmt(top if points else 0))}</text></svg>"
    )
    return Markup("".join(parts))


def _short(name: str) -> str:
    return name if len(name) <= 12 else name[:11] + "…"


def meter(spent: int, reserved: int, limit: int, elapsed: float | None) -> Markup:
    """A horizontal bar: spent, then reserved, against the limit; a tick where spending would
    be if it went evenly over the period (``elapsed``: the share of the period gone by)."""
    width, height = 240, 16
    scale = width / limit if limit > 0 else 0.0
    spent_w = min(spent * scale, width)
    reserved_w = min(reserved * scale, width - spent_w)
    parts = [
        f'<svg class="meter" viewBox="0 0 {width} {height}" aria-hidden="true"'
        f' data-spent="{spent}" data-limit="{limit}">',
        f'<rect class="track" x="0" y="0" width="{width}" height="{height}"/>',
        f'<rect class="spent{" over" if spent + reserved > limit else ""}" x="0" y="0"'
        f' width="{spent_w:.1f}" height="{height}"/>',
        f'<rect class="reserved" x="{spent_w:.1f}" y="0" width="{reserved_w:.1f}"'
        f' height="{height}"/>',
    ]
    if elapsed is not None:
        x = width * elapsed
        parts.append(f'<line class="pace" x1="{x:.1f}" y1="0" x2="{x:.1f}" y2="{height}"/>')
    parts.append("</svg>")
    return Markup("".join(parts))


def burn(points: Sequence[tuple[str, int | None]], limit: int, *, label: str) -> Markup:
    """A budget's burn-down: per day of its period, the spend so far (a bar; ``None``: a day
    still to come, no bar), against the limit (a horizontal line) and the even pace (a line
    from nothing on the first day to the limit on the last)."""
    n = max(len(points), 1)
    top = max([limit, *(v for _, v in points if v is not None)]) or 1
    plot_h = HEIGHT - _PAD_BOTTOM - _PAD_TOP
    step = (WIDTH - _PAD_LEFT * 2) / n
    width = min(max(step * 0.7, 1.0), 64.0)
    base = HEIGHT - _PAD_BOTTOM

    def y(value: int) -> float:
        return base - plot_h * value / top

    shown = [v for _, v in points if v is not None]
    parts = [
        f'<svg class="chart burn" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-hidden="true"'
        f' data-limit="{limit}" data-last="{shown[-1] if shown else 0}"'
        ' preserveAspectRatio="xMidYMid meet">',
        f'<line class="axis" x1="{_PAD_LEFT}" y1="{base}" x2="{WIDTH - _PAD_LEFT}" y2="{base}"/>',
    ]
    every = max(1, math.ceil(n / 10))
    for i, (name, value) in enumerate(points):
        x = _PAD_LEFT + i * step + (step - width) / 2
        if value is not None:
            parts.append(
                f'<rect class="bar" x="{x:.1f}" y="{y(value):.1f}" width="{width:.1f}"'
                f' height="{base - y(value):.1f}" data-label="{escape(name)}"'
                f' data-value="{value}"><title>{escape(name)}: {value}</title></rect>'
            )
        if i % every == 0:
            parts.append(
                f'<text class="tick" x="{x + width / 2:.1f}" y="{base + 14}"'
                f' text-anchor="middle">{escape(_short(name[5:]))}</text>'
            )
    right = WIDTH - _PAD_LEFT
    parts.append(f'<line class="limit" x1="{_PAD_LEFT}" y1="{y(limit):.1f}" x2="{right}"'
                 f' y2="{y(limit):.1f}"/>')  # fmt: skip
    parts.append(f'<line class="pace" x1="{_PAD_LEFT}" y1="{base}" x2="{right}"'
                 f' y2="{y(limit):.1f}"/>')  # fmt: skip
    parts.append(f'<text class="caption" x="{_PAD_LEFT}" y="{HEIGHT - 6}">{escape(label)}</text>')
    parts.append("</svg>")
    return Markup("".join(parts))
