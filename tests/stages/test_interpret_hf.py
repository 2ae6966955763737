"""``saex interpret --backend hf`` end to end on a tiny local chat model (structure only: a random
2-layer model's explanations and simulations mean nothing, so no score value is asserted)."""

from __future__ import annotations

import json

from tests.interpret._hf_lm import tiny_lm
from tests.stages._interpret import interpret_cli, results_folder


def test_hf_backend_through_the_whole_pipeline(features, tmp_path):  # noqa: F811
    lm = tiny_lm(ten_is_one_token=True)
    folder = tmp_path / "tiny-chat"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    rc, stdout, err = interpret_cli(
        features / "onehot",
        tmp_path / "out",
        "--backend",
        "hf",
        "--model",
        str(folder),
        "--n-features",
        "1",
        "--no-null",
        "--device",
        "cpu",
        "--lm-dtype",
        "float32",
    )
    assert rc == 0, err
    res = results_folder(stdout)
    assert res.parent.name.startswith("hf-") and res.name == "cunningham2023"
    row = json.loads((res / "onehot" / "scores.jsonl").read_text().splitlines()[0])
    assert row["feature"] == 0 and row["explanation"]["backend"] == f"hf:{folder}"
    if "scores" in row:  # the tiny model may fail to explain (then the feature is skipped and counted)
        assert set(row["scores"]) == {"top_random", "top", "random"}
    else:
        assert "no explanation" in row["skipped"]
    comparison = json.loads((res / "comparison.json").read_text())
    assert comparison["methods"][0]["considered"] == 1 and comparison["scorer"].startswith("LLM")
