"""What the LLM backends share: the answer types, the error types, the usage counters.

Both backends (OpenAI-compatible HTTP and in-process transformers) offer the same two primitives, so
the explainer, simulator and detector in ``saex.interpret.llm`` never care which one they talk to:

- ``chat(messages, ..., parse)``: one chat turn; ``parse`` turns the :class:`ChatResult` into what the
  caller wants or raises :class:`MalformedAnswer` (then the backend retries, and finally gives ``None``);
- ``slot_probs(segments)``: Bills et al.'s "all at once" read-out, the distribution over "0".."10" right
  after every tab of a ``token<tab>unknown`` prompt, from a single request / forward pass.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np

from saex.interpret.secrets import redact_text

MODES = ("echo", "top_logprobs", "text")
"""Simulation rungs, best first (autointerp.md §5.2): prompt logprobs, generated-token logprobs, text."""

VALUE_STRINGS = tuple(str(v) for v in range(11))
VALUE_INDEX = {s: i for i, s in enumerate(VALUE_STRINGS)}
VALUES = np.arange(11, dtype=np.float64)

STAT_KEYS = (
    "requests",
    "cache_hits",
    "prompt_tokens",
    "completion_tokens",
    "retries",
    "failures",
    "fallbacks",
    "malformed",
    "rate_limited",
    "server_errors",
    "timeouts",
    "connection_errors",
    "rejected",
    "misaligned_slots",
    "point_estimates",
)
"""Counters every backend keeps in ``stats``: requests sent (cache hits are not requests), tokens billed,
retries, requests that finally failed, records that fell back to zeros, and why."""

T = TypeVar("T")


class MalformedAnswer(Exception):
    """The endpoint answered, but not in the shape asked for (bad JSON, wrong line count, no logprobs)."""


class RequestRejected(Exception):
    """The endpoint refused the request itself (HTTP 4xx other than auth): retrying cannot help."""

    def __init__(self, status: int, message: str):
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


@dataclass
class ChatResult:
    """One assistant turn: its text and, when asked for and offered, per-token top logprobs."""

    text: str
    pieces: list[tuple[str, dict[str, float]]] | None = None
    """(token string, {candidate token: logprob}) for each generated token, in order."""


class Counter:
    """Thread-safe usage counters: the backend-wide ``stats`` plus an optional per-call dict, and the last
    error met (``last_error``: one line, no credentials), which a run that got no answer at all reports."""

    def __init__(self) -> None:
        self.stats: dict[str, int] = {k: 0 for k in STAT_KEYS}
        self._stats_lock = threading.Lock()
        self.last_error: str | None = None

    def note_error(self, message: str) -> None:
        """Remember ``message`` as the last error: on one line, at most 300 characters, URLs without credentials."""
        text = " ".join(redact_text(str(message)).split())
        with self._stats_lock:
            self.last_error = text[:297] + "..." if len(text) > 300 else text

    def count(self, usage: dict | None, key: str, n: int = 1) -> None:
        with self._stats_lock:
            self.stats[key] = self.stats.get(key, 0) + n
            if usage is not None:
                usage[key] = usage.get(key, 0) + n


class Backend(Protocol):
    """What ``LLMExplainer`` / ``LLMSimulator`` / ``LLMDetector`` need from a backend."""

    name: str
    """``openai:<model>`` or ``hf:<model>``: written into every Explanation's provenance."""
    model: str
    stats: dict[str, int]

    def capabilities(self) -> dict[str, bool]:
        """``{"echo": bool, "chat_logprobs": bool}``: what the endpoint supports (probed once, cached)."""
        ...

    def probe(self) -> str:
        """The best simulation rung this endpoint supports, one of :data:`MODES`."""
        ...

    def map(self, fn: Callable[[T], object], items: list[T]) -> list: ...

    def count(self, usage: dict | None, key: str, n: int = 1) -> None: ...

    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float,
        top_logprobs: int,
        parse: Callable[[ChatResult], T],
        usage: dict | None = None,
    ) -> T | None: ...

    def slot_probs(self, segments: list[str], *, usage: dict | None = None) -> list[np.ndarray | None] | None: ...


def best_mode(caps: Mapping[str, bool]) -> str:
    return "echo" if caps.get("echo") else "top_logprobs" if caps.get("chat_logprobs") else "text"


def value_probs(top: Mapping[str, float] | None) -> np.ndarray | None:
    """Bills' ``compute_predicted_activation_stats_for_token``: keep the candidates "0".."10" of a
    token→logprob map and renormalise them; shape (11,), or None when no value token is present."""
    if not top:
        return None
    p = np.zeros(11, dtype=np.float64)
    for token, logprob in top.items():
        i = VALUE_INDEX.get(token.strip())
        if i is not None and logprob is not None and math.isfinite(logprob):
            p[i] += math.exp(logprob)
    total = p.sum()
    return p / total if total > 0 else None


def expected_values(rows: list[np.ndarray | None]) -> tuple[np.ndarray, int]:
    """EV = Σ v·p(v) per slot (Bills' ``compute_expected_value``); a missing row counts as EV 0 and is
    returned in the second value, the number of slots that had no distribution."""
    out = np.zeros(len(rows), dtype=np.float64)
    missing = 0
    for i, row in enumerate(rows):
        if row is None:
            missing += 1
        else:
            out[i] = float(row @ VALUES)
    return out, missing
