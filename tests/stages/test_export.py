"""``saex export neuronpedia`` on the protocol feature index: every record checked against the index it came
from (density, examples, maxima, the activation histogram), Neuronpedia's field names and layout, byte-identical
reruns, refused input. The logit-lens fields are checked on the tiny model in tests/stages/test_convert.py."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from saex.features.histogram import histogram_from_index
from saex.features.index import FeatureIndex
from tests._cli import run_cli
from tests.interpret._fixtures import build_protocol_index

FEATURE_FIELDS = {
    "modelId",
    "layer",
    "index",
    "creatorId",
    "createdAt",
    "maxActApprox",
    "hasVector",
    "vector",
    "vectorDefaultSteerStrength",
    "hookName",
    "neg_str",
    "neg_values",
    "pos_str",
    "pos_values",
    "frac_nonzero",
    "freq_hist_data_bar_heights",
    "freq_hist_data_bar_values",
    "logits_hist_data_bar_heights",
    "logits_hist_data_bar_values",
}
ACTIVATION_FIELDS = {
    "id",
    "tokens",
    "index",
    "layer",
    "modelId",
    "maxValue",
    "maxValueTokenIndex",
    "minValue",
    "values",
    "creatorId",
    "createdAt",
    "qualifyingTokenIndex",
    "dataSource",
}


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in gzip.decompress(path.read_bytes()).decode().splitlines()]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return build_protocol_index(tmp_path_factory.mktemp("export"))


def _export(index, out, *extra):
    return run_cli(
        "export",
        "neuronpedia",
        "--features",
        index,
        "--out",
        out,
        "--source-set",
        "saex-test",
        "--model-id",
        "tiny",
        "--no-logit-lens",
        "--batch",
        3,
        "--quiet",
        *extra,
    )


def test_records_are_the_index(index, tmp_path):
    rc, out, err = _export(index, tmp_path / "np")
    assert rc == 0, err
    ix = FeatureIndex(index)
    folder = tmp_path / "np" / "tiny" / "0-saex-test"
    assert out.strip() == f"neuronpedia export of {ix.n_features} features in {folder} (source 0-saex-test of tiny)"
    for name in ("release", "model", "sourceset", "source"):
        (rec,) = [json.loads(line) for line in (folder / f"{name}.jsonl").read_text().splitlines()]
        assert isinstance(rec, dict)
    source = json.loads((folder / "source.jsonl").read_text())
    assert source["id"] == "0-saex-test" and source["setName"] == "saex-test" and source["modelId"] == "tiny"
    batches = sorted((folder / "features").iterdir())
    assert [p.name for p in batches] == [f"batch-{b}.jsonl.gz" for b in range((ix.n_features + 2) // 3)]
    feats = [r for p in batches for r in _rows(p)]
    acts = [r for p in sorted((folder / "activations").iterdir()) for r in _rows(p)]
    assert [r["index"] for r in feats] == [str(f) for f in range(ix.n_features)]
    density = ix.density()
    for r in feats:
        f = int(r["index"])
        assert set(r) == FEATURE_FIELDS and r["layer"] == "0-saex-test" and r["hasVector"]
        assert r["frac_nonzero"] == pytest.approx(float(density[f]))
        assert r["pos_str"] == [] and r["logits_hist_data_bar_heights"] == []  # --no-logit-lens
        hist = histogram_from_index(ix, f, lambda i: f"[{i}]")
        assert sum(r["freq_hist_data_bar_heights"]) == hist["n"]
        mine = [a for a in acts if a["index"] == str(f)]
        top_ids, top_max = ix.examples(f, "top")
        top = [a for a in mine if a["dataSource"] == "saex top example"]
        assert [a["tokens"] for a in top] == ix.token_strings(top_ids)
        np.testing.assert_allclose([a["maxValue"] for a in top], top_max, rtol=1e-6)
        np.testing.assert_allclose([a["values"] for a in top], ix.activations(f, "top"), rtol=1e-6)
        for a in mine:
            assert set(a) == ACTIVATION_FIELDS and len(a["id"]) == 25
            assert a["values"][a["maxValueTokenIndex"]] == a["maxValue"] == max(a["values"])
        assert r["maxActApprox"] == pytest.approx(max([a["maxValue"] for a in mine], default=0.0))
    assert len({a["id"] for a in acts}) == len(acts)


def test_rerun_writes_the_same_records_and_refuses_foreign_folders(index, tmp_path):
    assert _export(index, tmp_path / "a")[0] == 0
    assert _export(index, tmp_path / "b")[0] == 0
    fa = sorted((tmp_path / "a" / "tiny" / "0-saex-test" / "activations").iterdir())
    fb = sorted((tmp_path / "b" / "tiny" / "0-saex-test" / "activations").iterdir())

    def same(path):  # everything but the time of the export
        return [{k: v for k, v in r.items() if k != "createdAt"} for r in _rows(path)]

    assert [same(p) for p in fa] == [same(p) for p in fb]
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for args, pattern in (
        (("--out", tmp_path / "other"), "is not empty and holds no export"),
        (("--out", tmp_path / "c", "--limit", 0), "--limit"),
        (("--out", tmp_path / "c", "--source-set", ""), "--source-set is empty"),
        (("--out", tmp_path / "c", "--source-set", "res/6"), "letters, digits and dashes"),
    ):
        rc, _, err = run_cli(
            "export", "neuronpedia", "--features", index, "--source-set", "x", "--no-logit-lens", *args
        )
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and pattern in lines[0] and "Traceback" not in err, err
    rc, _, err = run_cli("export", "csv", "--features", index, "--source-set", "x", "--out", tmp_path / "d")
    assert rc == 2 and "csv" in err
