"""IOI prompts (Wang et al. 2022 as Cunningham et al. 2023 §4 used them): invariants checked against the
templates filled in by hand, token-level brute force, and plain HF forwards for the logit difference."""

from __future__ import annotations

import itertools
import re

import pytest
import torch

from saex.causal import ioi
from saex.causal.ioi import ABBA_TEMPLATES, BABA_TEMPLATES, TEMPLATES, make_prompts, single_tokens, task_performance
from saex.errors import SaexError
from tests._support import tiny_config
from tests.causal._helpers import PAD, SOME_NAMES, SOME_OBJECTS, SOME_PLACES, WORD_RE, ContextTokenizer, ioi_tokenizer


@pytest.fixture(scope="module")
def tok():
    return ioi_tokenizer()


@pytest.fixture(scope="module")
def prompts(tok):
    return make_prompts(tok, n=40, seed=5)


def _word(tok, i: int) -> str:
    return tok.convert_ids_to_tokens(int(i))


# -- templates ---------------------------------------------------------------------------------------------


def test_thirty_templates_fifteen_of_each():
    assert len(BABA_TEMPLATES) == 15 and len(ABBA_TEMPLATES) == 15 and len(TEMPLATES) == 30
    assert TEMPLATES == BABA_TEMPLATES + ABBA_TEMPLATES
    assert len(set(TEMPLATES)) == 30


def test_abba_is_baba_with_first_two_names_swapped_by_hand():
    assert BABA_TEMPLATES[0] == "Then, [B] and [A] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert ABBA_TEMPLATES[0] == "Then, [A] and [B] went to the [PLACE]. [B] gave a [OBJECT] to [A]"
    assert ABBA_TEMPLATES[13] == "The [PLACE] [A] and [B] went to had a [OBJECT]. [B] gave it to [A]"


@pytest.mark.parametrize("i", range(15))
def test_abba_structure(i):
    baba, abba = BABA_TEMPLATES[i], ABBA_TEMPLATES[i]
    assert re.findall(r"\[(A|B)\]", baba) == ["B", "A", "B", "A"]
    assert re.findall(r"\[(A|B)\]", abba) == ["A", "B", "B", "A"]
    assert re.sub(r"\[(A|B)\]", "#", baba) == re.sub(r"\[(A|B)\]", "#", abba)
    assert baba.endswith("[A]") and abba.endswith("[A]")


def test_words_lists_match_the_paper():
    assert ioi.PLACES == ("store", "garden", "restaurant", "school", "hospital", "office", "house", "station")
    assert ioi.OBJECTS == ("ring", "kiss", "bone", "basketball", "computer", "necklace", "drink", "snack")
    assert len(set(ioi.NAMES)) == len(ioi.NAMES)


# -- single tokens -------------------------------------------------------------------------------------------


def test_single_tokens_filters_by_the_tokenizer(tok):
    assert single_tokens(tok, ioi.NAMES) == list(SOME_NAMES)
    assert single_tokens(tok, ioi.PLACES) == list(SOME_PLACES)
    assert single_tokens(tok, ioi.OBJECTS) == list(SOME_OBJECTS)
    assert len(tok.encode(" Max", add_special_tokens=False)) == 3  # spelt out, not one <unk>


def test_words_used_are_single_tokens(tok, prompts):
    ids = {w: tok.convert_tokens_to_ids(w) for w in SOME_NAMES}
    name_ids = set(ids.values())
    for i in range(prompts.n):
        for t in (prompts.io_N[i], prompts.s_N[i], prompts.cf_io_N[i]):
            assert int(t) in name_ids
            assert tok.encode(" " + _word(tok, t), add_special_tokens=False) == [int(t)]
        base, counter = prompts.texts[i]
        for text, row in ((base, prompts.base_NT[i]), (counter, prompts.counterfactual_NT[i])):
            words = WORD_RE.findall(text)
            L = int(prompts.lengths_N[i])
            assert len(words) == L, "every word of the prompt is one token"
            assert [_word(tok, t) for t in row[:L]] == words
            used = set(words)
            assert used & set(ioi.NAMES) <= set(SOME_NAMES)
            assert used & set(ioi.PLACES) <= set(SOME_PLACES)
            assert used & set(ioi.OBJECTS) <= set(SOME_OBJECTS)


# -- prompt pairs --------------------------------------------------------------------------------------------


def test_three_distinct_names(prompts):
    for i in range(prompts.n):
        io, s, cf = (int(v[i]) for v in (prompts.io_N, prompts.s_N, prompts.cf_io_N))
        assert len({io, s, cf}) == 3


def test_base_and_counterfactual_differ_only_at_the_io(prompts):
    for i in range(prompts.n):
        L = int(prompts.lengths_N[i])
        b, c = prompts.base_NT[i, :L], prompts.counterfactual_NT[i, :L]
        io, s, cf = int(prompts.io_N[i]), int(prompts.s_N[i]), int(prompts.cf_io_N[i])
        diff = torch.nonzero(b != c).squeeze(1).tolist()
        assert len(diff) == 1, "the IO appears exactly once before the dropped answer"
        assert diff == torch.nonzero(b == io).squeeze(1).tolist() == torch.nonzero(c == cf).squeeze(1).tolist()
        assert int((b == s).sum()) == int((c == s).sum()) == 2, "S appears twice, in both prompts"
        assert int((c == io).sum()) == 0 and int((b == cf).sum()) == 0


def test_io_position_matches_template_kind(prompts):
    # BABA: the IO is the second name of the first clause; ABBA: the first.
    kinds = set()
    for i in range(prompts.n):
        L = int(prompts.lengths_N[i])
        b = prompts.base_NT[i, :L]
        io_pos = int(torch.nonzero(b == prompts.io_N[i])[0])
        s_pos = torch.nonzero(b == prompts.s_N[i]).squeeze(1).tolist()
        abba = prompts.templates[i] >= 15
        kinds.add(abba)
        assert (io_pos < s_pos[0]) == abba
        assert s_pos[0] < io_pos < s_pos[1] or abba
    assert kinds == {True, False}, "both kinds drawn in 40 prompts"


def test_dropped_answer_reconstructs_the_template(tok, prompts):
    for i in range(prompts.n):
        base, counter = prompts.texts[i]
        io, s, cf = (_word(tok, v[i]) for v in (prompts.io_N, prompts.s_N, prompts.cf_io_N))
        template = TEMPLATES[prompts.templates[i]]
        matches = []
        for place, obj in itertools.product(SOME_PLACES, SOME_OBJECTS):
            filled = template.replace("[PLACE]", place).replace("[OBJECT]", obj).replace("[B]", s)
            if filled.replace("[A]", io) == base + " " + io and filled.replace("[A]", cf) == counter + " " + cf:
                matches.append((place, obj))
        if "[PLACE]" in template and "[OBJECT]" in template:
            assert len(matches) == 1
        else:
            assert len(matches) >= 1  # templates 4 and 12 (0-based) name no place or object
        assert not base.endswith(" ") and not base.endswith(io)


def test_right_padding_beyond_lengths(tok, prompts):
    T = prompts.base_NT.shape[1]
    assert int(prompts.lengths_N.max()) == T
    assert int(prompts.lengths_N.min()) < T, "templates of different lengths were drawn"
    assert tok.pad_token_id == PAD
    for i in range(prompts.n):
        L = int(prompts.lengths_N[i])
        assert (prompts.base_NT[i, L:] == PAD).all() and (prompts.counterfactual_NT[i, L:] == PAD).all()
        assert (prompts.base_NT[i, :L] != PAD).all()
        assert prompts.base_NT[i, :L].tolist() == tok.encode(prompts.texts[i][0], add_special_tokens=False)
        assert prompts.counterfactual_NT[i, :L].tolist() == tok.encode(prompts.texts[i][1], add_special_tokens=False)


def test_explicit_pad_id(tok):
    p = make_prompts(tok, n=6, seed=1, pad_id=3)
    for i in range(p.n):
        assert (p.base_NT[i, int(p.lengths_N[i]) :] == 3).all()


def test_shapes_and_types(prompts):
    N, T = prompts.base_NT.shape
    assert N == prompts.n == 40
    assert prompts.counterfactual_NT.shape == (N, T)
    for t in (
        prompts.base_NT,
        prompts.counterfactual_NT,
        prompts.lengths_N,
        prompts.io_N,
        prompts.s_N,
        prompts.cf_io_N,
    ):
        assert t.dtype == torch.long
    assert len(prompts.texts) == len(prompts.templates) == N
    assert all(0 <= t < 30 for t in prompts.templates)


def test_seeded_determinism_and_seed_sensitivity(tok):
    a, b = make_prompts(tok, n=12, seed=3), make_prompts(tok, n=12, seed=3)
    assert torch.equal(a.base_NT, b.base_NT) and torch.equal(a.counterfactual_NT, b.counterfactual_NT)
    assert a.texts == b.texts and a.templates == b.templates
    c = make_prompts(tok, n=12, seed=4)
    assert a.texts != c.texts


def test_nonpositive_n_is_an_error(tok):
    for n in (0, -3):
        with pytest.raises(SaexError):
            make_prompts(tok, n=n)


def test_tokenizer_that_splits_every_name_is_an_error():
    with pytest.raises(SaexError, match="single-token names"):
        make_prompts(ioi_tokenizer(names=()), n=3)
    with pytest.raises(SaexError):  # two single-token names are not enough for three distinct ones
        make_prompts(ioi_tokenizer(names=("Mary", "John")), n=3)
    with pytest.raises(SaexError):
        make_prompts(ioi_tokenizer(places=()), n=3)
    with pytest.raises(SaexError):
        make_prompts(ioi_tokenizer(objects=()), n=3)


def test_three_names_are_enough(tok, monkeypatch):
    monkeypatch.setattr(ioi, "NAMES", ("Mary", "John", "Alice"))
    p = make_prompts(tok, n=10, seed=0)
    for i in range(p.n):
        assert {int(p.io_N[i]), int(p.s_N[i]), int(p.cf_io_N[i])} == {
            tok.convert_tokens_to_ids(w) for w in ("Mary", "John", "Alice")
        }


def _context_words():
    from tests.causal._helpers import template_words

    return template_words() + ["Ann", "Bea", "Cy", "Dee", "Ed", "Flo", "store", "ring"]


def test_pairs_of_unequal_token_length_are_resampled(monkeypatch):
    # In context, Bea/Dee/Flo take two tokens: a pair is kept only when IO and the counterfactual IO agree.
    monkeypatch.setattr(ioi, "NAMES", ("Ann", "Bea", "Cy", "Dee", "Ed", "Flo"))
    monkeypatch.setattr(ioi, "PLACES", ("store",))
    monkeypatch.setattr(ioi, "OBJECTS", ("ring",))
    wide = {"Bea": 2, "Dee": 2, "Flo": 2}
    tk = ContextTokenizer(_context_words(), wide)
    inv = {v: k for k, v in tk.vocab.items()}
    p = make_prompts(tk, n=30, seed=2)
    assert p.n == 30
    for i in range(p.n):
        io, cf = inv[int(p.io_N[i])], inv[int(p.cf_io_N[i])]
        assert (io in wide) == (cf in wide)
        L = int(p.lengths_N[i])
        assert L == len(tk.encode(p.texts[i][0])) == len(tk.encode(p.texts[i][1]))


def test_no_pair_of_equal_length_is_an_error(monkeypatch):
    monkeypatch.setattr(ioi, "NAMES", ("Ann", "Bea", "Cy"))
    monkeypatch.setattr(ioi, "PLACES", ("store",))
    monkeypatch.setattr(ioi, "OBJECTS", ("ring",))
    tk = ContextTokenizer(_context_words(), {"Bea": 2, "Cy": 3})  # every name has its own in-context width
    with pytest.raises(SaexError, match="equal token length"):
        make_prompts(tk, n=2, seed=0)


# -- task performance ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_task_performance_matches_plain_forwards(tok, prompts, family):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tok))).eval()
    perf = task_performance(model, prompts)
    diffs = []
    with torch.no_grad():
        for i in range(prompts.n):
            L = int(prompts.lengths_N[i])
            last = model(input_ids=prompts.base_NT[i : i + 1, :L]).logits[0, -1]  # unpadded, alone
            diffs.append(float(last[prompts.io_N[i]] - last[prompts.s_N[i]]))
    diffs = torch.tensor(diffs)
    assert perf["n_prompts"] == prompts.n
    torch.testing.assert_close(torch.tensor(perf["logit_diffs"]), diffs, rtol=1e-4, atol=1e-5)
    assert perf["mean_logit_diff"] == pytest.approx(float(diffs.mean()), abs=1e-5)
    assert perf["accuracy"] == pytest.approx(float((diffs > 0).float().mean()))
    assert 0 < perf["accuracy"] < 1, "a random model is right on some prompts and wrong on others"
