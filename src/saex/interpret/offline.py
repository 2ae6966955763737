"""The offline explainer and simulator: a token / bigram table, and the simulator that executes it.

No LLM is involved, so the score is **lexical predictability**: how well a short table of tokens (and
token pairs) read off a feature's five explanation fragments predicts its activations on held-out
fragments. It is not an LLM's judgement of interpretability (docs/autointerp.md: no
LLM-free score is known to track LLM-judged scores), and every output labels it so. It follows the idea of
Bills et al.'s token-space explainer (``TokenSpaceRepresentationExplainer``) and of N-gram explanations
(Foote et al. 2023), with a fixed budget so that all methods get the same description length.

Explanation. Over the explanation records, activations are discretised 0-10 against their max (Bills'
``normalize_activations``). For every token and every (previous token, token) pair, the shrunken mean
``Σ a / (n + 1)`` of its discretised activations is taken (one pseudo-observation of 0, so a token seen
once at 10 gets 5 and a token seen often at 10 approaches 10). The ``budget`` largest unigram values and
the ``budget`` largest bigram values of at least 1 form the table.

Simulation. Each token gets the larger of its bigram's and its unigram's table values (0 for entries not
in the table): a bigram adds context where it is the stronger evidence, but a pair seen once cannot
overrule a token seen firing many times. The output is on the 0-10 scale, as an LLM simulator's expected
values are.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from saex.features.records import ActivationRecord, Explanation, discretize, max_activation

BACKEND = "offline"
LABEL = "offline lexical predictability (token/bigram table; not an LLM judgement)"


class TableExplainer:
    """Explains a feature by the tokens and token pairs its top fragments fire on."""

    def __init__(self, budget: int = 8, min_value: float = 1.0):
        self.budget = budget
        self.min_value = min_value
        self.name = f"offline-table-{budget}"

    def explain(self, records: list[ActivationRecord]) -> Explanation:
        top = max_activation(records)
        uni: defaultdict[Any, list] = defaultdict(lambda: [0.0, 0])
        bi: defaultdict[Any, list] = defaultdict(lambda: [0.0, 0])
        for r in records:
            acts = discretize(r.activations, top)
            for i, (tok, a) in enumerate(zip(r.tokens, acts)):
                uni[tok][0] += a
                uni[tok][1] += 1
                if i:
                    key = (r.tokens[i - 1], tok)
                    bi[key][0] += a
                    bi[key][1] += 1

        def best(table):
            vals = [(s / (n + 1), k) for k, (s, n) in table.items()]
            vals = [(v, k) for v, k in vals if v >= self.min_value]
            vals.sort(key=lambda vk: (-vk[0], repr(vk[1])))  # value, then a fixed order: deterministic
            return vals[: self.budget]

        unigrams, bigrams = best(uni), best(bi)
        rule = {
            "unigrams": [[k, round(v, 4)] for v, k in unigrams],
            "bigrams": [[list(k), round(v, 4)] for v, k in bigrams],
        }
        text = (
            "; ".join(
                [f"{k!r} ({v:.1f})" for v, k in unigrams] + [f"{a!r} then {b!r} ({v:.1f})" for v, (a, b) in bigrams]
            )
            or "(no token fires reliably)"
        )
        return Explanation(text=f"tokens: {text}", backend=BACKEND, rule=rule)


class TableSimulator:
    """Executes a TableExplainer's rule on fragments."""

    name = "offline-table"

    def simulate(self, explanation: Explanation, records: list[ActivationRecord]) -> list[np.ndarray]:
        rule = explanation.rule or {}
        uni = {k: v for k, v in rule["unigrams"]}
        bi: dict[Any, float] = {tuple(k): v for k, v in rule["bigrams"]}
        out = []
        for r in records:
            pred = np.zeros(len(r.tokens))
            for i, tok in enumerate(r.tokens):
                pair = (r.tokens[i - 1], tok) if i else None
                pred[i] = max(bi.get(pair, 0.0), uni.get(tok, 0.0))
            out.append(pred)
        return out


def token_entropy(records: list[ActivationRecord]) -> float:
    """Entropy (bits) of the token identities at the positions where the feature is positive, weighted by
    count (Heap et al. 2025's "abstractness" control): 0 for a feature that fires on one token only."""
    counts: dict[str, int] = defaultdict(int)
    for r in records:
        for tok, a in zip(r.tokens, r.activations):
            if a > 0:
                counts[tok] += 1
    if not counts:
        return float("nan")
    p = np.array(list(counts.values()), dtype=np.float64)
    p /= p.sum()
    return float(-(p * np.log2(p)).sum())
