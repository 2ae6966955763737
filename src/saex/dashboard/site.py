"""Write the static feature dashboard: HTML pages, static JS/CSS, and one JS data file per feature.

The site opens from ``file://`` with no server, so it cannot ``fetch()`` its data: every data file is a
script that hands its JSON to a global callback (``data/index.js`` calls ``saexIndex({...})``,
``data/f/<id // 1000>/<id>.js`` calls ``saexFeature({...}, {prev, next})``) and the pages add a
``<script>`` tag for the file they need. The index page loads only the summary rows; a feature's examples
and analyses load when its page is opened, so tens of thousands of features stay fast.

Security: the pages build every piece of data text with ``textContent`` / ``setAttribute`` (never
``innerHTML``), a Content-Security-Policy forbids inline scripts, and the JSON inside data scripts has
``<``, ``>``, ``&``, U+2028 and U+2029 escaped as ``\\uXXXX`` so that no token can close the script or
break the JavaScript literal.

Writes are atomic per file (temporary name, then rename) and a rebuild leaves feature files whose content
is unchanged untouched, so an interrupted build resumes cheaply; ``dashboard.json`` is written last.
"""

from __future__ import annotations

import json
import os
import shutil
from bisect import bisect_left
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

import jinja2
from tqdm import tqdm

import saex
from saex.errors import SaexError
from saex.files import check_output_folder, create_temporary, remove_stale_temporaries, write_json_atomic
from saex.files import json_ready as clean

MARKER = "dashboard.json"
FORMAT = "saex.dashboard"
STATIC = ("saex.css", "saex-common.js", "saex-index.js", "saex-feature.js")
PAGES = ("index.html", "feature.html")
ROW_KEYS = ("id", "density", "max", "score", "explanation")
SHARD = 1000
"""Feature files per folder: data/f/<id // SHARD>/<id>.js keeps folders small for 50,000+ features."""

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def js_json(obj) -> str:
    """JSON safe to embed in a script: the characters that could end a ``<script>`` element or a JavaScript
    string literal are written as ``\\uXXXX`` escapes (they can only occur inside JSON strings). Objects
    holding NaN or numpy values are cleaned first (``clean``); plain ones go straight through (fast)."""
    try:
        text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError):
        text = json.dumps(clean(obj), ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    # one str.replace per character (C speed) rather than a regex callback per match: with token text full of
    # "<" and "&" the callback took a third of the build (benchmarks/dashboard.py). No escape contains a
    # character escaped after it, so the order does not matter.
    for ch, esc in _ESCAPES.items():
        if ch in text:
            text = text.replace(ch, esc)
    return text


def feature_path(fid: int) -> str:
    """Path of a feature's data file relative to the site root (the pages compute the same)."""
    return f"data/f/{fid // SHARD}/{fid}.js"


def _write_text(path: Path, text: str) -> bool:
    """Write ``text`` atomically unless the file already holds exactly it; returns whether it wrote.

    No fsync per file (50,000 of them would take minutes): a killed build leaves each file whole or absent,
    and the manifest, written last with fsync, marks the site complete."""
    data = text.encode("utf-8")
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temporary(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def _check_row(row: dict) -> dict:
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        raise SaexError(f"dashboard row {row!r} lacks {missing}; rows need {list(ROW_KEYS)}")
    return {k: clean(row[k]) for k in ROW_KEYS}


def _environment() -> jinja2.Environment:
    loader = jinja2.PackageLoader("saex.dashboard", "templates")
    return jinja2.Environment(
        loader=loader, autoescape=True, undefined=jinja2.StrictUndefined, keep_trailing_newline=True
    )


def _meta_items(meta: dict) -> list[tuple[str, str]]:
    """The meta entries shown on the index page, as text (escaped by the template)."""
    out = []
    for k, v in meta.items():
        if k == "title" or v is None:
            continue
        out.append((str(k), v if isinstance(v, str) else json.dumps(clean(v), ensure_ascii=False)))
    return out


def write_site(out, meta: dict, rows: list[dict], payloads: Iterable[dict], progress: bool = False) -> Path:
    """Write the dashboard of ``rows`` (summary rows, one per feature) and ``payloads`` (feature payloads, a
    stream: each is written and dropped) into ``out``; returns ``out``.

    ``meta`` describes the dictionary (``title``, ``dictionary``, ``hook``, ...; shown on the index page).
    Feature files of an earlier build that are unchanged are left as they are; those of features no longer
    in ``rows`` are removed."""
    out = Path(out)
    check_output_folder(out, MARKER, "saex dashboard")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    rows = [_check_row(r) for r in rows]
    ids = sorted(r["id"] for r in rows)
    if len(set(ids)) != len(ids):
        raise SaexError("dashboard rows repeat a feature id")
    meta = clean(dict(meta))
    title = str(meta.get("title") or f"saex dashboard: {meta.get('dictionary', 'features')}")
    write_json_atomic(
        out / MARKER, {"format": FORMAT, "saex_version": saex.__version__, "status": "in_progress", "meta": meta}
    )

    env = _environment()
    for page in PAGES:
        _write_text(out / page, env.get_template(page).render(title=title, meta_items=_meta_items(meta)))
    static = resources.files("saex.dashboard") / "static"
    for name in STATIC:
        _write_text(out / "static" / name, (static / name).read_text(encoding="utf-8"))
    _write_text(out / "data" / "index.js", f"saexIndex({js_json({'meta': meta, 'title': title, 'rows': rows})});\n")

    seen: set[int] = set()
    written = 0
    bar = tqdm(total=len(ids), desc="dashboard: features", unit="feature", disable=not progress)
    for payload in payloads:
        fid = int(payload["id"])
        pos = bisect_left(ids, fid)
        if pos == len(ids) or ids[pos] != fid:
            raise SaexError(f"feature payload {fid} has no summary row")
        if fid in seen:
            raise SaexError(f"feature payload {fid} was given twice")
        seen.add(fid)
        nav = {"prev": ids[pos - 1] if pos > 0 else None, "next": ids[pos + 1] if pos + 1 < len(ids) else None}
        text = f"saexFeature({js_json(payload)},{js_json(nav)});\n"
        written += _write_text(out / feature_path(fid), text)
        bar.update(1)
    bar.close()
    removed = _remove_stale_features(out, seen)
    write_json_atomic(
        out / MARKER,
        {
            "format": FORMAT,
            "saex_version": saex.__version__,
            "status": "complete",
            "meta": meta,
            "features": len(ids),
            "feature_files": len(seen),
            "written": written,
            "unchanged": len(seen) - written,
            "removed": removed,
        },
    )
    return out


def _remove_stale_features(out: Path, keep: set[int]) -> int:
    """Delete feature files (``data/f/<n>/<id>.js``) of features this build did not write."""
    root = out / "data" / "f"
    n = 0
    if not root.is_dir():
        return 0
    for shard in root.iterdir():
        if not (shard.is_dir() and shard.name.isdigit()):
            continue
        for p in shard.iterdir():
            stem = p.name[:-3] if p.name.endswith(".js") else ""
            if stem.isdigit() and int(stem) not in keep:
                p.unlink()
                n += 1
        if not any(shard.iterdir()):
            shutil.rmtree(shard)
    return n
