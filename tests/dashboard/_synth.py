"""Synthetic dashboard rows and payloads for the site and browser tests.

30 features (ids 0..29, plus a gap: id 13 is absent so prev/next must skip it). Token and explanation text
is hostile on purpose: a ``<script>`` token, an ``<img onerror>`` explanation, entities, quotes, a newline.
Feature ``RICH`` has every analysis panel filled; feature ``EMPTY`` has none (and no explanation or scores).
"""

from __future__ import annotations

import math

SCRIPT = "<script>alert(1)</script>"
IMG = '<img src=x onerror="window.__pwned=1">'
HOSTILE_EXPLANATION = f'<b>bold</b> &amp; "quoted" {IMG}'
RICH, EMPTY, HTML_EXPL = 7, 8, 3
IDS = [i for i in range(31) if i != 13]


def explanation(i: int) -> str | None:
    if i == HTML_EXPL:
        return HOSTILE_EXPLANATION
    if i in (EMPTY, 20, 21):
        return None
    return ("river banks and water" if i % 5 == 0 else "city names") + f" #{i}"


def score(i: int) -> float | None:
    if explanation(i) is None:
        return None
    return round(math.sin(i * 1.7) * 0.5, 4)  # distinct, unordered with the id


def density(i: int) -> float:
    return ((i * 37) % 31 + 1) / 1000.0


def rows() -> list[dict]:
    return [
        {"id": i, "density": density(i), "max": 1.0 + (i * 13) % 7, "score": score(i), "explanation": explanation(i)}
        for i in IDS
    ]


RICH_TOKENS = ["The", " river", SCRIPT, "&amp;", '"quoted"', "'single'", "\n", " ", "", "\t", IMG]
RICH_ACTS = [0, 0.25, 3.5, 1.0, 0, 0.125, 2.0, 0, 0, 0, -0.5]


def histogram() -> dict:
    return {
        "edges": [0.35 * k for k in range(11)],
        "series": [
            {"label": SCRIPT, "other": False, "counts": [5, 4, 3, 2, 1, 0, 0, 0, 1, 0]},
            {"label": "\n", "other": False, "counts": [0, 1, 0, 0, 0, 0, 0, 0, 0, 2]},
            {"label": "other", "other": True, "counts": [9, 7, 5, 3, 2, 1, 1, 0, 0, 0]},
        ],
        "n": 47,
        "total": 120,
        "source": "index random sample",
    }


def logit_lens() -> dict:
    return {
        "top": [{"token": SCRIPT, "id": 11, "value": 2.5}, {"token": " river", "id": 12, "value": 1.25}],
        "bottom": [{"token": "&amp;", "id": 13, "value": -3.0}, {"token": IMG, "id": 14, "value": -1.0}],
        "excluded": 3,
        "final_norm": True,
    }


def output_effect() -> dict:
    return {
        "positions": 40,
        "contexts": 12,
        "decreased": [{"token": IMG, "id": 14, "delta": -0.75}, {"token": " bank", "id": 15, "delta": -0.25}],
        "increased": [{"token": SCRIPT, "id": 11, "delta": 0.5}],
    }


def upstream() -> dict:
    leaf = {"hook": "blocks.0.hook_resid_post", "feature": 5, "effect": 0.125, "cos": 0.5, "children": []}
    mid = {"hook": "blocks.1.hook_resid_post", "feature": 42, "effect": 0.75, "cos": -0.25, "children": [leaf]}
    mid2 = {"hook": "blocks.1.hook_resid_post", "feature": 43, "effect": 0.0625, "cos": 0.125, "children": []}
    return {
        "hook": "blocks.2.hook_resid_post",
        "feature": RICH,
        "effect": None,
        "cos": None,
        "children": [mid, mid2],
        "contexts": 16,
        "max_activation": 3.5,
        "method": "ablation",
    }


def payload(i: int) -> dict:
    base = {
        "id": i,
        "dictionary": "synthetic <dict>",
        "hook": "blocks.2.hook_resid_post",
        "density": density(i),
        "max": 1.0 + (i * 13) % 7,
        "explanation": explanation(i),
        "scores": (
            {}
            if explanation(i) is None
            else {"offline-table-8/cunningham2023": {"top": 0.5, "random": None, "top_and_random": score(i)}}
        ),
        "sections": [
            {"title": "Top activations", "examples": [{"tokens": ["a", " b", " c"], "acts": [0.0, 1.0 + i, 0.5]}]}
        ],
        "histogram": None,
        "logit_lens": None,
        "output_effect": None,
        "upstream": None,
    }
    if i == RICH:
        base["max"] = 3.5
        base["sections"] = [
            {"title": "Top activations", "examples": [{"tokens": RICH_TOKENS, "acts": RICH_ACTS}]},
            {"title": "Decile 10 of 10 (highest)", "examples": []},
            {
                "title": "Random <activating>",
                "examples": [{"tokens": ["x", "y"], "acts": [0.0, 0.5]}, {"tokens": ["z"], "acts": [1.75]}],
            },
        ]
        base |= {
            "histogram": histogram(),
            "logit_lens": logit_lens(),
            "output_effect": output_effect(),
            "upstream": upstream(),
        }
    if i == EMPTY:
        base["sections"] = []
    return base


def payloads():
    for i in IDS:
        yield payload(i)


META = {"dictionary": "synthetic <dict>", "hook": "blocks.2.hook_resid_post", "model": "tiny & <model>"}
