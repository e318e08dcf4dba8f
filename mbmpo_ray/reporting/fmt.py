"""Numbers as the screen shows them: fixed widths, '-' for a missing value."""

from __future__ import annotations

from typing import Any

from mbmpo_ray.reporting.columns import finite


def fmt_num(v: Any) -> str:
    """A return-sized number in at most 7 characters; '-' when missing."""
    f = finite(v)
    if f is None:
        return "-"
    if abs(f) < 1000:
        return f"{f:.1f}"
    if abs(f) < 1_000_000:
        return f"{f:.0f}"
    return f"{f:.2e}"


def fmt_return(mean: Any, std: Any) -> str:
    """``mean ±std`` in 14 characters (mean right-aligned, spread left-aligned)."""
    if finite(mean) is None:
        return f"{'-':>7}       "
    spread = f"±{fmt_num(std)}" if finite(std) is not None else ""
    return f"{fmt_num(mean):>7} {spread:<6}"


def fmt_loss(v: Any) -> str:
    """A loss in at most 8 characters: 4 decimals near 1, 1 decimal up to 10,000, else
    scientific."""
    f = finite(v)
    if f is None:
        return "-"
    if 0.001 <= abs(f) < 10:
        return f"{f:.4f}"
    if 10 <= abs(f) < 10_000:
        return f"{f:.1f}"
    return f"{f:.2e}"


def fmt_seconds(s: Any) -> str:
    """``0.4s``, ``12s``, ``3.1m``, ``1.2h``; '-' when missing."""
    f = finite(s)
    if f is None:
        return "-"
    if f < 10:
        return f"{f:.1f}s"
    if f < 100:
        return f"{f:.0f}s"
    if f < 6000:
        return f"{f / 60:.1f}m"
    return f"{f / 3600:.1f}h"


def fmt_duration(s: Any) -> str:
    """Wall-clock durations: ``45s``, ``12m05s``, ``1h02m``; '-' when unknown."""
    f = finite(s)
    if f is None:
        return "-"
    f = int(round(f))
    if f < 60:
        return f"{f}s"
    if f < 3600:
        return f"{f // 60}m{f % 60:02d}s"
    return f"{f // 3600}h{f % 3600 // 60:02d}m"


def fmt_int(v: Any) -> str:
    """A count with thousands separators; '-' when missing."""
    f = finite(v)
    return "-" if f is None else f"{int(round(f)):,}"


def plural(n: int, word: str) -> str:
    """``1 iteration``, ``3 iterations``, ``4,000 real steps``."""
    return f"{n:,} {word}" + ("" if n == 1 else "s")


def as_int(v: Any) -> int:
    """``v`` rounded to an int; 0 when missing."""
    f = finite(v)
    return 0 if f is None else int(round(f))
