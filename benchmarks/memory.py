"""Peak memory of the stages as the data grows: it must be bounded by buffer and shard sizes, not by tokens.

Each stage runs as ``saex ...`` in its own process (its peak resident set size is read from ``os.wait4``), on the
embedded SmolLM2-135M at layer 6, once on N tokens and once on 4N tokens:

``harvest``   ``saex harvest --tokens N`` (shards of N/4 rows, so that every reader's buffer is full at N already;
              float16 storage)
``train``     ``saex train`` on that store, the same 200 steps of 1024 (the shuffle buffer: 4 shards)
``features``  ``saex features`` of the trained SAE over the store's held-out split (N/10 tokens, so 4× the
              fragments)
``train-fly`` ``saex train --model`` for N/1024 or 4N/1024 steps of 1024 rows (4× the tokens through a buffer of N/2 rows)

A stage whose peak at 4N exceeds ``--limit`` (default 1.25) times its peak at N fails the run (exit 1): memory
that grew with tokens. Results: a table and ``benchmarks/results/memory.json``.

    .venv/bin/python benchmarks/memory.py            # ~10 min on the 2-core CPU
    .venv/bin/python benchmarks/memory.py --tokens 16384   # smaller, ~4 min
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_avg, machine  # noqa: E402

HOOK = "blocks.6.hook_resid_post"


def peak(args: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, seconds) of ``saex ARGS`` run in a child process."""
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "saex.cli", *args, "--quiet"], stdout=subprocess.DEVNULL)
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"saex {' '.join(args)} failed with status {os.waitstatus_to_exitcode(status)}")
    return usage.ru_maxrss / 1024, time.perf_counter() - t


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tokens", type=int, default=65_536, help="N: the small run's train tokens")
    p.add_argument("--limit", type=float, default=1.25, help="largest allowed peak(4N) / peak(N)")
    p.add_argument("--work", default="runs/bench/memory")
    p.add_argument("--json", default="benchmarks/results/memory.json")
    a = p.parse_args(argv)
    work = Path(a.work)
    load_before = load_avg()
    rows = []
    for label, n in (("N", a.tokens), ("4N", 4 * a.tokens)):
        steps = max(1, n // 1024)  # on the fly: as many tokens as the store holds, through one buffer
        acts, dicts = work / f"acts-{label}", work / f"dicts-{label}"
        common = ["--device", "cpu"]
        runs = {
            # shards of N/4 rows: the readers' buffers (4 shards) are full at N already, so a bound shows as a
            # flat peak from N to 4N instead of a buffer still filling up
            "harvest": ["harvest", "--out", str(acts), "--tokens", str(n), "--hooks", HOOK,
                        "--shard-tokens", str(max(128, a.tokens // 4)), *common],
            # the held-out evaluation sample (--eval-tokens) and the index's step (--chunk fragments) are bounded
            # too: set below what N gives, so that they are full at N as well
            "train": ["train", "--acts", str(acts), "--hook", HOOK, "--out", str(dicts), "--steps", "200",
                      "--batch-size", "1024", "--normalize", "mean_norm", "--eval-tokens", "1024", *common],
            "features": ["features", "--acts", str(acts), "--dicts", str(dicts), "--out", str(work / f"features-{label}"),
                         "--chunk", "8", *common],
            "train-fly": ["train", "--model", "smollm2-135m", "--hooks", HOOK, "--out", str(work / f"fly-{label}"),
                          "--steps", str(steps), "--batch-size", "1024", "--normalize", "mean_norm",
                          "--buffer-tokens", str(max(1024, a.tokens // 2)), *common],
        }  # fmt: skip
        for stage, args in runs.items():
            mb, s = peak(args)
            rows.append({"stage": stage, "size": label, "tokens": n if stage != "train-fly" else steps * 1024,
                         "peak_mb": round(mb, 1), "seconds": round(s, 1)})  # fmt: skip
            print(f"{stage:<10} {label:<3} peak {mb:8.1f} MB  {s:6.1f} s", flush=True)
    failures = []
    ratios = {}
    for stage in ("harvest", "train", "features", "train-fly"):
        small, large = (r["peak_mb"] for s in ("N", "4N") for r in rows if r["stage"] == stage and r["size"] == s)
        ratios[stage] = round(large / small, 3)
        print(f"{stage:<10} peak(4N) / peak(N) = {ratios[stage]:.3f}")
        if ratios[stage] > a.limit:
            failures.append(stage)
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(
        json.dumps(
            {
                "rows": rows,
                "ratios": ratios,
                "limit": a.limit,
                "failures": failures,
                "machine": machine(__import__("torch").__version__, 0, load_before, load_avg()),
            },
            indent=1,
        )
        + "\n"  # fmt: skip
    )
    print("memory grew with tokens: " + ", ".join(failures) if failures else f"all within {a.limit}x")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
