"""A carrier's health over time as a small server-rendered SVG: no script, no CDN."""

from collections.abc import Sequence

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from carriers.selectors import CallFigures
from playpay.times import utc_text

WIDTH, HEIGHT, GAP = 560, 60, 22
RATE_COLOUR, LATENCY_COLOUR, EMPTY_COLOUR = "#16a34a", "#2563eb", "#d1d5db"


def _bars(
    history: Sequence[CallFigures],
    values: list[float | None],
    *,
    top: int,
    colour: str,
    unit: str,
    peak: float | None = None,
) -> SafeString:
    """One bar per bucket, scaled to `peak` (the largest value by default); a bucket without calls is a thin
    grey tick."""
    width = WIDTH / max(len(history), 1)
    peak = peak or max((value for value in values if value is not None), default=0.0) or 1.0
    bars: list[tuple[float, float, float, float, str, str]] = []
    for index, (figures, value) in enumerate(zip(history, values, strict=True)):
        x = index * width
        start = utc_text(figures.start) if figures.start else ""
        if value is None:
            bars.append((x, top + HEIGHT - 1, width - 1, 1, EMPTY_COLOUR, f"{start}: no calls"))
            continue
        height = max(HEIGHT * value / peak, 1)
        tip = f"{start}: {value:.1f} {unit}, {figures.calls_text}"
        bars.append((x, top + HEIGHT - height, width - 1, height, colour, tip))
    return format_html_join(
        "",
        '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"><title>{}</title></rect>',
        ((f"{x:.1f}", f"{y:.1f}", f"{w:.1f}", f"{h:.1f}", fill, tip) for x, y, w, h, fill, tip in bars),
    )


def health_chart(history: Sequence[CallFigures], *, title: str, label: str) -> SafeString:
    """Success rate (calls answered) and average latency per bucket, with the first and last bucket named."""
    rates = [figures.answered_percent for figures in history]
    latencies = [figures.avg_latency_ms for figures in history]
    first = history[0].start.strftime(label) if history and history[0].start else ""
    last = history[-1].start.strftime(label) if history and history[-1].start else ""
    total = CallFigures(calls=sum(figures.calls for figures in history)).calls_text
    height = 2 * HEIGHT + 3 * GAP
    return format_html(
        '<figure class="carrier-health-chart" style="margin:0 0 12px 0">'
        '<figcaption style="font-weight:600">{} — {}</figcaption>'
        '<svg role="img" aria-label="{}" viewBox="0 0 {} {}" width="{}" height="{}" '
        'xmlns="http://www.w3.org/2000/svg" style="max-width:100%;height:auto;font:11px sans-serif">'
        '<text x="0" y="12" fill="{}">Success rate (calls answered, %)</text>{}'
        '<text x="0" y="{}" fill="{}">Average latency (ms)</text>{}'
        '<text x="0" y="{}" fill="currentColor">{}</text>'
        '<text x="{}" y="{}" text-anchor="end" fill="currentColor">{}</text>'
        "</svg></figure>",
        title,
        total,
        title,
        WIDTH,
        height,
        WIDTH,
        height,
        RATE_COLOUR,
        _bars(history, rates, top=GAP - 6, colour=RATE_COLOUR, unit="%", peak=100.0),
        HEIGHT + GAP + 12,
        LATENCY_COLOUR,
        _bars(history, latencies, top=HEIGHT + 2 * GAP - 6, colour=LATENCY_COLOUR, unit="ms"),
        height - 2,
        first,
        WIDTH,
        height - 2,
        last,
    )
