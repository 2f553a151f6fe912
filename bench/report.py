"""From raw observations to numbers, tables, the latency CDF and RESULTS.md."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any

MIB = 1024.0


def percentile(sorted_ms: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list (NaN when empty)."""
    if not sorted_ms:
        return math.nan
    rank = max(1, math.ceil(q / 100.0 * len(sorted_ms)))
    return sorted_ms[rank - 1]


def case_metrics(
    ids: list[str], renames: list[int], wakes: list[tuple[str, int]]
) -> tuple[dict[str, Any], list[float]]:
    """Lost, duplicated, latency percentiles and drain rate of one run; and its latencies."""
    renamed = dict(zip(ids, renames, strict=True))
    seen = Counter(t for t, _ in wakes)
    first: dict[str, int] = {}
    for task, ns in wakes:
        if task in renamed and task not in first:
            first[task] = ns
    lat = sorted((ns - renamed[t]) / 1e6 for t, ns in first.items())
    handled = len(first)
    span_s = (max(first.values()) - min(renames)) / 1e9 if first else math.nan
    metrics = {
        "files": len(ids),
        "handled": handled,
        "lost": len(ids) - handled,
        "unfinished": 0,
        "duplicated": sum(n - 1 for t, n in seen.items() if t in renamed and n > 1),
        "unknown": sum(n for t, n in seen.items() if t not in renamed),
        "p50_ms": percentile(lat, 50),
        "p90_ms": percentile(lat, 90),
        "p99_ms": percentile(lat, 99),
        "max_ms": lat[-1] if lat else math.nan,
        "drain_per_s": handled / span_s if handled and span_s > 0 else math.nan,
        "span_s": span_s,
    }
    return metrics, lat


# -- formatting -----------------------------------------------------------------------


def ms(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "–"
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def rate(v: float) -> str:
    return "–" if isinstance(v, float) and math.isnan(v) else f"{v:,.0f}"


def cpu_ms(v: float) -> str:
    """CPU ms per file to two decimals: the cheapest systems spend well under 1 ms."""
    return "–" if isinstance(v, float) and math.isnan(v) else f"{v:.2f}"


def mib(kib: float) -> str:
    return f"{kib / MIB:.1f}"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def case_rows(cases: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for c in cases:
        m = c["metrics"]
        rows.append(
            [
                c["system"],
                f"{m['handled']:,} / {m['files']:,}",
                f"**{m['lost']:,}**" if m["lost"] else "0",
                f"{m['unfinished']:,}" if m["unfinished"] else "0",
                f"**{m['duplicated']:,}**" if m["duplicated"] else "0",
                ms(m["p50_ms"]),
                ms(m["p90_ms"]),
                ms(m["p99_ms"]),
                rate(m["drain_per_s"]),
                cpu_ms(m["cpu_ms_per_file"]),
                mib(c["peak_rss_kib"]),
                f"{c['produce_s']:.1f}",
                f"{c['pressure_during'].get('steal', 0):.0%}",
            ]
        )
    return rows


CASE_HEADER = [
    "system",
    "handled",
    "lost",
    "unfinished",
    "dup",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "drain files/s",
    "CPU ms/file",
    "peak RSS MiB",
    "produce s",
    "CPU stolen",
]


# -- the CDF --------------------------------------------------------------------------


def plot_cdf(panels: list[tuple[str, dict[str, list[float]]]], path: Path) -> None:
    """One panel per workload, one line per system: share of files handled within x ms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.6), squeeze=False)
    names = sorted({name for _, series in panels for name in series})
    color = {name: f"C{i}" for i, name in enumerate(names)}  # one color per system everywhere
    for ax, (title, series) in zip(axes[0], panels, strict=True):
        for name in names:
            lat = series.get(name, [])
            if not lat:
                continue
            xs = [max(v, 0.01) for v in lat]
            ys = [(i + 1) / len(lat) for i in range(len(lat))]
            ax.step(xs, ys, where="post", color=color[name], label=f"{name} (n={len(lat):,})")
        ax.set_xscale("log")
        ax.set_xlabel("rename -> handler start (ms, log scale)")
        ax.set_ylabel("share of handled files")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
