"""Shared pieces for the causal tests: IOI tokenizers, hand-made prompt sets, dictionaries, and independent
references (plain HF forwards, a spliced full forward written here, KL from our own log-softmax)."""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F

from saex.causal import ioi
from saex.causal.ioi import IOIPrompts
from saex.dictionaries.sae import SAE

SPECIALS = ["<|endoftext|>", "<|bos|>", "<|eos|>", "<unk>", "<pad>"]  # ids match tests._support.tiny_config
PAD = 4
WORD_RE = re.compile(r"\w+|[^\w\s]+")  # what the Whitespace pre-tokenizer does
SOME_NAMES = ("Mary", "John", "Alice", "Bob", "James", "Sarah", "Emma", "Paul")
SOME_PLACES = ("store", "garden", "school")
SOME_OBJECTS = ("ring", "drink", "snack")
LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + [chr(c) for c in range(ord("A"), ord("Z") + 1)]


def template_words() -> list[str]:
    words = []
    for t in ioi.TEMPLATES:
        for w in WORD_RE.findall(re.sub(r"\[(A|B|PLACE|OBJECT)\]", " ", t)):
            if w not in words:
                words.append(w)
    return words


def ioi_tokenizer(names=SOME_NAMES, places=SOME_PLACES, objects=SOME_OBJECTS):
    """A real HF WordPiece tokenizer: the template words and the given names/places/objects are one token
    each; every other word is spelt out in letters (``M ##a ##x``), so it is *not* a single token (a
    word-level tokenizer with an unknown token would map every unknown name to one ``<unk>``)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tokens = list(SPECIALS)
    for w in template_words() + list(names) + list(places) + list(objects) + LETTERS + ["##" + c for c in LETTERS]:
        if w not in tokens:
            tokens.append(w)
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="<unk>", max_input_chars_per_word=100))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", unk_token="<unk>", pad_token="<pad>"
    )


class ContextTokenizer:
    """Duck-typed tokenizer for ``make_prompts``: every known word alone (" Mary") is one token, but inside a
    sentence the words in ``widths`` take that many tokens (like BPE merging differently in context)."""

    def __init__(self, words, widths: dict[str, int], pad_token_id=PAD, eos_token_id=2):
        self.vocab = {w: i + 5 for i, w in enumerate(words)}
        self.widths = widths
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id

    def encode(self, text, add_special_tokens=False):
        words = WORD_RE.findall(text)
        if len(words) == 1:
            return [self.vocab[words[0]]]
        out = []
        for w in words:
            out += [self.vocab[w]] * self.widths.get(w, 1)
        return out


def hand_prompts(
    lengths=(7, 5, 6), vocab: int = 60, seed: int = 0, io_pos: int = 2, extra_diff: bool = False, pad: int = PAD
) -> IOIPrompts:
    """IOI-like pairs with hand token ids: the counterfactual differs from the base at ``io_pos`` (and, with
    ``extra_diff``, one more position); rows are right-padded with ``pad``."""
    g = torch.Generator().manual_seed(seed)
    N, T = len(lengths), max(lengths)
    base = torch.full((N, T), pad, dtype=torch.long)
    cf = base.clone()
    for i, L in enumerate(lengths):
        row = torch.randint(5, vocab, (L,), generator=g)
        base[i, :L] = row
        c = row.clone()
        for p in [io_pos] + ([L - 2] if extra_diff and io_pos != L - 2 else []):
            c[p] = 5 + (row[p] - 5 + 1 + torch.randint(0, vocab - 6, (1,), generator=g)) % (vocab - 5)
        assert (c != row).sum() == (1 + (extra_diff and io_pos != L - 2))
        cf[i, :L] = c
    return IOIPrompts(
        base, cf, torch.tensor(lengths), base[:, io_pos].clone(), base[:, 0].clone(), cf[:, io_pos].clone(), [], []
    )


def identity_dictionary(D: int, b_dec: torch.Tensor | None = None) -> SAE:
    b = torch.zeros(D) if b_dec is None else b_dec
    return SAE(torch.eye(D), torch.eye(D), torch.zeros(D), b, "linear", apply_b_dec_to_input=b_dec is not None)


def random_sae(
    D: int,
    F_: int,
    architecture: str = "standard",
    seed: int = 0,
    k: int | None = None,
    dead: tuple[int, ...] = (),
    constant: tuple[int, ...] = (),
    enc_scale: float = 0.3,
) -> SAE:
    """A random SAE with b_dec ≠ 0. ``dead`` features never fire (b_enc = −1e4); ``constant`` ones have a zero
    encoder column and b_enc = 1, so their code is 1 everywhere in both runs."""
    g = torch.Generator().manual_seed(seed)
    W_enc = torch.randn(D, F_, generator=g) * enc_scale
    W_dec = torch.randn(F_, D, generator=g)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    b_enc = torch.randn(F_, generator=g) * 0.1
    b_dec = torch.randn(D, generator=g) * 0.2
    for j in dead:
        b_enc[j] = -1e4
    for j in constant:
        W_enc[:, j] = 0.0
        b_enc[j] = 1.0
    return SAE(W_enc, W_dec, b_enc, b_dec, architecture, k=k, apply_b_dec_to_input=True)


def plain_last_logits(model, ids_NT: torch.Tensor, lengths_N: torch.Tensor) -> torch.Tensor:
    """Each prompt run alone, unpadded, in a plain HF forward: logits at its final token."""
    out = []
    with torch.no_grad():
        for i in range(ids_NT.shape[0]):
            L = int(lengths_N[i])
            out.append(model(input_ids=ids_NT[i : i + 1, :L], use_cache=False).logits[0, -1].float())
    return torch.stack(out)


def module_activation(hooked, hook: str, ids_NT: torch.Tensor) -> torch.Tensor:
    """The hook point's activation from a full forward, through a hook registered here."""
    point = hooked.resolve(hook)
    module = hooked.model.get_submodule(point.module)
    got = {}

    def keep(x):
        got.setdefault("x", (x[0] if isinstance(x, tuple) else x).detach().clone())

    if point.capture == "input":
        h = module.register_forward_pre_hook(
            lambda m, a, kw: keep(a[0] if a else kw["hidden_states"]), with_kwargs=True
        )
    else:
        h = module.register_forward_hook(lambda m, a, o: keep(o))
    try:
        with torch.no_grad():
            hooked.model(input_ids=ids_NT, use_cache=False)
    finally:
        h.remove()
    return got["x"]


def spliced_last_logits(
    hooked, hook: str, ids_NT: torch.Tensor, x_NTD: torch.Tensor, lengths_N: torch.Tensor
) -> torch.Tensor:
    """A full HF forward on ``ids_NT`` with the hook point's activation replaced by ``x_NTD`` (a hook written
    here, not saex's splice); logits at each prompt's final position. Differentiable in ``x_NTD``."""
    point = hooked.resolve(hook)
    module = hooked.model.get_submodule(point.module)
    if point.capture == "input":

        def pre(m, args, kwargs):
            if args:
                return (x_NTD.to(args[0].dtype), *args[1:]), kwargs
            return args, {**kwargs, "hidden_states": x_NTD.to(kwargs["hidden_states"].dtype)}

        h = module.register_forward_pre_hook(pre, with_kwargs=True)
    else:

        def post(m, args, out):
            if isinstance(out, tuple):
                return (x_NTD.to(out[0].dtype), *out[1:])
            return x_NTD.to(out.dtype)

        h = module.register_forward_hook(post)
    try:
        logits = hooked.model(input_ids=ids_NT, use_cache=False).logits
    finally:
        h.remove()
    return logits[torch.arange(ids_NT.shape[0]), lengths_N - 1]


def kl_pq(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) per row, from our own log-softmax, in float64."""
    lp = F.log_softmax(logits_p.double(), -1)
    lq = F.log_softmax(logits_q.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


def valid_mask(prompts: IOIPrompts) -> torch.Tensor:
    T = prompts.base_NT.shape[1]
    return torch.stack([torch.arange(T) < int(L) for L in prompts.lengths_N])


def independent_patch(dictionary, x_base, x_target, valid_NT, feats) -> torch.Tensor:
    """x − decode(encode(x)) + decode(codes with the features in ``feats`` taken from the target run), at the
    valid positions; x itself elsewhere (the paper's ``x − predict(x) + decode(codes)``). Both decodes use the
    base input's statistics where the dictionary normalises its inputs."""
    with torch.no_grad():
        c = dictionary.encode(x_base)
        c_t = dictionary.encode(x_target)
        c_new = c.clone()
        idx = torch.as_tensor(list(feats), dtype=torch.long)
        c_new[..., idx] = c_t[..., idx]
        out = x_base - dictionary.decode(c, x_base) + dictionary.decode(c_new, x_base)
    return torch.where(valid_NT[..., None], out, x_base)


def pinv_dictionary(D: int, F_: int, seed: int = 0, split: bool = False, dead: tuple[int, ...] = ()) -> SAE:
    """Random unit directions f_j with the pseudo-inverse as encoder and b_dec ≠ 0: 'linear' (signed codes),
    or with ``split`` the ±directions under ReLU ('standard', 2F features, like PCA's sign split)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(F_, D, generator=g)
    W = W / W.norm(dim=1, keepdim=True)
    E = torch.linalg.pinv(W)
    b_dec = torch.randn(D, generator=g) * 0.2
    if split:
        W, E = torch.cat([W, -W]), torch.cat([E, -E], 1)
    b_enc = torch.zeros(W.shape[0])
    for j in dead:
        b_enc[j] = -1e4
    return SAE(E, W, b_enc, b_dec, "standard" if split else "linear", apply_b_dec_to_input=True)


def sharpened_llama(tiny_models, scale: float = 30.0):
    """The tiny llama with its (untied) LM head scaled up, so KLs are O(1) and patches matter."""
    from saex.lm.hooks import HookedLM
    from saex.lm.loading import load_model

    model = load_model(str(tiny_models["llama"])).model
    assert not model.config.tie_word_embeddings
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    return HookedLM(model)


def save_ioi_model(root, docs: int = 60, extra_words: tuple[str, ...] = ()):
    """A tiny llama (seed 0) with ``ioi_tokenizer`` saved at ``root/model``, and ``root/corpus.jsonl``: ``docs``
    documents of 40 random template words, IOI names and objects. Returns (model folder, corpus path)."""
    import json
    import random

    from transformers import AutoModelForCausalLM

    from tests._support import tiny_config

    tok = ioi_tokenizer()
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config("llama", len(tok)))
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    rng = random.Random(0)
    words = template_words() + ["Mary", "John", "Alice", "Bob", "store", "ring", *extra_words]
    with open(root / "corpus.jsonl", "w") as f:
        for _ in range(docs):
            f.write(json.dumps({"text": " ".join(rng.choice(words) for _ in range(40))}) + "\n")
    return root / "model", root / "corpus.jsonl"
