"""Tokenise documents, split them document-disjointly, and pack them into fixed-length contexts.

Follows the paper's data pipeline (paper §2; docs/activation-store.md; tuned-lens ``chunk_and_tokenize``): documents are
joined with the model's document separator, which also opens the first document, and the token stream is
cut into fixed contexts with the last partial one dropped. The BOS policy is explicit and recorded:

* ``separator``: the stream ``[SEP] doc1 [SEP] doc2 ...`` is cut into contexts of exactly T tokens,
  so a context starts wherever the cut falls (the paper's setting);
* ``bos``: every context is ``[BOS]`` followed by T-1 stream tokens. Models trained to always see BOS
  at position 0 (Gemma) need it;
* ``auto``: ``bos`` when the tokenizer adds BOS to plain text by default, else ``separator``.

The train / held-out split is by document: a document is held out when a seeded hash of its key falls
below ``heldout_fraction``, so no document contributes to both splits whatever the iteration order.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from saex.config import Config, opt
from saex.data.documents import Document
from saex.errors import SaexError

BOS_POLICIES = ("auto", "separator", "bos")
SPLITS = ("train", "heldout")


@dataclass
class ContextOptions(Config):
    """Which documents and how they become contexts: the options of every stage that reads a corpus through a
    model (``saex harvest``; ``saex train --model``, which computes activations on the fly)."""

    corpus: str = "default"
    """Comma-separated sources: default (Wikipedia leads), debian or a Debian source name, a .txt/.jsonl file
    or folder, or a Hugging Face dataset id (streamed)."""
    context_length: int = opt(128, gt=0)
    """Tokens per context."""
    bos_policy: Literal["auto", "separator", "bos"] = "auto"
    """auto, separator (the paper's: contexts cut from the separator-joined stream) or bos (BOS opens every
    context; auto picks it when the tokenizer adds BOS by default)."""
    separator: str = "auto"
    """Token joining documents (auto: <|endoftext|>, else EOS, else BOS)."""
    heldout_fraction: float = opt(0.1, gt=0, lt=1)
    """Fraction of documents assigned to the held-out split (by a seeded hash of each document's key)."""
    text_field: str = "text"
    """Field holding the text in .jsonl files and hub datasets."""
    hub_split: str = "train"
    """Split of a hub dataset to stream."""
    hub_config: str | None = None
    """Configuration name of a hub dataset, if it has several."""


@dataclass(frozen=True)
class Packing:
    """The resolved tokenisation and packing choices; recorded in every store's manifest."""

    context_length: int
    bos_policy: str
    """``separator`` or ``bos`` (``auto`` is resolved before this is built)."""
    separator_id: int
    separator_token: str
    bos_id: int | None
    bos_token: str | None

    def describe(self) -> dict:
        return dict(self.__dict__)


def resolve_packing(
    tokenizer, context_length: int, bos_policy: str = "auto", separator: str = "auto", max_context: int | None = None
) -> Packing:
    if bos_policy not in BOS_POLICIES:
        raise SaexError(f"unknown BOS policy {bos_policy!r}; allowed: {list(BOS_POLICIES)}")
    if context_length < 2:
        raise SaexError(f"context length {context_length} is too short; use at least 2 tokens")
    if max_context is not None and context_length > max_context:
        raise SaexError(f"context length {context_length} is longer than the model allows ({max_context} positions)")
    vocab = tokenizer.get_vocab()
    if separator == "auto":
        # <|endoftext|> is the document separator of GPT-2-style BPE vocabularies (SmolLM2, Pythia, GPT-2);
        # otherwise fall back to the model's own end- or start-of-sequence token.
        candidates = ["<|endoftext|>", tokenizer.eos_token, tokenizer.bos_token]
        found = next((c for c in candidates if c is not None and c in vocab), None)
        if found is None:
            raise SaexError("the tokenizer has no <|endoftext|>, EOS or BOS token; name a separator token explicitly")
        separator = found
    elif separator not in vocab:
        raise SaexError(f"separator token {separator!r} is not in the tokenizer's vocabulary")
    bos_id = tokenizer.bos_token_id
    if bos_policy == "auto":
        probe = tokenizer("a").input_ids
        bos_policy = "bos" if bos_id is not None and probe and probe[0] == bos_id else "separator"
    if bos_policy == "bos" and bos_id is None:
        raise SaexError("BOS policy 'bos' needs a tokenizer with a BOS token; this one has none (use 'separator')")
    return Packing(context_length, bos_policy, vocab[separator], separator, bos_id, tokenizer.bos_token)


def split_of(key: str, seed: int, heldout_fraction: float) -> str:
    """``heldout`` or ``train`` for a document key: a seeded hash, independent of order."""
    u = int.from_bytes(hashlib.sha256(f"{seed}:{key}".encode()).digest()[:8], "big") / 2**64
    return "heldout" if u < heldout_fraction else "train"


@dataclass
class Context:
    tokens_T: np.ndarray
    """int32 token ids."""
    doc_ids_T: np.ndarray
    """int32 index (within its split's document stream) of the document each token belongs to; -1 for a
    prepended BOS. A separator belongs to the document it opens."""


def pack(
    docs: Iterator[Document],
    tokenizer,
    packing: Packing,
    split: str,
    seed: int,
    heldout_fraction: float,
    tokenize_batch: int = 64,
) -> Iterator[Context]:
    """Contexts of one split, in a deterministic order."""
    if split not in SPLITS:
        raise SaexError(f"unknown split {split!r}; allowed: {list(SPLITS)}")
    T = packing.context_length
    body = T - 1 if packing.bos_policy == "bos" else T
    buf_tok: list[int] = []
    buf_doc: list[int] = []
    doc_index = 0

    def batches() -> Iterator[list[Document]]:
        batch = []
        for d in docs:
            if split_of(d.key, seed, heldout_fraction) == split:
                batch.append(d)
                if len(batch) == tokenize_batch:
                    yield batch
                    batch = []
        if batch:
            yield batch

    for batch in batches():
        # Batched calls let the Rust tokenizer work on many documents at once; verbose=False silences the
        # "longer than the model's maximum" warning, which is meaningless before packing.
        ids = tokenizer([d.text for d in batch], add_special_tokens=False, verbose=False)["input_ids"]
        for doc_ids in ids:
            buf_tok.append(packing.separator_id)
            buf_tok.extend(doc_ids)
            buf_doc.extend([doc_index] * (len(doc_ids) + 1))
            doc_index += 1
        n_full = len(buf_tok) // body
        for i in range(n_full):
            tok = np.asarray(buf_tok[i * body : (i + 1) * body], dtype=np.int32)
            doc = np.asarray(buf_doc[i * body : (i + 1) * body], dtype=np.int32)
            if packing.bos_policy == "bos":
                tok = np.concatenate([np.array([packing.bos_id], dtype=np.int32), tok])
                doc = np.concatenate([np.array([-1], dtype=np.int32), doc])
            yield Context(tok, doc)
        del buf_tok[: n_full * body], buf_doc[: n_full * body]
