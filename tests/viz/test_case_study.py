"""Case-study figures: each PNG is written with a JSON of exactly what it draws (the histogram, the rows
above the display threshold, the tree); awkward token text never breaks a plot."""

from __future__ import annotations

import json

from saex.features.histogram import token_histogram
from saex.viz.case_study import effect_rows, plot_circuit, plot_histogram, plot_output_effect

PNG = b"\x89PNG\r\n\x1a\n"


def test_histogram_figure(tmp_path):
    h = token_histogram([1, 2, 3, 4, 0.5], [1, 1, 2, 3, 4], {1: "'", 2: "$x$", 3: "\n", 4: "<&>"})
    path = plot_histogram(h, tmp_path / "h.png", "feature 3")
    assert path.read_bytes()[:8] == PNG
    assert json.loads(path.with_suffix(".json").read_text()) == {"title": "feature 3", "histogram": h}


def test_output_effect_threshold(tmp_path):
    eff = {
        "positions": 7,
        "contexts": 2,
        "decreased": [
            {"token": "s", "id": 5, "delta": -0.9},
            {"token": "t", "id": 6, "delta": -0.1},
            {"token": "u", "id": 7, "delta": -0.05},
        ],
        "increased": [{"token": "a", "id": 1, "delta": 0.3}, {"token": "b", "id": 2, "delta": 0.02}],
    }
    rows, by = effect_rows(eff, 0.1)
    assert by and [r["id"] for r in rows] == [5, 6, 1]
    path = plot_output_effect(eff, tmp_path / "e.png", "feature 3", threshold=0.1)
    assert path.read_bytes()[:8] == PNG
    saved = json.loads(path.with_suffix(".json").read_text())
    assert [r["id"] for r in saved["rows"]] == [5, 6, 1] and saved["threshold"] == 0.1
    # nothing above a threshold of 1: the largest |Δ| are drawn, ascending
    rows, by = effect_rows(eff, 1.0, fallback=3)
    assert not by and [r["id"] for r in rows] == [5, 6, 1]
    assert plot_output_effect(eff, tmp_path / "e2.png", "x", threshold=1.0).is_file()


def test_circuit_figure(tmp_path):
    def leaf(f, e):
        return {
            "hook": "blocks.0.hook_resid_post",
            "feature": f,
            "effect": e,
            "cos": 0.5,
            "children": [],
        }

    tree = {
        "hook": "blocks.2.hook_resid_post",
        "feature": 9,
        "effect": None,
        "cos": None,
        "contexts": 20,
        "max_activation": 3.0,
        "method": "m",
        "children": [
            {
                "hook": "blocks.1.hook_resid_post",
                "feature": 4,
                "effect": 1.5,
                "cos": 0.8,
                "children": [leaf(1, 0.4), leaf(2, 0.2)],
            },
            {"hook": "blocks.1.hook_resid_post", "feature": 5, "effect": 0.5, "cos": None, "children": []},
        ],
    }
    path = plot_circuit(tree, tmp_path / "c.png", "circuit")
    assert path.read_bytes()[:8] == PNG
    assert json.loads(path.with_suffix(".json").read_text())["tree"] == tree
    lone = {
        "hook": "blocks.2.hook_resid_post",
        "feature": 9,
        "effect": None,
        "cos": None,
        "children": [],
        "contexts": 3,
        "max_activation": 1.0,
        "method": "m",
    }
    assert plot_circuit(lone, tmp_path / "lone.png", "none").is_file()
