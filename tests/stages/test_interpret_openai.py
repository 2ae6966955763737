"""``saex interpret --backend openai`` end to end against the OpenAI-wire stub server.

The stub's oracle knows feature 0 of the ``onehot`` index (1.0 exactly on "river"), so the whole pipeline
(fragments from the index, Bills' prompts, the simulation rung the probe picks, parsing, pooled Pearson)
must give r ≈ 1, and r ≈ -1 when the oracle inverts its answers. This proves the plumbing and the
arithmetic, not the quality of any explanation.
"""

from __future__ import annotations

import json

import pytest

from tests.interpret._stub_server import Oracle, StubServer
from tests.stages._interpret import interpret_cli, results_folder

KEY = "sk-test-secret-never-stored"


def _river(token: str) -> int:
    return 10 if token.strip() == "river" else 0


@pytest.mark.parametrize("invert,caps", [(False, {}), (True, {}), (False, {"echo": False})])
def test_oracle_through_the_whole_pipeline(features, tmp_path, monkeypatch, invert, caps):  # noqa: F811
    monkeypatch.setenv("SAEX_TEST_KEY", KEY)
    with StubServer(handler=Oracle(_river, invert=invert, explanation="the word river", **caps)) as stub:
        rc, stdout, err = interpret_cli(
            features / "onehot",
            tmp_path / "out",
            "--backend",
            "openai",
            "--model",
            "stub-model",
            "--base-url",
            stub.url,
            "--api-key-env",
            "SAEX_TEST_KEY",
            "--n-features",
            "1",
            "--no-null",
            "--max-retries",
            "1",
        )
        n_requests = len(stub.requests)
    assert rc == 0, err
    res = results_folder(stdout)
    assert res.parent.name == "openai-stub-model" and res.name == "cunningham2023"
    row = json.loads((res / "onehot" / "scores.jsonl").read_text().splitlines()[0])
    assert row["feature"] == 0 and row["backend"] == "openai-stub-model"
    assert row["explanation"]["backend"] == "openai:stub-model" and "river" in row["explanation"]["text"]
    s = row["scores"]["top_random"]
    assert (s < -0.99) if invert else (s > 0.99)
    comparison = json.loads((res / "comparison.json").read_text())
    assert comparison["scorer"].startswith("LLM") and comparison["backend_stats"]["requests"] > 0
    # the key is read from the environment and written nowhere
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file():
            assert KEY not in path.read_text(errors="replace"), path
    # a rerun is answered from the scores file: the server is not asked again
    with StubServer(handler=Oracle(_river, invert=invert, **caps)) as stub:
        rc, _, err = interpret_cli(
            features / "onehot",
            tmp_path / "out",
            "--backend",
            "openai",
            "--model",
            "stub-model",
            "--base-url",
            stub.url,
            "--api-key-env",
            "SAEX_TEST_KEY",
            "--n-features",
            "1",
            "--no-null",
            "--max-retries",
            "1",
        )
        assert rc == 0, err
        assert n_requests > 0 and not [r for r in stub.requests if "completions" in r[0]]


def test_a_missing_key_is_one_line(features, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.delenv("SAEX_ABSENT_KEY", raising=False)
    rc, _, err = interpret_cli(
        features / "onehot",
        tmp_path / "out",
        "--backend",
        "openai",
        "--model",
        "m",
        "--base-url",
        "https://api.example.com/v1",
        "--api-key-env",
        "SAEX_ABSENT_KEY",
    )
    assert rc == 2 and "SAEX_ABSENT_KEY" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
