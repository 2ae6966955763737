"""Choosing the sparsity coefficient α for a target L0 from a measured α grid (used by ``saex calibrate``).

L0 falls monotonically with α, roughly as a power law over the range that matters, so the α of a target L0
is read off a piecewise-linear fit of log α against log L0 (docs/training.md, "Choosing α").
"""

from __future__ import annotations

import math

import numpy as np

from saex.errors import SaexError


def interpolate(grid: list[tuple[float, float]], target: float) -> tuple[float, bool]:
    """α with L0 = ``target`` from measured ``(α, L0)`` pairs: piecewise-linear in (log L0, log α) over the
    pairs sorted by L0, extrapolated along the end segment outside their range. Returns (α, extrapolated)."""
    pts = sorted((math.log(l0), math.log(a)) for a, l0 in grid if a > 0 and l0 > 0)
    if len(pts) < 2:
        raise SaexError(f"the calibration needs two α with L0 > 0 to interpolate; it measured {grid}")
    logs = [p[0] for p in pts]
    if len(set(logs)) < 2:
        raise SaexError(f"every α of the calibration grid gave the same L0 ({grid}); widen --grid")
    t = math.log(target)
    i = int(np.clip(np.searchsorted(logs, t), 1, len(pts) - 1))
    (x0, y0), (x1, y1) = pts[i - 1], pts[i]
    y = y0 if x1 == x0 else y0 + (y1 - y0) * (t - x0) / (x1 - x0)
    # an extrapolation stays within a factor of 10 of the grid: a nearly flat end segment would otherwise
    # send α anywhere (the flag and the trained dictionary's own L0 then tell the reader)
    ys = [p[1] for p in pts]
    y = min(max(y, min(ys) - math.log(10)), max(ys) + math.log(10))
    return math.exp(y), not logs[0] <= t <= logs[-1]
