"""The dashboard site writer without a browser: layout, the escaping of data scripts and pages, the rule
that the JavaScript never parses data as HTML, resumable rebuilds, and the gather helpers."""

from __future__ import annotations

import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from saex.dashboard.gather import _sig6, decile_of
from saex.dashboard.site import STATIC, clean, feature_path, js_json, write_site
from saex.errors import SaexError
from tests.dashboard import _synth as synth


def _call_args(path: Path, callback: str) -> list:
    """The JSON arguments of the one ``callback(...)`` call a data script makes."""
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"{callback}(") and text.endswith(");\n")
    return json.loads("[" + text[len(callback) + 1 : -3] + "]")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    return write_site(tmp_path_factory.mktemp("site") / "dash", synth.META, synth.rows(), synth.payloads())


def test_js_json_escapes_everything_that_could_break_out_and_round_trips():
    obj = {"t": ["</script><script>alert(1)</script>", "a & b", "x\u2028y\u2029z", "<!--", "\n\"'"], "n": 1.5}
    text = js_json(obj)
    for ch in "<>&\u2028\u2029":
        assert ch not in text
    assert "\\u003c/script\\u003e" in text and "\\u0026" in text and "\\u2028" in text
    assert json.loads(text) == obj


def test_clean_turns_nan_and_numpy_into_json():
    out = clean({"a": float("nan"), "b": np.float32(0.5), "c": np.arange(3), "d": [math.inf, np.int64(4)], 5: None})
    assert out == {"a": None, "b": 0.5, "c": [0, 1, 2], "d": [None, 4], "5": None}
    json.dumps(out, allow_nan=False)


def test_layout_and_data_files(site):
    assert (site / "index.html").is_file() and (site / "feature.html").is_file()
    assert sorted(p.name for p in (site / "static").iterdir()) == sorted(STATIC)
    (data,) = _call_args(site / "data" / "index.js", "saexIndex")
    assert data["rows"] == synth.rows() and data["meta"] == synth.META
    files = sorted((site / "data" / "f").rglob("*.js"))
    assert len(files) == len(synth.IDS)
    assert feature_path(1234) == "data/f/1/1234.js" and feature_path(999) == "data/f/0/999.js"
    for i in synth.IDS:
        payload, nav = _call_args(site / feature_path(i), "saexFeature")
        assert payload == synth.payload(i)
        k = synth.IDS.index(i)
        assert nav == {
            "prev": synth.IDS[k - 1] if k else None,
            "next": synth.IDS[k + 1] if k + 1 < len(synth.IDS) else None,
        }
    # the gap at 13: 12's next is 14
    assert _call_args(site / feature_path(12), "saexFeature")[1]["next"] == 14
    manifest = json.loads((site / "dashboard.json").read_text())
    assert manifest["status"] == "complete" and manifest["features"] == len(synth.IDS)


def test_data_scripts_hold_no_raw_angle_brackets_or_ampersands(site):
    for p in [site / "data" / "index.js", *(site / "data" / "f").rglob("*.js")]:
        text = p.read_text(encoding="utf-8")
        assert not re.search("[<>&\u2028\u2029]", text), p
    assert "\\u003cscript\\u003ealert(1)\\u003c/script\\u003e" in (site / feature_path(synth.RICH)).read_text()


def test_pages_escape_meta_and_allow_no_inline_script(site):
    for page in ("index.html", "feature.html"):
        html = (site / page).read_text()
        assert "synthetic <dict>" not in html and "tiny & <model>" not in html
        assert "Content-Security-Policy" in html and "script-src 'self' file:" in html
        # every script element loads a file: nothing inline
        assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    index = (site / "index.html").read_text()
    assert "saex dashboard: synthetic &lt;dict&gt;" in index and "tiny &amp; &lt;model&gt;" in index


def test_javascript_never_parses_data_as_html():
    static = resources.files("saex.dashboard") / "static"
    for name in STATIC:
        # code only: full-line comments may name what the code avoids
        text = "\n".join(
            line for line in (static / name).read_text().splitlines() if not line.lstrip().startswith(("//", "/*", "*"))
        )
        for bad in (
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
            "new Function",
            'setAttribute("on',
            "fetch(",
            "XMLHttpRequest",
        ):
            assert bad not in text, (name, bad)


def test_rebuild_rewrites_only_changed_files_and_drops_stale_ones(tmp_path):
    out = tmp_path / "dash"
    write_site(out, synth.META, synth.rows(), synth.payloads())
    stamp = {p: p.stat().st_mtime_ns for p in (out / "data" / "f").rglob("*.js")}
    write_site(out, synth.META, synth.rows(), synth.payloads())
    assert json.loads((out / "dashboard.json").read_text())["written"] == 0
    assert {p: p.stat().st_mtime_ns for p in (out / "data" / "f").rglob("*.js")} == stamp

    changed = [synth.payload(i) | ({"explanation": "new"} if i == 5 else {}) for i in synth.IDS]
    write_site(out, synth.META, synth.rows(), changed)
    m = json.loads((out / "dashboard.json").read_text())
    assert (m["written"], m["unchanged"], m["removed"]) == (1, len(synth.IDS) - 1, 0)
    assert _call_args(out / feature_path(5), "saexFeature")[0]["explanation"] == "new"

    keep = [r for r in synth.rows() if r["id"] < 10]
    write_site(out, synth.META, keep, (synth.payload(r["id"]) for r in keep))
    m = json.loads((out / "dashboard.json").read_text())
    assert m["removed"] == len(synth.IDS) - 10
    assert sorted(int(p.stem) for p in (out / "data" / "f").rglob("*.js")) == list(range(10))


def test_refusals(tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(SaexError, match="not empty"):
        write_site(other, synth.META, synth.rows(), [])
    with pytest.raises(SaexError, match="no summary row"):
        write_site(tmp_path / "a", synth.META, synth.rows(), [synth.payload(0) | {"id": 13}])
    with pytest.raises(SaexError, match="twice"):
        write_site(tmp_path / "b", synth.META, synth.rows(), [synth.payload(0), synth.payload(0)])
    with pytest.raises(SaexError, match="lacks"):
        write_site(tmp_path / "c", synth.META, [{"id": 0}], [])


def test_decile_of_splits_into_equal_count_ranks():
    rng = np.random.default_rng(0)
    maxes = rng.random(100)
    dec = decile_of(maxes)
    assert np.bincount(dec, minlength=10).tolist() == [10] * 10
    rank = np.empty(100, dtype=int)
    rank[np.argsort(maxes)] = np.arange(100)
    assert (dec == rank // 10).all()
    assert decile_of(np.array([3.0, 1.0, 2.0])).tolist() == [6, 0, 3]


def test_sig6_keeps_six_significant_digits_and_writes_zero_as_int():
    vals = np.array([0.0, 1.23456789, -0.000123456789, 98765.4321, 3.0, 1e-9], dtype=np.float64)
    out = _sig6(vals)
    assert out[0] == 0 and isinstance(out[0], int)
    assert out[1:] == [1.23457, -0.000123457, 98765.4, 3.0, 1e-9]
    assert len(json.dumps(out)) < 60
