"""Prompts of Bills et al. 2023 (explainer, all-at-once simulator) and Paulo et al. 2024 (detection).

The two system messages of Bills et al. and the detection system message of delphi are quoted exactly
(autointerp.md §1.3, §1.4, §2.3). The few-shot neurons are saex's own, short, in the same format.
Records are shown as ``token<TAB>activation`` lines between ``<start>`` and ``<end>``, activations
discretised to 0..10 with ``records.discretize`` against the max over the records shown. Tabs, newlines
and carriage returns inside token strings are escaped (``\\t``, ``\\n``, ``\\r``): Bills' code carries a
TODO that a raw tab inside a token breaks the ``token<tab>activation`` format.

Chat prompts are lists of ``{"role", "content"}`` messages; :func:`flatten` joins their contents the way
Bills' ``PromptBuilder`` does for completion models (``PromptFormat.NONE``).
"""

from __future__ import annotations

import numpy as np

from saex.features.records import ActivationRecord, discretize, max_activation

EXPLANATION_PREFIX = "the main thing this neuron does is find"

EXPLAINER_SYSTEM = (
    "We're studying neurons in a neural network. Each neuron looks for some particular "
    "thing in a short document. Look at the parts of the document the neuron activates for "
    "and summarize in a single sentence what the neuron is looking for. Don't list "
    "examples of words.\n\nThe activation format is token<tab>activation. Activation "
    "values range from 0 to 10. A neuron finding what it's looking for is represented by a "
    "non-zero activation value. The higher the activation value, the stronger the match."
)

SIMULATOR_SYSTEM = (
    "We're studying neurons in a neural network.\n"
    "Each neuron looks for some particular thing in a short document.\n"
    "Look at summary of what the neuron does, and try to predict how it will fire on each token.\n\n"
    'The activation format is token<tab>activation, activations go from 0 to 10, "unknown" indicates an '
    "unknown activation. Most activations will be 0.\n"
)

DETECTION_SYSTEM = (
    "You are an intelligent and meticulous linguistics researcher.\n\n"
    'You will be given a certain latent of text, such as "male pronouns" or "text with negative sentiment".\n\n'
    "You will then be given several text examples. Your task is to determine which examples possess the latent.\n\n"
    "For each example in turn, return 1 if the example possesses the latent or 0 if it does not. You must "
    "return your response in a valid Python list. Do not return anything else besides a Python list.\n"
)

# (explanation, [(tokens, activations 0..10)], index of the first revealed activation in the simulator)
FEW_SHOT = [
    (
        "words related to rain and wet weather",
        [
            (
                ["We", " stayed", " inside", " because", " the", " rain", " kept", " pouring", " all", " day", "."],
                [0, 0, 0, 0, 0, 10, 0, 6, 0, 0, 0],
            ),
            (["The", " umbrella", " was", " soaked", " after", " the", " storm", "."], [0, 4, 0, 7, 0, 0, 5, 0]),
        ],
        3,
    ),
    (
        "years written as four-digit numbers",
        [
            (
                ["She", " was", " born", " in", " 1987", " and", " moved", " in", " 2004", "."],
                [0, 0, 0, 0, 9, 0, 0, 0, 10, 0],
            )
        ],
        0,
    ),
]

# (explanation, [(text, possesses the latent)]) for the detection few-shot turn
DETECTION_FEW_SHOT = [
    (
        "words related to rain and wet weather",
        [
            ("we stayed inside because the rain kept pouring", 1),
            ("the meeting moved to the second floor", 0),
            ("a drizzle had left the pavement slick", 1),
            ("she sold the bicycle to her cousin", 0),
        ],
    ),
    (
        "years written as four-digit numbers",
        [
            ("the bridge opened in 1932 after long delays", 1),
            ("add two cups of flour and stir", 0),
            ("he scored 3 goals in the final", 0),
        ],
    ),
]


def escape_token(token: str) -> str:
    """Make a token safe inside a ``token<tab>activation`` line."""
    return token.replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")


def flatten(messages: list[dict]) -> str:
    """Bills' ``PromptBuilder.build(PromptFormat.NONE)``: the contents concatenated."""
    return "".join(m["content"] for m in messages)


def _record_lines(tokens, values, *, omit_zeros: bool = False, start: int = 0) -> str:
    lines = []
    for i, (tok, v) in enumerate(zip(tokens, values)):
        if omit_zeros and v == 0:
            continue
        lines.append(f"{escape_token(tok)}\t{'unknown' if i < start else int(v)}")
    return "\n".join(lines)


def format_records(
    records: list[tuple[list[str], np.ndarray]], *, omit_zeros: bool = False, start_indices: list[int] | None = None
) -> str:
    """Bills' ``format_activation_records`` over already-discretised (tokens, values) pairs."""
    starts = start_indices or [0] * len(records)
    blocks = [_record_lines(t, v, omit_zeros=omit_zeros, start=s) for (t, v), s in zip(records, starts)]
    return "\n<start>\n" + "\n<end>\n<start>\n".join(blocks) + "\n<end>\n"


def unknown_block(tokens: list[str]) -> str:
    """Bills' ``format_sequences_for_simulation`` for one record: every activation ``unknown``."""
    return "\n<start>\n" + "\n".join(f"{escape_token(t)}\tunknown" for t in tokens) + "\n<end>\n"


# ---- explainer (§1.3) -------------------------------------------------------------------------------


def _explainer_turn(index: int, records: list[tuple[list[str], np.ndarray]]) -> str:
    user = f"\n\nNeuron {index}\nActivations:{format_records(records)}"
    values = np.concatenate([np.asarray(v) for _, v in records]) if records else np.zeros(0)
    # Bills repeats the non-zero pairs when under 20% of the shown activations are non-zero.
    if values.size and np.count_nonzero(values) / values.size < 0.2:
        user += f"\nSame activations, but with all zeros filtered out:{format_records(records, omit_zeros=True)}"
    return user + f"\nExplanation of neuron {index} behavior: {EXPLANATION_PREFIX}"


def explanation_messages(records: list[ActivationRecord]) -> list[dict]:
    """Chat messages asking for one explanation of the feature behind ``records`` (the top fragments)."""
    messages = [{"role": "system", "content": EXPLAINER_SYSTEM}]
    for i, (explanation, shots, _) in enumerate(FEW_SHOT, start=1):
        messages.append({"role": "user", "content": _explainer_turn(i, [(t, np.asarray(v)) for t, v in shots])})
        messages.append({"role": "assistant", "content": f" {explanation}."})
    top = max_activation(records)
    shown = [(list(r.tokens), discretize(r.activations, top)) for r in records]
    messages.append({"role": "user", "content": _explainer_turn(len(FEW_SHOT) + 1, shown)})
    return messages


def clean_explanation(text: str) -> str:
    """First line of a completion, without a repeated prefix or the final period (Cunningham et al.)."""
    line = next((ln.strip() for ln in text.strip().splitlines() if ln.strip()), "")
    if line.lower().startswith(EXPLANATION_PREFIX):
        line = line[len(EXPLANATION_PREFIX) :].strip()
    line = line.strip().strip('"').strip()
    return line[:-1].rstrip() if line.endswith(".") else line


# ---- simulator (§1.4) -------------------------------------------------------------------------------


def _simulation_head(explanation: str) -> list[dict]:
    messages = [{"role": "system", "content": SIMULATOR_SYSTEM}]
    for i, (expl, shots, start) in enumerate(FEW_SHOT, start=1):
        messages.append(
            {
                "role": "user",
                "content": f"\n\nNeuron {i}\nExplanation of neuron {i} behavior: {EXPLANATION_PREFIX} {expl}",
            }
        )
        block = format_records([(t, np.asarray(v)) for t, v in shots], start_indices=[start] * len(shots))
        messages.append({"role": "assistant", "content": f"\nActivations: {block}\n"})
    n = len(FEW_SHOT) + 1
    messages.append(
        {
            "role": "user",
            "content": f"\n\nNeuron {n}\nExplanation of neuron {n} behavior: {EXPLANATION_PREFIX} {explanation.strip()}",
        }
    )
    return messages


def simulation_segments(explanation: str, tokens: list[str]) -> list[str]:
    """Bills' all-at-once prompt cut right after the tab of every target line.

    ``"".join(segments)`` is the completion prompt; segment i (i < len(tokens)) ends with the tab that
    precedes token i's ``unknown``, so the model's next-token distribution at the end of segment i is its
    prediction of token i's activation. The last segment closes the block.
    """
    head = flatten(_simulation_head(explanation)) + "\nActivations: \n<start>\n"
    segments, current = [], head
    for tok in tokens:
        segments.append(current + f"{escape_token(tok)}\t")
        current = "unknown\n"
    segments.append(current + "<end>\n")
    return segments


_LINES_ASK = (
    'Replace every "unknown" with the activation, an integer from 0 to 10. Answer with exactly {n} '
    "lines in the format token<tab>activation, one per token, in the same order, and nothing else."
)
_JSON_ASK = (
    'Replace every "unknown" with the activation, an integer from 0 to 10. Answer with a JSON list of '
    "exactly {n} integers, one per token, in the same order, and nothing else."
)


def _chat_simulation(explanation: str, tokens: list[str], ask: str, answer) -> list[dict]:
    messages = [{"role": "system", "content": SIMULATOR_SYSTEM}]
    for i, (expl, shots, _) in enumerate(FEW_SHOT, start=1):
        toks, vals = shots[0]
        messages.append(
            {
                "role": "user",
                "content": f"Neuron {i}\nExplanation of neuron {i} behavior: "
                f"{EXPLANATION_PREFIX} {expl}\nActivations:{unknown_block(toks)}\n{ask.format(n=len(toks))}",
            }
        )
        messages.append({"role": "assistant", "content": answer(toks, vals)})
    n = len(FEW_SHOT) + 1
    messages.append(
        {
            "role": "user",
            "content": f"Neuron {n}\nExplanation of neuron {n} behavior: "
            f"{EXPLANATION_PREFIX} {explanation.strip()}\nActivations:{unknown_block(tokens)}\n"
            f"{ask.format(n=len(tokens))}",
        }
    )
    return messages


def simulation_lines_messages(explanation: str, tokens: list[str]) -> list[dict]:
    """Chat variant for generated-token logprobs: the model re-emits ``token<tab>N`` lines."""
    return _chat_simulation(
        explanation, tokens, _LINES_ASK, lambda t, v: "\n".join(f"{escape_token(a)}\t{b}" for a, b in zip(t, v))
    )


def simulation_json_messages(explanation: str, tokens: list[str]) -> list[dict]:
    """Logprob-free variant: the model answers a JSON list of integers (delphi's JSON mode)."""
    return _chat_simulation(explanation, tokens, _JSON_ASK, lambda t, v: "[" + ", ".join(map(str, v)) + "]")


# ---- detection (Paulo et al. 2024, §2.3) ------------------------------------------------------------


def record_text(tokens: list[str]) -> str:
    return "".join(escape_token(t) for t in tokens).strip()


def _detection_turn(explanation: str, texts: list[str]) -> str:
    examples = "\n".join(f"Example {i}: {text}" for i, text in enumerate(texts))
    return f"Latent explanation: {explanation}\n\nText examples:\n\n{examples}\n"


def detection_messages(explanation: str, texts: list[str]) -> list[dict]:
    """delphi's detection prompt: does each numbered context possess the latent? Answer a list of 0/1."""
    messages = [{"role": "system", "content": DETECTION_SYSTEM}]
    for expl, shots in DETECTION_FEW_SHOT:
        messages.append({"role": "user", "content": _detection_turn(expl, [t for t, _ in shots])})
        messages.append({"role": "assistant", "content": "[" + ",".join(str(y) for _, y in shots) + "]"})
    messages.append({"role": "user", "content": _detection_turn(explanation.strip(), texts)})
    return messages
