"""Prompt formats (Bills et al. 2023; Paulo et al. 2024), the response cache key, and the answer parsers."""

import json
import math

import numpy as np
import pytest

from saex.features.records import ActivationRecord
from saex.interpret.llm import prompts
from saex.interpret.llm.base import ChatResult, MalformedAnswer, expected_values, value_probs
from saex.interpret.llm.cache import ResponseCache, canonical_request, endpoint_id, request_key
from saex.interpret.llm.parsing import echo_slot_tops, parse_detection, parse_json_values, parse_lines


def _record(tokens, acts):
    return ActivationRecord(tokens=list(tokens), activations=np.asarray(acts, dtype=np.float64))


def test_explainer_prompt_follows_bills():
    recs = [
        _record([" the", " cat", "\tx", " sat"] + [" a"] * 16, [0, 5.0, 0, 2.5] + [0] * 16),
        _record([" cat", " dog"], [10.0, 0]),
    ]
    msgs = prompts.explanation_messages(recs)
    assert msgs[0] == {"role": "system", "content": prompts.EXPLAINER_SYSTEM}
    assert msgs[0]["content"].startswith("We're studying neurons in a neural network. Each neuron looks for")
    assert msgs[0]["content"].endswith("The higher the activation value, the stronger the match.")
    assert [m["role"] for m in msgs] == ["system"] + ["user", "assistant"] * len(prompts.FEW_SHOT) + ["user"]
    last = msgs[-1]["content"]
    assert last.startswith(f"\n\nNeuron {len(prompts.FEW_SHOT) + 1}\nActivations:\n<start>\n")
    assert last.endswith("\nExplanation of neuron 3 behavior: the main thing this neuron does is find")
    # Discretised against the max over the records shown (10): 5.0 -> 5, 2.5 -> 2; the tab is escaped.
    assert " cat\t5\n\\tx\t0\n sat\t2\n" in last
    assert "\n<end>\n<start>\n cat\t10\n dog\t0\n<end>\n" in last
    # Under 20% non-zero: the filtered repeat is added, with only the non-zero pairs.
    filtered = last.split("Same activations, but with all zeros filtered out:")[1]
    assert filtered.startswith("\n<start>\n cat\t5\n sat\t2\n<end>\n<start>\n cat\t10\n<end>\n")
    assert msgs[2]["content"].startswith(" ") and msgs[2]["content"].endswith(".")


def test_no_filtered_repeat_when_dense():
    msgs = prompts.explanation_messages([_record([" a", " b", " c"], [1.0, 2.0, 0.0])])
    assert "Same activations" not in msgs[-1]["content"]


def test_clean_explanation():
    assert prompts.clean_explanation(" the word cat.\nmore") == "the word cat"
    assert prompts.clean_explanation("the main thing this neuron does is find  dogs.") == "dogs"
    assert prompts.clean_explanation("   \n") == ""


def test_simulation_segments_are_bills_all_at_once_prompt():
    toks = [" The", " c\tat", "\n"]
    segs = prompts.simulation_segments("the word cat", toks)
    prompt = "".join(segs)
    assert prompt.startswith(prompts.SIMULATOR_SYSTEM)
    assert "We're studying neurons in a neural network.\nEach neuron looks for" in prompt
    assert prompt.endswith(
        "Explanation of neuron 3 behavior: the main thing this neuron does is find the word cat"
        "\nActivations: \n<start>\n The\tunknown\n c\\tat\tunknown\n\\n\tunknown\n<end>\n"
    )
    assert len(segs) == len(toks) + 1
    offsets = np.cumsum([len(s) for s in segs[:-1]])
    assert all(prompt[o : o + 8] == "unknown\n" and prompt[o - 1] == "\t" for o in offsets)
    # The few-shot examples teach the "unknown" slot before the first revealed activation.
    assert "We\tunknown\n stayed\tunknown\n inside\tunknown\n because\t0" in prompt


def test_chat_simulation_and_detection_prompts():
    lines = prompts.simulation_lines_messages("the word cat", [" a", " cat"])
    assert lines[0]["content"] == prompts.SIMULATOR_SYSTEM
    assert lines[-1]["content"].endswith(
        "Answer with exactly 2 lines in the format token<tab>activation, "
        "one per token, in the same order, and nothing else."
    )
    assert "\n<start>\n a\tunknown\n cat\tunknown\n<end>\n" in lines[-1]["content"]
    js = prompts.simulation_json_messages("the word cat", [" a", " cat"])
    assert "JSON list of exactly 2 integers" in js[-1]["content"]
    assert json.loads(js[2]["content"]) == prompts.FEW_SHOT[0][1][0][1]
    det = prompts.detection_messages("cats", ["a cat sat", "b\nc"])
    assert det[0]["content"].startswith("You are an intelligent and meticulous linguistics researcher.")
    assert det[-1]["content"] == "Latent explanation: cats\n\nText examples:\n\nExample 0: a cat sat\nExample 1: b\nc\n"
    assert prompts.record_text([" b", "\n", "c"]) == "b\\nc"


def test_cache_key_is_canonical_and_refuses_secrets(tmp_path):
    assert endpoint_id("https://user:pw@api.example.com:8443/v1/") == "api.example.com:8443/v1"
    a = canonical_request("h/v1", "chat.completions", {"model": "m", "messages": [], "temperature": 0})
    b = canonical_request("h/v1", "chat.completions", {"temperature": 0, "messages": [], "model": "m"})
    assert request_key(a) == request_key(b)
    assert request_key(a) != request_key(canonical_request("h/v1", "chat.completions", {"model": "n", "messages": []}))
    with pytest.raises(ValueError):
        canonical_request("h", "chat.completions", {"model": "m", "api_key": "x"})
    cache = ResponseCache(tmp_path)
    assert cache.get(a) is None
    cache.put(a, {"choices": [1]})
    assert cache.get(b) == {"choices": [1]}
    assert ResponseCache(None).get(a) is None


def test_value_probs_and_expected_values():
    p = value_probs({"3": math.log(0.3), " 7": math.log(0.1), "unknown": 0.0})
    np.testing.assert_allclose(p[[3, 7]], [0.75, 0.25])
    assert value_probs({"unknown": 0.0}) is None and value_probs(None) is None
    evs, missing = expected_values([p, None])
    np.testing.assert_allclose(evs, [0.75 * 3 + 0.25 * 7, 0.0])
    assert missing == 1


def test_echo_parser_aligns_by_offset():
    prompt = "x\n<start>\na\tunknown\nb\tunknown\n<end>\n"
    tokens = ["x", "\n", "<start>", "\n", "a", "\t", "unknown", "\n", "b", "\tunknown", "\n", "<end>", "\n"]
    assert "".join(tokens) == prompt
    tops = [None] + [{"z": 0.0}] * 5 + [{"4": 0.0}] + [{"z": 0.0}] * 6
    body = {"choices": [{"logprobs": {"tokens": tokens, "top_logprobs": tops}}]}
    slots = [prompt.index("unknown"), prompt.rindex("unknown")]
    out = echo_slot_tops(body, slots)
    assert out[0] == {"4": 0.0} and out[1] is None  # the merged "\tunknown" has no token at the slot
    with pytest.raises(MalformedAnswer):
        echo_slot_tops({"choices": [{"text": prompt, "logprobs": None}]}, slots)


def test_line_parser():
    toks = [" a", " cat"]
    text = "a\t0\n cat\t7"
    pieces = [
        ("a", {}),
        ("\t", {}),
        ("0", {"0": 0.0}),
        ("\n", {}),
        (" cat", {}),
        ("\t", {}),
        ("7", {"7": math.log(0.5), "5": math.log(0.5)}),
    ]
    evs, points = parse_lines(ChatResult(text, pieces), toks)
    np.testing.assert_allclose(evs, [0.0, 6.0])
    assert points == 0
    evs, points = parse_lines(ChatResult("<start>\na\t0\n cat\t7\n<end>", None), toks)
    np.testing.assert_allclose(evs, [0.0, 7.0])
    assert points == 2
    for bad in ["a\t0", "a\t0\ndog\t7", "a\t0\n cat\tx", "a\t0\n cat\t11"]:
        with pytest.raises(MalformedAnswer):
            parse_lines(ChatResult(bad, None), toks)


def test_json_and_detection_parsers():
    np.testing.assert_allclose(parse_json_values(ChatResult("Sure: [0, 3, 10]", None), 3), [0, 3, 10])
    for bad in ["[0, 3]", "[0, 3, 11]", "[0, 3, true]", "no list", "[0, 1, 2"]:
        with pytest.raises(MalformedAnswer):
            parse_json_values(ChatResult(bad, None), 3)
    text = "[1,0]"
    pieces = [("[", {}), ("1", {"1": math.log(0.8), "0": math.log(0.2)}), (",", {}), ("0", {"0": 0.0}), ("]", {})]
    scores, probs = parse_detection(ChatResult(text, pieces), 2)
    np.testing.assert_allclose(scores, [0.8, 0.0])
    assert probs
    assert parse_detection(ChatResult("[1, 0]", None), 2) == ([1.0, 0.0], False)
    with pytest.raises(MalformedAnswer):
        parse_detection(ChatResult("[1, 2]", None), 2)
