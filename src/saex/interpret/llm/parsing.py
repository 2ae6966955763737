"""Turning endpoint answers into per-token predictions: one parser per simulation rung, plus detection.

Every parser either returns a complete answer or raises :class:`MalformedAnswer`; partial answers are
never padded here (the caller decides to retry, then to fall back to zeros, and counts both).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np

from saex.interpret.llm.base import ChatResult, MalformedAnswer, value_probs
from saex.interpret.llm.prompts import escape_token


def echo_slot_tops(body: dict, slot_offsets: list[int]) -> list[dict | None]:
    """Top logprobs of the prompt token that starts at each slot offset of an echoed completion.

    The distribution attached to prompt token i is the model's prediction of token i, so the one at the
    token starting right after a tab is the prediction of that line's activation (Bills'
    ``parse_simulation_response``). Offsets are matched by character, which also covers simulator
    tokenizers that split the subject's tokens; a slot whose tab got merged with the following text has
    no token starting there and yields None.
    """
    try:
        lp = body["choices"][0]["logprobs"]
        tokens, tops = lp["tokens"], lp["top_logprobs"]
    except (KeyError, IndexError, TypeError) as e:
        raise MalformedAnswer(f"echo answer without prompt logprobs ({e!r})") from None
    if not tokens or tops is None or len(tops) != len(tokens):
        raise MalformedAnswer("echo answer without prompt logprobs")
    offsets = lp.get("text_offset")
    if not offsets or len(offsets) != len(tokens):
        offsets = np.cumsum([0] + [len(t) for t in tokens[:-1]]).tolist()
    first_at: dict[int, int] = {}
    for i, (tok, off) in enumerate(zip(tokens, offsets)):
        if tok:  # a zero-length token (BOS) shares the offset of the real token after it
            first_at.setdefault(int(off), i)
    out = []
    for off in slot_offsets:
        at = first_at.get(off)
        top = tops[at] if at is not None else None
        out.append(top if isinstance(top, dict) and top else None)
    if all(t is None for t in out):
        raise MalformedAnswer("echo answer has no logprobs at any 'unknown' slot (echo ignored?)")
    return out


def _piece_starts(pieces: list[tuple[str, dict]]) -> dict[int, int]:
    starts: dict[int, int] = {}
    pos = 0
    for i, (tok, _) in enumerate(pieces):
        if tok:
            starts.setdefault(pos, i)
        pos += len(tok)
    return starts


def _top_at(result: ChatResult, offset: int) -> dict | None:
    """Top logprobs of the generated token that starts at ``offset`` of the answer text, if any."""
    if not result.pieces or "".join(t for t, _ in result.pieces) != result.text:
        return None  # pieces that do not spell the text cannot be aligned by offset
    i = _piece_starts(result.pieces).get(offset)
    return result.pieces[i][1] if i is not None else None


def parse_lines(result: ChatResult, tokens: list[str]) -> tuple[np.ndarray, int]:
    """``token<tab>N`` lines → EVs (from the logprobs at each N when present, else N itself).

    Bills' logprob-free parser rule: the model must reproduce the tokens, one line each, in order (a
    dropped leading space is forgiven). Returns the EVs, shape (len(tokens),), and how many of them are
    point estimates because no distribution over "0".."10" was available at that number.
    """
    expected = [escape_token(t).strip() for t in tokens]
    lines, pos = [], 0
    for raw in result.text.split("\n"):
        if raw.strip() and raw.strip() not in ("<start>", "<end>", "```"):
            lines.append((pos, raw))
        pos += len(raw) + 1
    if len(lines) != len(tokens):
        raise MalformedAnswer(f"expected {len(tokens)} lines, got {len(lines)}")
    evs = np.zeros(len(tokens), dtype=np.float64)
    points = 0
    for k, ((start, line), want) in enumerate(zip(lines, expected)):
        if "\t" not in line:
            raise MalformedAnswer(f"line {k} has no tab: {line[:40]!r}")
        tok, num = line.rsplit("\t", 1)
        m = re.match(r"\s*(\d+)", num)
        if tok.strip() != want or m is None or int(m.group(1)) > 10:
            raise MalformedAnswer(f"line {k} is {line[:40]!r}, expected {want!r}<tab>0..10")
        probs = value_probs(_top_at(result, start + len(tok) + 1 + m.start(1)))
        if probs is None:
            evs[k], points = float(m.group(1)), points + 1
        else:
            evs[k] = float(probs @ np.arange(11))
    return evs, points


def parse_json_values(result: ChatResult, n: int) -> np.ndarray:
    """A JSON list of ``n`` numbers in [0, 10] (delphi's JSON simulation mode) → shape (n,)."""
    m = re.search(r"\[.*?\]", result.text, flags=re.S)
    try:
        values = json.loads(m.group(0)) if m else None
    except ValueError:
        values = None
    if not isinstance(values, list) or len(values) != n:
        got = len(values) if isinstance(values, list) else "no list"
        raise MalformedAnswer(f"expected a JSON list of {n} numbers, got {got}")
    out = np.zeros(n, dtype=np.float64)
    for i, v in enumerate(values):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 10:
            raise MalformedAnswer(f"item {i} is {v!r}, not a number in [0, 10]")
        out[i] = float(v)
    return out


def parse_text_values(result: ChatResult, tokens: list[str]) -> np.ndarray:
    """Text rung: the JSON list asked for, or (models that ignore the format) ``token<tab>N`` lines."""
    try:
        return parse_json_values(result, len(tokens))
    except MalformedAnswer as json_error:
        try:
            return parse_lines(ChatResult(result.text, None), tokens)[0]
        except MalformedAnswer:
            raise json_error from None


def parse_detection(result: ChatResult, n: int) -> tuple[list[float], bool]:
    """A Python list of n 0/1 calls → P(1) per example when logprobs are present, else the calls.

    Paulo et al.'s AUROC score: P("1") / (P("0") + P("1")) from the top logprobs at each call. Returns the
    scores and whether all of them came from logprobs.
    """
    m = re.search(r"\[([^\]]*)\]", result.text)
    if m is None:
        raise MalformedAnswer("no list in the detection answer")
    items = [(m.start(1) + x.start(), x.group(0)) for x in re.finditer(r"[^,\s]+", m.group(1))]
    if len(items) != n or any(v not in ("0", "1") for _, v in items):
        raise MalformedAnswer(f"expected a list of {n} zeros and ones, got {m.group(0)[:80]!r}")
    scores, all_probs = [], True
    for offset, v in items:
        top = _top_at(result, offset) or {}
        p1 = math.exp(top["1"]) if "1" in top else 0.0
        p0 = math.exp(top["0"]) if "0" in top else 0.0
        if p0 + p1 > 0:
            scores.append(p1 / (p0 + p1))
        else:
            scores.append(float(v))
            all_probs = False
    return scores, all_probs
