"""Helpers shared by the benchmarks (standard library only: the SAELens worker imports this too)."""

from __future__ import annotations

import os
import platform


def load_avg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, recorded so that a reader can tell a quiet run from a busy one."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine(torch_version: str, threads: int, load_before, load_after, **extra) -> dict:
    """What a results file says about the machine it was measured on."""
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch": torch_version,
        "torch_threads": threads,
        "load_avg_before": load_before,
        "load_avg_after": load_after,
        **extra,
    }
