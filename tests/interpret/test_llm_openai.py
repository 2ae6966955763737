"""The OpenAI-compatible backend against the stub server (autointerp.md §5.3).

An oracle that answers with the true discretised activations must score r ≈ 1 on every simulation
rung, an inverted one r ≈ -1; faults are retried or fall back, never crash, and are counted. These
tests prove the protocol, the parsing and the scoring arithmetic, not explanation quality.
"""

import threading
import time
from pathlib import Path

import numpy as np
import pytest

from saex.errors import SaexError
from saex.features.records import ActivationRecord, Explanation, discretize
from saex.interpret.llm import LLMDetector, LLMExplainer, LLMSimulator, make_backend
from saex.interpret.llm.openai_backend import OpenAIBackend
from saex.interpret.scoring import auroc, pooled_pearson
from tests.interpret._stub_server import Oracle, StubReply, StubServer

WORDS = [" the", " cat", " sat", " on", " a", " mat", " and", " dog", " ran"]
FIRES = {"cat": 9.0, "dog": 4.0}  # the synthetic feature: fires on " cat", weakly on " dog"


def feature(token: str) -> float:
    return FIRES.get(token.strip(), 0.0)


def oracle_value(token: str) -> int:
    return int(discretize(np.array([feature(token)]), max(FIRES.values()))[0])


def make_records(n: int = 8, length: int = 16, seed: int = 0) -> list[ActivationRecord]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        toks = [str(t) for t in rng.choice(WORDS, length)]
        out.append(ActivationRecord(tokens=toks, activations=np.array([feature(t) for t in toks])))
    return out


def backend(url: str, tmp_path: Path | None = None, model: str | None = "stub-model", **kw) -> OpenAIBackend:
    kw.setdefault("backoff_s", 0.01)
    return OpenAIBackend(model, url, cache_dir=tmp_path, **kw)


EXPLANATION = Explanation(text="the word cat", backend="test")


@pytest.mark.parametrize(
    "caps,mode", [({}, "echo"), ({"echo": False}, "top_logprobs"), ({"echo": False, "chat_logprobs": False}, "text")]
)
def test_oracle_scores_one_on_every_rung(caps, mode):
    records = make_records()
    with StubServer(handler=Oracle(oracle_value, **caps)) as stub:
        b = backend(stub.url)
        sim = LLMSimulator(b)
        assert sim.resolved_mode() == mode
        pred = sim.simulate(EXPLANATION, records)
        assert [p.shape for p in pred] == [(len(r.tokens),) for r in records]
        assert all(((p >= 0) & (p <= 10)).all() for p in pred)
        assert pooled_pearson([r.activations for r in records], pred) > 0.99
        inverted = LLMSimulator(b, mode=mode)
        stub.handler = Oracle(oracle_value, invert=True, **caps)
        pred = inverted.simulate(Explanation(text="not the word cat", backend="test"), records)
        assert pooled_pearson([r.activations for r in records], pred) < -0.99
        assert b.stats["failures"] == b.stats["fallbacks"] == 0
        assert sim.last_usage["mode"] == mode


def test_explainer_returns_provenance_and_usage():
    records = make_records(3)
    with StubServer(handler=Oracle(oracle_value, explanation="the word cat")) as stub:
        b = backend(stub.url)
        ex = LLMExplainer(b, max_tokens=60).explain(records)
        body = stub.requests[-1][1]
    assert ex.text == "the word cat" and ex.backend == "openai:stub-model"
    assert ex.usage["requests"] == 1 and ex.usage["completion_tokens"] > 0
    assert body["max_tokens"] == 60 and body["temperature"] == 1.0
    assert body["messages"][-1]["content"].endswith("the main thing this neuron does is find")


def test_echo_request_uses_max_tokens_one_and_prompt_logprobs():
    with StubServer(handler=Oracle(oracle_value)) as stub:
        LLMSimulator(backend(stub.url), mode="echo").simulate(EXPLANATION, make_records(1))
        body = next(b for p, b, _ in stub.requests if p.endswith("/completions") and "chat" not in p)
    assert body["echo"] is True and body["max_tokens"] == 1 and body["logprobs"] == 15


def test_detection_oracle_has_auroc_one():
    pos = make_records(6, seed=1)
    pos = [r for r in pos if r.activations.max() > 0]
    neg = [ActivationRecord(tokens=[" the", " mat", " sat"], activations=np.zeros(3)) for _ in range(6)]
    for chat_logprobs in (True, False):
        with StubServer(handler=Oracle(oracle_value, echo=False, chat_logprobs=chat_logprobs)) as stub:
            det = LLMDetector(backend(stub.url), n_per_prompt=4)
            scores = det.detect(EXPLANATION, pos + neg)
        assert len(scores) == len(pos) + len(neg)
        assert auroc(np.array(scores[: len(pos)]), np.array(scores[len(pos) :])) == 1.0
        assert det.used_logprobs is chat_logprobs
        expected = [0.9] * len(pos) + [0.1] * len(neg) if chat_logprobs else [1.0] * len(pos) + [0.0] * len(neg)
        np.testing.assert_allclose(scores, expected)


@pytest.mark.parametrize(
    "fault,counter",
    [
        (StubReply(status=429, body={"error": {"message": "slow down"}}), "rate_limited"),
        (StubReply(status=500, body={"error": {"message": "boom"}}), "server_errors"),
        (StubReply(body=b"<html>not json</html>"), "malformed"),
        (StubReply(hang_s=1.0), "timeouts"),
    ],
)
def test_transient_faults_are_retried_and_counted(fault, counter):
    records = make_records(3)
    with StubServer(handler=Oracle(oracle_value)) as stub:
        b = backend(stub.url, timeout=0.3)
        sim = LLMSimulator(b, mode="echo")
        fault.path = "/completions"
        stub.faults.extend([fault, StubReply(**{**fault.__dict__})])
        pred = sim.simulate(EXPLANATION, records)
    assert pooled_pearson([r.activations for r in records], pred) > 0.99
    assert b.stats[counter] == 2 and b.stats["retries"] == 2
    assert b.stats["failures"] == b.stats["fallbacks"] == 0


def test_exhausted_retries_fall_back_to_zeros():
    records = make_records(2, length=5)
    with StubServer(handler=Oracle(oracle_value)) as stub:
        b = backend(stub.url, max_retries=2, concurrency=1)  # one at a time: all three faults hit record 0
        stub.faults.extend(StubReply(status=503, path="/completions") for _ in range(3))
        pred = LLMSimulator(b, mode="echo").simulate(EXPLANATION, records)
    assert not pred[0].any() and pred[1].any() and all(p.shape == (5,) for p in pred)
    assert b.stats["server_errors"] == 3 and b.stats["failures"] == 1 and b.stats["fallbacks"] == 1


def test_malformed_content_is_retried_then_zeros():
    records = make_records(1, length=6)
    short = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "[1, 2]"}, "finish_reason": "stop"}]}
    with StubServer(handler=Oracle(oracle_value, echo=False, chat_logprobs=False)) as stub:
        b = backend(stub.url)
        sim = LLMSimulator(b, mode="text")
        stub.faults.append(StubReply(body=short, path="/chat/completions"))
        pred = sim.simulate(EXPLANATION, records)  # one bad answer, then the retry succeeds
        assert pooled_pearson([records[0].activations], pred) > 0.99
        assert b.stats["malformed"] == 1 and b.stats["fallbacks"] == 0
        stub.handler = lambda path, body: short
        pred = sim.simulate(Explanation(text="other", backend="t"), records)
    np.testing.assert_array_equal(pred[0], np.zeros(6))
    assert b.stats["malformed"] == 3 and b.stats["failures"] == 1 and b.stats["fallbacks"] == 1


def test_refused_request_falls_back_without_retrying():
    with StubServer(handler=Oracle(oracle_value)) as stub:
        b = backend(stub.url)
        stub.faults.append(StubReply(status=400, body={"error": {"message": "context too long"}}, path="/completions"))
        pred = LLMSimulator(b, mode="echo").simulate(EXPLANATION, make_records(1, length=4))
    np.testing.assert_array_equal(pred[0], np.zeros(4))
    assert b.stats["rejected"] == 1 and b.stats["retries"] == 0 and b.stats["fallbacks"] == 1


def test_cache_makes_a_rerun_free_and_never_holds_the_key(tmp_path, monkeypatch):
    secret = "sk-test-SECRET-0123456789"
    monkeypatch.setenv("SAEX_TEST_LLM_KEY", secret)
    records = make_records(4)
    with StubServer(handler=Oracle(oracle_value)) as stub:

        def run():
            b = make_backend("openai", "stub-model", stub.url, api_key_env="SAEX_TEST_LLM_KEY", cache_dir=tmp_path)
            ex = LLMExplainer(b).explain(records[:2])
            pred = LLMSimulator(b).simulate(ex, records)
            det = LLMDetector(b).detect(ex, records)
            return b, ex.text, pred, det

        b1, text1, pred1, det1 = run()
        sent = stub.count()
        assert (
            sent > 0 and {k.lower(): v for k, v in stub.requests[-1][2].items()}["authorization"] == f"Bearer {secret}"
        )
        b2, text2, pred2, det2 = run()
        assert stub.count() == sent  # zero requests the second time, probe included
    assert text1 == text2 and det1 == det2
    assert all(np.array_equal(a, c) for a, c in zip(pred1, pred2))
    assert b2.stats["requests"] == 0 and b2.stats["cache_hits"] > 0
    files = list(tmp_path.rglob("*"))
    assert any(f.suffix == ".json" for f in files)
    assert not any(secret in f.read_text() for f in files if f.is_file())
    assert secret not in repr(b1) and secret not in str(b1.stats)


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("SAEX_UNSET_KEY_VAR", raising=False)
    with pytest.raises(SaexError, match="SAEX_UNSET_KEY_VAR"):
        make_backend("openai", "gpt-x", "https://api.example.invalid/v1", api_key_env="SAEX_UNSET_KEY_VAR")
    with pytest.raises(SaexError, match="unknown LLM backend"):
        make_backend("nope", None, None)
    with pytest.raises(SaexError, match="mode"):
        LLMSimulator(object(), mode="bogus")


def test_probe_is_cached_and_unreachable_endpoint_is_an_error(tmp_path):
    with StubServer(handler=Oracle(oracle_value, echo=False)) as stub:
        b = backend(stub.url, tmp_path, model=None)  # the server's only model, from GET /models
        assert b.model == "stub-model" and stub.count("/models") == 1
        assert b.probe() == "top_logprobs" and b.probe() == "top_logprobs"
        n = stub.count()
        assert backend(stub.url, tmp_path).probe() == "top_logprobs"
        assert stub.count() == n
        stub.faults.extend(StubReply(status=500) for _ in range(10))
        with pytest.raises(SaexError, match="did not answer"):
            backend(stub.url, max_retries=1).probe()


def test_concurrency_is_capped():
    lock, state = threading.Lock(), {"now": 0, "max": 0}
    oracle = Oracle(oracle_value)

    def slow(path, body):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return oracle(path, body)

    with StubServer(handler=slow) as stub:
        LLMSimulator(backend(stub.url, concurrency=3), mode="echo").simulate(EXPLANATION, make_records(12, length=4))
    assert 2 <= state["max"] <= 3


def test_token_budget_stops_the_run():
    with StubServer(handler=Oracle(oracle_value, echo=False, chat_logprobs=False)) as stub:
        b = backend(stub.url, concurrency=1, token_budget=150)  # the stub bills 100 prompt tokens a call
        with pytest.raises(SaexError, match="budget"):
            LLMSimulator(b, mode="text").simulate(EXPLANATION, make_records(3, length=4))
        assert stub.count("/chat/completions") == 2
