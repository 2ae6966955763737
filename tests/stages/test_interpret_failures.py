"""Hostile input and faults in ``saex interpret`` (and the feature index it reads): failures are not successes,
and no credential reaches a file.

Against the OpenAI-wire stub server (``tests/interpret/_stub_server.py``): an endpoint that refuses every request
ends the command with one error giving the counts and the last error (never a table of undefined scores); one
that answers some gives a partial result whose counts are in interpret.json, comparison.json and comparison.md,
and the next run asks again for the features that failed. A ``saex features`` run in which no feature of any
dictionary activated is an error too.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from saex.dictionaries.sae import SAE
from saex.stages.interpret import GIVE_UP_AFTER
from tests._cli import run_cli as _main
from tests.features._helpers import HOOK, write_store
from tests.interpret._stub_server import Oracle, StubReply, StubServer
from tests.stages._interpret import D, L, T, interpret_cli, results_folder, tokens_and_columns

KEY = "sk-test-secret-never-stored-0123456789"
PASSWORD = "pw-in-the-url-9f8e7d6c5b4a"


def _river(token: str) -> int:
    return 10 if token.strip() == "river" else 0


def _one_error_line(err: str, command: str = "interpret") -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith(f"saex {command}: error: ") and "Traceback" not in err
    return lines[0]


def _openai(features, out, url: str, *extra):
    return interpret_cli(
        features,
        out,
        "--backend",
        "openai",
        "--model",
        "stub-model",
        "--base-url",
        url,
        "--api-key-env",
        "SAEX_TEST_KEY",
        "--no-null",
        "--max-retries",
        "0",
        *extra,
    )


def _files_without(root, *secrets: str) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            for s in secrets:
                assert s not in text, path


def _refuse(status: int):
    return lambda path, body: StubReply(status=status, body={"error": {"message": f"refused ({status})"}})


def test_an_endpoint_that_refuses_every_request_is_an_error(features, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEX_TEST_KEY", KEY)
    with StubServer(handler=_refuse(500)) as stub:
        rc, stdout, err = _openai(features / "onehot", tmp_path / "out", stub.url)
        asked = stub.count("/chat/completions")
    assert rc == 2, err
    line = _one_error_line(err)
    # onehot: features 0-2 are asked for (one request each, no retry), feature 3 never fires
    assert asked == 3
    assert "0 of 4 features were explained: every request failed (3 got no explanation; 1 had too few " in line
    assert "last error: HTTP 500" in line and "refused (500)" in line
    assert "|" not in stdout  # no table of undefined scores
    marker = json.loads((tmp_path / "out" / "interpret.json").read_text())
    assert marker["status"] == "failed" and marker["counts"] == {
        "considered": 4,
        "scored": 0,
        "failed": 3,
        "failed_explanation": 3,
        "failed_scoring": 0,
        "too_few_fragments": 1,
    }
    assert "HTTP 500" in marker["last_error"]
    assert not list((tmp_path / "out").rglob("comparison.json"))


def test_a_dead_endpoint_stops_the_run_early(features, tmp_path, monkeypatch):
    """Both indexes: 16 features, but the run stops once GIVE_UP_AFTER in a row got no answer and none did."""
    monkeypatch.setenv("SAEX_TEST_KEY", KEY)
    with StubServer(handler=_refuse(503)) as stub:
        rc, _, err = _openai(features, tmp_path / "out", stub.url)
        asked = stub.count("/chat/completions")
    assert rc == 2 and asked == GIVE_UP_AFTER
    line = _one_error_line(err)
    assert f"0 of the {GIVE_UP_AFTER} features asked were explained: every request failed" in line
    assert "the run stopped early" in line and "HTTP 503" in line


def test_refused_credentials_are_one_line_without_the_secret(features, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEX_TEST_KEY", KEY)
    with StubServer(handler=_refuse(401)) as stub:
        url = stub.url.replace("http://", f"http://user:{PASSWORD}@")
        rc, _, err = _openai(features / "onehot", tmp_path / "out", url)
    assert rc == 2
    line = _one_error_line(err)
    assert "refused the credentials (HTTP 401)" in line and PASSWORD not in line and KEY not in line
    _files_without(tmp_path / "out", PASSWORD, KEY)


class FirstExplanationRefused:
    """The oracle, except that the first explanation request gets HTTP 500 (feature 0 fails, 1 and 2 are scored)."""

    def __init__(self):
        self.oracle = Oracle(_river, explanation="the word river")
        self.refused = False

    def __call__(self, path: str, body: dict):
        system = body.get("messages", [{}])[0].get("content", "") if "messages" in body else ""
        if "summarize in a single sentence" in system and not self.refused:
            self.refused = True
            return StubReply(status=500, body={"error": {"message": "overloaded"}})
        return self.oracle(path, body)


def test_partial_failure_is_counted_and_retried(features, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEX_TEST_KEY", KEY)
    out = tmp_path / "out"
    with StubServer(handler=FirstExplanationRefused()) as stub:
        rc, stdout, err = _openai(features / "onehot", out, stub.url)
    assert rc == 0, err
    res = results_folder(stdout)
    counts = {
        "considered": 4,
        "scored": 2,
        "failed": 1,
        "failed_explanation": 1,
        "failed_scoring": 0,
        "too_few_fragments": 1,
    }
    comparison = json.loads((res / "comparison.json").read_text())
    assert comparison["counts"] == counts
    assert comparison["methods"][0]["failed"] == 1 and comparison["methods"][0]["scored"] == 2
    marker = json.loads((out / "interpret.json").read_text())
    assert marker["status"] == "partial" and marker["counts"] == counts and "HTTP 500" in marker["last_error"]
    # the summary printed (comparison.md) says so
    assert "Failed: 1 of 4 features got no answer from the backend (1 no explanation" in stdout
    rows = [json.loads(x) for x in (res / "onehot" / "scores.jsonl").read_text().splitlines()]
    assert [r["feature"] for r in rows if r.get("failed")] == [0]
    # the next run asks again for feature 0 only, and the run is complete
    with StubServer(handler=Oracle(_river, explanation="the word river")) as stub:
        rc, stdout, err = _openai(features / "onehot", out, stub.url)
        explained = [b for p, b, _ in stub.requests if "summarize in a single sentence" in str(b.get("messages", ""))]
    assert rc == 0, err
    assert len(explained) == 1
    comparison = json.loads((res / "comparison.json").read_text())
    assert comparison["counts"]["scored"] == 3 and comparison["counts"]["failed"] == 0
    assert json.loads((out / "interpret.json").read_text())["status"] == "complete"
    assert "Failed:" not in stdout
    _files_without(out, KEY)


def test_no_simulation_answered_is_a_failure_not_a_score(features, tmp_path, monkeypatch):
    """Explanations come back but every simulation request is refused: the zeros a simulator falls back to are
    not a score (they used to give a table of undefined correlations and exit 0)."""
    monkeypatch.setenv("SAEX_TEST_KEY", KEY)
    oracle = Oracle(_river, explanation="the word river")

    def handler(path, body):
        system = body.get("messages", [{}])[0].get("content", "") if "messages" in body else ""
        if "predict how it will fire" in system:
            return StubReply(status=500, body={"error": {"message": "simulator down"}})
        return oracle(path, body)

    with StubServer(handler=handler) as stub:
        rc, _, err = _openai(features / "onehot", tmp_path / "out", stub.url, "--simulator-mode", "text")
    assert rc == 2
    line = _one_error_line(err)
    assert "0 of 4 features were explained and scored: the backend gave no usable answer" in line
    assert "3 no usable simulation" in line and "simulator down" in line


# ---- credentials ------------------------------------------------------------------------------------------


def test_url_credentials_are_stripped_from_every_file(features, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEX_TEST_KEY", KEY)
    out = tmp_path / "out"
    with StubServer(handler=Oracle(_river, explanation="the word river")) as stub:
        url = stub.url.replace("http://", f"http://user:{PASSWORD}@")
        rc, _, err = _openai(features / "onehot", out, url, "--n-features", "1")
    assert rc == 0, err
    marker = json.loads((out / "interpret.json").read_text())
    assert marker["config"]["base_url"] == stub.url  # scheme, host, port and path kept
    assert marker["credentials_not_recorded"] == ["base_url"]
    assert marker["config"]["api_key_env"] == "SAEX_TEST_KEY"
    _files_without(out, PASSWORD, KEY)


@pytest.mark.parametrize(
    "value",
    [
        "sk-abc123def456",  # an OpenAI key
        "sk_live_abcdef",
        "AIzaSyD3fGh8jKlMnOpQrStUvWxYz012345678",  # long, mixed case and digits
        "0123456789abcdef0123456789abcdef01234567",  # a hex token
        "Bearer abc",
    ],
)
def test_a_key_given_as_the_variable_name_is_refused_unshown(features, tmp_path, value):
    rc, _, err = _openai(features / "onehot", tmp_path / "out", "http://127.0.0.1:9/v1", "--api-key-env", value)
    assert rc == 2
    line = _one_error_line(err)
    assert "--api-key-env takes the NAME of the environment variable" in line and value not in err
    assert not (tmp_path / "out").exists()


# ---- the feature index ------------------------------------------------------------------------------------


def _store_and_dicts(root):
    tokens, X, _ = tokens_and_columns()
    train = torch.from_numpy(np.random.default_rng(5).normal(size=(2 * T, D)).astype(np.float32))
    acts = write_store(root / "acts", train, torch.from_numpy(X), T=T, shard_rows=32 * T, tokens_CT=tokens)

    def sae(bias: float, name: str) -> None:
        b = torch.full((4,), bias)
        W = torch.eye(D)[:, :4].clone()
        SAE(W, torch.eye(D)[:4], b, torch.zeros(D), "standard", metadata={"hook_name": HOOK}).save(
            root / "dicts" / name
        )

    sae(-100.0, "dead")  # no feature ever fires
    return acts, sae


def _features(acts, dicts, out):
    return _main(
        "features",
        "--acts",
        acts,
        "--dicts",
        dicts,
        "--out",
        out,
        "--fragment-length",
        L,
        "--no-one-per-document",
        "--no-decode",
        "--quiet",
    )


def test_a_feature_index_with_no_feature_is_an_error(tmp_path):
    acts, sae = _store_and_dicts(tmp_path)
    rc, _, err = _features(acts, tmp_path / "dicts" / "dead", tmp_path / "features")
    assert rc == 2
    line = _one_error_line(err, "features")
    assert "0 of 4 features activated on any of the 200 held-out fragments" in line
    assert json.loads((tmp_path / "features" / "features.json").read_text())["counts"] == {
        "dead": {"features": 4, "active": 0}
    }
    # beside a dictionary whose features fire, the dead one is counted, not an error
    sae(0.0, "alive")
    rc, _, err = _features(acts, tmp_path / "dicts", tmp_path / "features2")
    assert rc == 0, err
    counts = json.loads((tmp_path / "features2" / "features.json").read_text())["counts"]
    assert counts["dead"] == {"features": 4, "active": 0} and counts["alive"]["active"] > 0
    assert json.loads((tmp_path / "features2" / "alive" / "index.json").read_text())["active_features"] > 0
