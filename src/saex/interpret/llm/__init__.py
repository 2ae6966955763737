"""LLM explainers, simulators and detectors over pluggable backends (autointerp.md §5.2).

``make_backend("openai", ...)`` talks to any OpenAI-compatible endpoint; ``make_backend("hf", ...)``
runs a Hugging Face chat model in-process. On top of either:

- :class:`LLMExplainer`: Bills et al. 2023's token/activation explainer (§1.3);
- :class:`LLMSimulator`: Bills et al.'s simulator on the best rung the backend offers (§1.4, §5.2);
- :class:`LLMDetector`: Paulo et al. 2024's detection scorer (§2.3).

Every failure is absorbed (retried, then zeros) and counted in ``backend.stats``; nothing here makes up
a result. Scores from these classes are LLM scores: never mix them with offline scores.
"""

from __future__ import annotations

import random

import numpy as np

from saex.errors import SaexError
from saex.features.records import ActivationRecord, Explanation
from saex.interpret.llm.base import MODES, Backend, ChatResult, MalformedAnswer, expected_values
from saex.interpret.llm.parsing import parse_detection, parse_lines, parse_text_values
from saex.interpret.llm.prompts import (
    clean_explanation,
    detection_messages,
    explanation_messages,
    record_text,
    simulation_json_messages,
    simulation_lines_messages,
    simulation_segments,
)

__all__ = ["LLMExplainer", "LLMSimulator", "LLMDetector", "make_backend", "MODES"]


class LLMExplainer:
    """Bills et al. 2023 ``TokenActivationPairExplainer`` (autointerp.md §1.3).

    Shows the fragments as ``token<tab>activation`` (0-10, max over the fragments shown) after two
    few-shot neurons and asks for the completion of "the main thing this neuron does is find". Bills
    sample at temperature 1 with at most 60 tokens; the response cache makes reruns reproducible.
    An answer that never comes back gives an Explanation with empty text and ``usage["failed"] = 1``.
    """

    def __init__(self, backend: Backend, temperature: float = 1.0, max_tokens: int = 60):
        self.backend, self.temperature, self.max_tokens = backend, temperature, max_tokens
        self.name = f"llm-explainer:{backend.name}"

    def explain(self, records: list[ActivationRecord]) -> Explanation:
        def parse(result: ChatResult) -> str:
            text = clean_explanation(result.text)
            if not text:
                raise MalformedAnswer("empty explanation")
            return text

        usage: dict = {}
        text = self.backend.chat(
            explanation_messages(records),
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_logprobs=0,
            parse=parse,
            usage=usage,
        )
        if text is None:
            usage["failed"] = 1
        return Explanation(text=text or "", backend=self.backend.name, usage=usage)


class LLMSimulator:
    """Bills et al. 2023 simulator (autointerp.md §1.4) on the rung chosen by the capability probe (§5.2).

    - ``echo``: the all-at-once prompt with ``token<tab>unknown`` lines; the distribution over "0".."10"
      right after each tab gives the EV (prompt logprobs on OpenAI-wire servers; exact probabilities
      from one forward pass on the hf backend);
    - ``top_logprobs``: the chat model re-emits ``token<tab>N`` lines, EV from the top logprobs at N;
    - ``text``: a JSON list of integers at temperature 0 (Bills' logprob-free simulator, delphi's JSON
      mode); the values themselves are the prediction.

    One request per record. A record whose answer is malformed after retries, or that a server refuses,
    is predicted as all zeros and counted in ``backend.stats["fallbacks"]``. Scoring uses raw
    activations against these EVs (correlation needs no calibration).
    """

    def __init__(self, backend: Backend, mode: str = "auto"):
        if mode != "auto" and mode not in MODES:
            raise SaexError(f"simulation mode {mode!r} is not one of auto, {', '.join(MODES)}")
        self.backend, self.mode = backend, mode
        self.name = f"llm-simulator:{backend.name}"
        self.last_usage: dict = {}

    def resolved_mode(self) -> str:
        return self.backend.probe() if self.mode == "auto" else self.mode

    def simulate(self, explanation: Explanation, records: list[ActivationRecord]) -> list[np.ndarray]:
        mode = self.resolved_mode()
        usage: dict = {"mode": mode}
        text = explanation.text.strip()

        def one(record: ActivationRecord) -> np.ndarray:
            tokens = list(record.tokens)
            if not tokens:
                return np.zeros(0, dtype=np.float64)
            evs = self._simulate_tokens(mode, text, tokens, usage) if text else None
            if evs is None:
                self.backend.count(usage, "fallbacks")
                return np.zeros(len(tokens), dtype=np.float64)
            return evs

        out = self.backend.map(one, records)
        self.last_usage = usage
        return out

    def _simulate_tokens(self, mode: str, explanation: str, tokens: list[str], usage: dict) -> np.ndarray | None:
        b, n = self.backend, len(tokens)
        if mode == "echo":
            rows = b.slot_probs(simulation_segments(explanation, tokens), usage=usage)
            if rows is None:
                return None
            evs, missing = expected_values(rows)
            if missing:
                b.count(usage, "misaligned_slots", missing)
            return evs
        if mode == "top_logprobs":
            got = b.chat(
                simulation_lines_messages(explanation, tokens),
                max_tokens=16 + 12 * n,
                temperature=0.0,
                top_logprobs=20,
                parse=lambda r: parse_lines(r, tokens),
                usage=usage,
            )
            if got is None:
                return None
            evs, points = got
            if points:
                b.count(usage, "point_estimates", points)
            return evs
        return b.chat(
            simulation_json_messages(explanation, tokens),
            max_tokens=16 + 4 * n,
            temperature=0.0,
            top_logprobs=0,
            parse=lambda r: parse_text_values(r, tokens),
            usage=usage,
        )


class LLMDetector:
    """Paulo et al. 2024 detection scorer (delphi ``DetectionScorer``; autointerp.md §2.3).

    Shows ``n_per_prompt`` contexts at a time and asks which possess the latent, as a Python list of 0/1.
    When the backend offers generated-token logprobs the score of a context is P("1") / (P("0") + P("1"))
    (for AUROC); otherwise it is the 0/1 call (for balanced accuracy). Contexts are shuffled with a fixed
    seed before batching, so activating and non-activating ones share prompts, and returned in the
    caller's order. A batch without a usable answer scores 0 and counts as fallbacks.
    """

    def __init__(self, backend: Backend, n_per_prompt: int = 5, seed: int = 0):
        if n_per_prompt < 1:
            raise SaexError(f"n_per_prompt must be >= 1, got {n_per_prompt}")
        self.backend, self.n_per_prompt, self.seed = backend, n_per_prompt, seed
        self.name = f"llm-detector:{backend.name}"
        self.last_usage: dict = {}
        self.used_logprobs: bool | None = None

    def detect(self, explanation: Explanation | str, records: list[ActivationRecord]) -> list[float]:
        text = explanation.text if isinstance(explanation, Explanation) else explanation
        order = list(range(len(records)))
        random.Random(self.seed).shuffle(order)
        batches = [order[i : i + self.n_per_prompt] for i in range(0, len(order), self.n_per_prompt)]
        k = 20 if self.backend.capabilities().get("chat_logprobs") else 0
        usage: dict = {}

        def one(batch: list[int]):
            texts = [record_text(records[i].tokens) for i in batch]
            got = self.backend.chat(
                detection_messages(text, texts),
                max_tokens=8 + 4 * len(batch),
                temperature=0.0,
                top_logprobs=k,
                parse=lambda r: parse_detection(r, len(batch)),
                usage=usage,
            )
            if got is None:
                self.backend.count(usage, "fallbacks", len(batch))
                return [0.0] * len(batch), False
            return got

        scores = np.zeros(len(records), dtype=np.float64)
        all_probs = bool(k)
        for batch, (values, probs) in zip(batches, self.backend.map(one, batches)):
            scores[batch] = values
            all_probs = all_probs and probs
        self.used_logprobs, self.last_usage = all_probs, usage
        return scores.tolist()


def make_backend(
    kind: str,
    model: str | None = None,
    base_url: str | None = None,
    api_key_env: str = "OPENAI_API_KEY",
    cache_dir=None,
    concurrency: int = 4,
    timeout: float = 60.0,
    max_retries: int = 4,
    device=None,
    lm_dtype=None,
) -> Backend:
    """An LLM backend: ``"openai"`` (any OpenAI-compatible ``base_url``; model None = the server's only
    model) or ``"hf"`` (in-process transformers; model None = the embedded ``smollm2-135m``, run on ``device``
    in ``lm_dtype``: a ``torch.device`` and ``torch.dtype``, default the CPU in float32)."""
    if kind == "openai":
        # lazy: the openai SDK is imported only when this backend is asked for
        from saex.interpret.llm.openai_backend import OpenAIBackend

        return OpenAIBackend(
            model,
            base_url,
            api_key_env=api_key_env,
            cache_dir=cache_dir,
            concurrency=concurrency,
            timeout=timeout,
            max_retries=max_retries,
        )
    if kind == "hf":
        if base_url is not None:
            raise SaexError("the hf backend runs in-process; base_url only applies to kind='openai'")
        # lazy: transformers' generation stack is loaded only when this backend is asked for
        from saex.interpret.llm.hf_backend import HFBackend

        return HFBackend(model or "smollm2-135m", device=device, dtype=lm_dtype)
    raise SaexError(f"unknown LLM backend {kind!r}: expected 'openai' or 'hf'")
