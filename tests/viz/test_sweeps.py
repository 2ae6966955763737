"""Sweep plots from hand-made evaluation results: valid PNGs, each beside the JSON of what it plots."""

from __future__ import annotations

import json

import matplotlib.image
import pytest

from saex.viz.sweeps import plot_all

PNG = b"\x89PNG\r\n\x1a\n"


def _result(name, kind, ratio, alpha, l0, fvu, alive_fraction, d_dict=64, never=3):
    hist = {"log10_density_edges": [-2.0, -1.0, 0.0], "counts": [d_dict - never - 10, 10], "never_fired": never}
    return {
        "name": name,
        "kind": kind,
        "ratio": ratio,
        "alpha": alpha,
        "d_dict": d_dict,
        "metrics": {
            "l0": l0,
            "fvu": fvu,
            "alive_fraction": alive_fraction,
            "alive_threshold": 10,
            "density_histogram": hist,
        },
    }


RESULTS = [
    _result("tied R2 a0.01", "tied_l1", 2, 0.01, 3.0, 0.30, 0.50),
    _result("tied R4 a0.1", "tied_l1", 4, 0.1, 1.5, 0.45, 0.25, d_dict=128),
    _result("tied R2 a0", "tied_l1", 2, 0.0, 20.0, 0.05, 1.00),
    _result("tied R2 a0.001", "tied_l1", 2, 0.001, 8.0, 0.15, 0.90),
    _result("tied R4 a0", "tied_l1", 4, 0, 40.0, 0.02, 1.00, d_dict=128),
    _result("baselines/pca", "pca", 1, None, 32.0, 0.0, 1.0, d_dict=32, never=0),
]


@pytest.fixture(scope="module")
def plotted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plots") / "plots"
    return folder, plot_all(RESULTS, folder)


def test_every_png_is_valid_and_has_its_json(plotted):
    folder, paths = plotted
    names = ["fvu_vs_l0.png", "alive_vs_alpha.png"] + [f"density/{r['name'].replace('/', '__')}.png" for r in RESULTS]
    assert [str(p.relative_to(folder)) for p in paths] == names
    assert sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png")) == sorted(names)
    for p in paths:
        data = p.read_bytes()
        assert data[:8] == PNG, p
        img = matplotlib.image.imread(p)
        assert img.shape[0] > 100 and img.shape[1] > 100
        assert p.with_suffix(".json").is_file()
    assert (folder / "density" / "baselines__pca.png").is_file()


SERIES = {
    "tied_l1 R=2": [
        {"name": "tied R2 a0", "alpha": 0.0, "l0": 20.0, "fvu": 0.05, "alive_fraction": 1.0},
        {"name": "tied R2 a0.001", "alpha": 0.001, "l0": 8.0, "fvu": 0.15, "alive_fraction": 0.9},
        {"name": "tied R2 a0.01", "alpha": 0.01, "l0": 3.0, "fvu": 0.30, "alive_fraction": 0.5},
    ],
    "tied_l1 R=4": [
        {"name": "tied R4 a0", "alpha": 0, "l0": 40.0, "fvu": 0.02, "alive_fraction": 1.0},
        {"name": "tied R4 a0.1", "alpha": 0.1, "l0": 1.5, "fvu": 0.45, "alive_fraction": 0.25},
    ],
}


def test_fvu_vs_l0_json(plotted):
    folder, _ = plotted
    d = json.loads((folder / "fvu_vs_l0.json").read_text())
    assert list(d["series"]) == ["tied_l1 R=2", "tied_l1 R=4"]
    assert d["series"] == SERIES
    assert d["points"] == [{"name": "baselines/pca", "kind": "pca", "l0": 32.0, "fvu": 0.0}]


def test_alive_vs_alpha_json(plotted):
    folder, _ = plotted
    d = json.loads((folder / "alive_vs_alpha.json").read_text())
    assert d["alive_threshold"] == 10
    assert d["series"] == SERIES
    assert [p["alpha"] for p in d["series"]["tied_l1 R=2"]] == [0.0, 0.001, 0.01]


def test_density_json(plotted):
    folder, _ = plotted
    d = json.loads((folder / "density" / "tied R4 a0.1.json").read_text())
    assert d == {
        "name": "tied R4 a0.1",
        "log10_density_edges": [-2.0, -1.0, 0.0],
        "counts": [115, 10],
        "never_fired": 3,
    }


def test_only_zero_alpha_and_only_baselines(tmp_path):
    # a sweep whose only α is 0 (no positive α for the symlog axis), and a run with no sweep at all
    zero = [_result("a0", "topk", 8, 0.0, 4.0, 0.2, 0.7)]
    paths = plot_all(zero, tmp_path / "zero")
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    assert json.loads((tmp_path / "zero" / "alive_vs_alpha.json").read_text())["series"] == {
        "topk R=8": [{"name": "a0", "alpha": 0.0, "l0": 4.0, "fvu": 0.2, "alive_fraction": 0.7}]
    }
    base = [_result("neurons", "neurons", 1, None, 30.0, 0.0, 1.0)]
    paths = plot_all(base, tmp_path / "base")
    assert all(p.read_bytes()[:8] == PNG for p in paths)
    d = json.loads((tmp_path / "base" / "fvu_vs_l0.json").read_text())
    assert d["series"] == {} and len(d["points"]) == 1


def test_rerun_overwrites(plotted, tmp_path):
    folder = tmp_path / "p"
    plot_all(RESULTS, folder)
    changed = [dict(r) for r in RESULTS]
    changed[0] = _result("tied R2 a0.01", "tied_l1", 2, 0.01, 3.0, 0.99, 0.50)
    plot_all(changed, folder)
    d = json.loads((folder / "fvu_vs_l0.json").read_text())
    assert d["series"]["tied_l1 R=2"][2]["fvu"] == 0.99
