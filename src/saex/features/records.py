"""The data every explainer, simulator and scorer exchanges, and the protocols they implement.

Follows Bills et al. 2023 (``neuron_explainer/activations/activations.py``): an *activation record* is one
text fragment with a feature's activation on each of its tokens. Explanations carry their provenance
(which backend and model wrote them), so offline and LLM results are never mixed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


@dataclass
class ActivationRecord:
    """One fragment: its token strings and a feature's activation on each token."""

    tokens: list[str]
    activations: np.ndarray
    """Float activations, one per token (raw, not discretised)."""
    token_ids: list[int] | None = None
    fragment: int = -1
    """Fragment id in the feature index (-1 when the record was made by hand)."""


@dataclass
class Explanation:
    """What an explainer produced for one feature."""

    text: str
    """Human-readable explanation (LLM: the completion of "the main thing this neuron does is find")."""
    backend: str
    """Who wrote it: ``offline``, ``openai:<model>``, ``hf:<model>``."""
    rule: dict | None = None
    """Offline explainers: the executable rule that their simulator runs (JSON-ready)."""
    usage: dict = field(default_factory=dict)
    """Tokens spent, requests made, retries and failures (LLM backends)."""


class Explainer(Protocol):
    name: str

    def explain(self, records: list[ActivationRecord]) -> Explanation: ...


class Simulator(Protocol):
    name: str

    def simulate(self, explanation: Explanation, records: list[ActivationRecord]) -> list[np.ndarray]:
        """Predicted activation (expected value on the 0-10 scale) for every token of every record."""
        ...


def max_activation(records: list[ActivationRecord]) -> float:
    """Bills' ``calculate_max_activation``: the largest ReLU'd activation over the records."""
    return max((float(np.max(np.maximum(r.activations, 0.0))) for r in records if len(r.activations)), default=0.0)


def discretize(activations: np.ndarray, max_act: float) -> np.ndarray:
    """Bills' ``normalize_activations``: min(10, floor(10·relu(a)/max)), all zeros when max <= 0."""
    a = np.asarray(activations, dtype=np.float64)
    if not max_act > 0 or not math.isfinite(max_act):
        return np.zeros(a.shape, dtype=np.int64)
    return np.minimum(10, np.floor(10.0 * np.maximum(a, 0.0) / max_act)).astype(np.int64)
