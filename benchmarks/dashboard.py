"""Speed of ``saex dashboard``'s static site: writing it, and opening it in a browser.

What is measured (every number that matters is a ratio against a reference timed in the same run):

(a) **site build** (s per feature) for ``--features`` synthetic payloads (default 20,000; the shapes of
    ``tests/dashboard/_synth.py``, hostile token strings included, with ``--examples`` examples of
    ``--tokens`` tokens and every analysis panel filled):

    ``json``        the reference: each payload as JSON (``json.dumps``, compact, ``ensure_ascii=False``) written
                    to its own file (data/f/<id // 1000>/<id>.json) with plain ``open``/``write``: no
                    escaping, no atomic rename, no comparison with what is there;
    ``json_dump``   the same with ``json.dump(payload, fh)`` (which writes many small pieces);
    ``site``        ``saex.dashboard.site.write_site`` into a fresh folder: the pages, ``data/index.js``,
                    one escaped JS data file per feature, written atomically (temporary name, rename);
    ``rebuild``     ``write_site`` again into the folder ``site`` wrote: every file compared, none rewritten;
    ``generate``    iterating the payload generator alone (what the other three also pay; about nothing).

    Ratios: ``site / json`` (the overhead of escaping and atomic writes) and ``rebuild / json``.

(b) **browser** (headless Chromium through Selenium, ``/usr/bin/chromedriver`` as the browser tests use; pages
    opened from ``file://``): the index page from navigation to rendered (``body[data-ready="1"]``: data/index.js
    parsed, rows sorted, the first 100 drawn) for ``--big`` (50,000) features against ``--small`` (500)
    features, sorted by id (the default view) and by score (``#sort=score&dir=desc``); and a feature page
    (``feature.html#<id>`` until ``body[data-ready=<id>]``) with a full payload (60 examples of 64 tokens in 4
    sections, every panel) against a minimal one (no examples, no panels). Times are the page's own
    ``performance.now()`` (milliseconds since the navigation started) at the first poll that sees the page
    ready (polls every ~2 ms), and the wall time around ``driver.get`` and the polling.

Rounds are interleaved (order rotated each round; ``rebuild`` always right after ``site``) after one warm-up
of each method; medians. Before each build method, untimed, its output folder is removed and ``os.sync()``
writes back every dirty page, so no method pays for the previous one's disk writes.

    .venv/bin/python benchmarks/dashboard.py            # ~2-4 min on 2 CPU cores
    .venv/bin/python benchmarks/dashboard.py --quick    # 2,000 features, 2 rounds, 5,000-row big index
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests/dashboard/_synth.py

from tests.dashboard import _synth as synth  # noqa: E402

from _common import load_avg, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from saex.dashboard.site import SHARD, write_site  # noqa: E402
from saex.files import write_json_atomic  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dashboard.json"
CHROMEDRIVER = "/usr/bin/chromedriver"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--features", type=int, default=None, help="payloads of the build benchmark (default 20,000)")
    p.add_argument("--examples", type=int, default=12, help="examples per build payload (4 sections)")
    p.add_argument("--tokens", type=int, default=64, help="tokens per example")
    p.add_argument("--small", type=int, default=500, help="rows of the small index (reference)")
    p.add_argument("--big", type=int, default=None, help="rows of the big index (default 50,000)")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 3 build, 7 browser; quick 2)")
    p.add_argument("--work", default=None, help="scratch folder (default: a temporary one, removed)")
    p.add_argument("--only", default="build,browser")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    a.features = a.features or (2000 if a.quick else 20_000)
    a.big = a.big or (5000 if a.quick else 50_000)
    a.json = a.json or str(RESULTS.with_name("dashboard-quick.json") if a.quick else RESULTS)
    return a


# -- payloads ------------------------------------------------------------------------------------------------


@cache
def _examples(i: int, n: int, tokens: int) -> list[dict]:
    """Shared between payloads (i is taken modulo 64), so that making a payload costs next to nothing."""
    toks = synth.RICH_TOKENS + [" the", " river", " bank", " of", " a"]
    return [
        {
            "tokens": [toks[(i + e + t) % len(toks)] for t in range(tokens)],
            "acts": [round(((i * 7 + e * 3 + t) % 17) / 4.0, 6) if (t + e) % 3 else 0 for t in range(tokens)],
        }
        for e in range(n)
    ]


def payload(i: int, examples: int, tokens: int) -> dict:
    """A feature payload as ``saex dashboard`` writes it, every panel filled, hostile strings included."""
    p = synth.payload(synth.RICH) | {"id": i, "density": synth.density(i), "explanation": synth.explanation(i)}
    per = max(1, examples // 4)
    p["sections"] = [
        {"title": title, "examples": _examples((i + k) % 64, per, tokens)}
        for k, title in enumerate(
            ("Top activations", "Decile 10 of 10 (highest)", "Decile 5 of 10", "Random activating fragments")
        )
    ]
    p["not_computed"] = {}
    return p


def rows(n: int) -> list[dict]:
    return [
        {
            "id": i,
            "density": (i % 97) / 1e4,
            "max": float(i % 11) + 0.5,
            "score": None if i % 3 == 0 else ((i * 7919) % 1000) / 1000,
            "explanation": f"feature number {i}",
        }
        for i in range(n)
    ]


# -- (a) site build ------------------------------------------------------------------------------------------


def bench_build(a, work: Path) -> dict:
    n = a.features
    sample = payload(1, a.examples, a.tokens)
    row_list = rows(n)

    def gen():
        for i in range(n):
            yield payload(i, a.examples, a.tokens)

    def plain_json(stream: bool):
        out = work / ("json_dump" if stream else "json")
        for p in gen():
            d = out / str(p["id"] // SHARD)
            if p["id"] % SHARD == 0:
                d.mkdir(parents=True, exist_ok=True)
            with open(d / f"{p['id']}.json", "w", encoding="utf-8") as fh:
                if stream:  # json.dump writes the text in many small pieces
                    json.dump(p, fh, ensure_ascii=False, separators=(",", ":"))
                else:
                    fh.write(json.dumps(p, ensure_ascii=False, separators=(",", ":")))

    def site():
        write_site(work / "site", {"dictionary": "bench"}, row_list, gen())

    def rebuild():
        write_site(work / "site", {"dictionary": "bench"}, row_list, gen())

    def generate():
        for _ in gen():
            pass

    def fresh(name):  # outside the timing: the folder removed, and every dirty page written back
        def prep():
            shutil.rmtree(work / name, ignore_errors=True)
            os.sync()

        return prep

    methods = {
        "json": lambda: plain_json(False),
        "json_dump": lambda: plain_json(True),
        "site": site,
        "rebuild": rebuild,
        "generate": generate,
    }
    prep = {
        "json": fresh("json"),
        "json_dump": fresh("json_dump"),
        "site": fresh("site"),
        "rebuild": os.sync,
        "generate": os.sync,
    }
    # rebuild must follow a site build: run it right after site in every round
    times = _rounds(methods, a.repeats or (2 if a.quick else 3), "build", prep=prep, follow={"rebuild": "site"})
    per = {m: [t / n for t in v] for m, v in times.items()}
    files = list((work / "site" / "data" / "f").rglob("*.js"))
    sizes = [f.stat().st_size for f in files[:200]]
    manifest = json.loads((work / "site" / "dashboard.json").read_text())
    return {
        "features": n,
        "payload_bytes_json": len(json.dumps(sample, ensure_ascii=False, separators=(",", ":"))),
        "feature_file_bytes_median": statistics.median(sizes),
        "rebuild_written": manifest["written"],
        "seconds": times,
        "s_per_feature": per,
        "median_ms_per_feature": {m: 1e3 * statistics.median(v) for m, v in per.items()},
        "ratios": {
            "site_vs_json": _ratio(times, "site", "json"),
            "rebuild_vs_json": _ratio(times, "rebuild", "json"),
            "json_dump_vs_json": _ratio(times, "json_dump", "json"),
            "generate_vs_json": _ratio(times, "generate", "json"),
        },
    }


# -- (b) browser -----------------------------------------------------------------------------------------


def _driver():
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium or not os.access(CHROMEDRIVER, os.X_OK):
        raise RuntimeError("needs Debian chromium and chromium-driver (apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,1000",
        "--no-first-run",
        "--disable-extensions",
    ):
        opts.add_argument(arg)
    opts.binary_location = chromium
    d = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    d.set_page_load_timeout(120)
    return d


def _open(driver, url: str, ready: str) -> tuple[float, float]:
    """(in-page ms since navigation start, wall ms) until body[data-ready] == ready."""
    driver.get("about:blank")
    t0 = time.perf_counter()
    driver.get(url)
    js = "return [document.body && document.body.getAttribute('data-ready'), performance.now()]"
    deadline = t0 + 120
    while True:
        state, now = driver.execute_script(js)
        if state == ready:
            return float(now), 1e3 * (time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            raise RuntimeError(f"{url} never became ready ({state!r})")
        time.sleep(0.002)


def bench_browser(a, work: Path) -> dict:
    sites = {}
    for name, n in (("small", a.small), ("big", a.big)):
        full, empty = payload(1, 60, 64), synth.payload(synth.EMPTY) | {"id": 2}
        sites[name] = write_site(work / f"browser-{name}", {"dictionary": f"bench {n}"}, rows(n), [full, empty])
    driver = _driver()
    try:

        def page(site, html, frag, ready):
            url = sites[site].joinpath(html).as_uri() + frag
            return lambda: _open(driver, url, ready)

        by_score = "#sort=score&dir=desc"
        methods = {
            "index_small": page("small", "index.html", "", "1"),
            "index_big": page("big", "index.html", "", "1"),
            "index_small_by_score": page("small", "index.html", by_score, "1"),
            "index_big_by_score": page("big", "index.html", by_score, "1"),
            "feature_full": page("big", "feature.html", "#1", "1"),
            "feature_minimal": page("big", "feature.html", "#2", "2"),
        }
        raw = _rounds(methods, a.repeats or (2 if a.quick else 7), "browser", keep=True)
    finally:
        driver.quit()
    in_page = {m: [r[0] for r in v] for m, v in raw.items()}
    wall = {m: [r[1] for r in v] for m, v in raw.items()}
    return {
        "small": a.small,
        "big": a.big,
        "index_js_bytes": {k: (s / "data" / "index.js").stat().st_size for k, s in sites.items()},
        "in_page_ms": in_page,
        "wall_ms": wall,
        "median_in_page_ms": {m: statistics.median(v) for m, v in in_page.items()},
        "median_wall_ms": {m: statistics.median(v) for m, v in wall.items()},
        "ratios": {
            "index_big_vs_small": _ratio(in_page, "index_big", "index_small"),
            "index_big_vs_small_by_score": _ratio(in_page, "index_big_by_score", "index_small_by_score"),
            "feature_full_vs_minimal": _ratio(in_page, "feature_full", "feature_minimal"),
            "index_big_vs_small_wall": _ratio(wall, "index_big", "index_small"),
        },
    }


# -- shared ----------------------------------------------------------------------------------------------------


def _rounds(
    methods: dict, repeats: int, what: str, keep: bool = False, prep: dict | None = None, follow: dict | None = None
) -> dict[str, list]:
    """Each method once as a warm-up, then ``repeats`` rounds in rotated order; ``prep[m]`` runs untimed
    before ``m``; ``follow[m] = n`` keeps ``m`` right after ``n``."""
    prep, follow = prep or {}, follow or {}
    names = [m for m in methods if m not in follow]
    out: dict[str, list] = {m: [] for m in methods}
    for r in range(-1, repeats):
        order = names[r % len(names) :] + names[: r % len(names)] if r >= 0 else names
        for m in [x for n in order for x in [n] + [f for f, after in follow.items() if after == n]]:
            prep.get(m, lambda: None)()
            t = time.perf_counter()
            res = methods[m]()
            if r >= 0:
                out[m].append(res if keep else time.perf_counter() - t)
        if r >= 0:
            last = {m: (v[-1][0] if keep else v[-1]) for m, v in out.items()}
            print(
                f"{what} round {r + 1}/{repeats}: " + "  ".join(f"{m} {x:.3g}" for m, x in last.items()),
                file=sys.stderr,
            )
    return out


def _ratio(times: dict, num: str, den: str) -> dict:
    paired = [n / d for n, d in zip(times[num], times[den])]
    return {
        "ratio_of_medians": statistics.median(times[num]) / statistics.median(times[den]),
        "median_paired": statistics.median(paired),
        "paired": paired,
    }


def main(argv=None) -> dict:
    a = parse_args(argv)
    only = {s.strip() for s in a.only.split(",")}
    load_before = load_avg()
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="saex-bench-dashboard-"))
    work.mkdir(parents=True, exist_ok=True)
    result: dict = {"benchmark": "dashboard", "config": vars(a)}
    try:
        if "build" in only:
            result["build"] = bench_build(a, work)
        if "browser" in only:
            try:
                result["browser"] = bench_browser(a, work)
            except Exception as e:  # no browser here: the build numbers still stand
                result["browser"] = {"error": f"{type(e).__name__}: {e}"}
                print(f"browser part skipped: {result['browser']['error']}", file=sys.stderr)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    import selenium
    import torch

    result["machine"] = machine(
        torch.__version__, torch.get_num_threads(), load_before, load_avg(), selenium=selenium.__version__
    )
    _print(result)
    write_json_atomic(Path(a.json), result)
    print(f"results in {a.json}")
    return result


def _print(r: dict) -> None:
    b = r.get("build")
    if b:
        print(
            f"site build, {b['features']} features ({b['payload_bytes_json']} bytes of JSON each, "
            f"feature file {b['feature_file_bytes_median']:.0f} bytes)"
        )
        print(f"{'method':<12}{'ms/feature':>12}{'s total':>10}")
        for m, v in b["median_ms_per_feature"].items():
            print(f"{m:<12}{v:>12.3f}{statistics.median(b['seconds'][m]):>10.2f}")
        for k, v in b["ratios"].items():
            print(f"{k:<28}{v['ratio_of_medians']:>8.2f}   median of paired {v['median_paired']:.2f}")
    w = r.get("browser")
    if w and "error" not in w:
        print(f"browser, index of {w['small']} and {w['big']} features")
        print(f"{'page':<24}{'in-page ms':>12}{'wall ms':>10}")
        for m, v in w["median_in_page_ms"].items():
            print(f"{m:<24}{v:>12.1f}{w['median_wall_ms'][m]:>10.1f}")
        for k, v in w["ratios"].items():
            print(f"{k:<32}{v['ratio_of_medians']:>8.2f}   median of paired {v['median_paired']:.2f}")
    elif w:
        print(f"browser: {w['error']}")


if __name__ == "__main__":
    main()
