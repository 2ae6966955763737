"""Fixture module: a tiny, randomly initialised chat LM and its word-level tokenizer for the transformers
backend's tests (mechanics only: random weights say nothing about interpretability)."""

import torch

WORDS = [
    "the",
    "a",
    "cat",
    "dog",
    "sat",
    "on",
    "mat",
    "word",
    "unknown",
    "neuron",
    "activations",
    "explanation",
    "behavior",
    "of",
    "main",
    "thing",
    "this",
    "does",
    "is",
    "find",
    "we",
    "studying",
    "neurons",
    "in",
    "neural",
    "network",
]


def tiny_lm(ten_is_one_token: bool, family: str = "llama"):
    """A word-level tokenizer with tab, newline, space and digit tokens, and a 2-layer model over it
    (gemma3: one sliding-window layer with a window far shorter than the prompt, one global layer)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from saex.lm.loading import LoadedModel

    digits = [str(i) for i in range(10)] + (["10"] if ten_is_one_token else [])
    vocab = {
        t: i
        for i, t in enumerate(
            ["<unk>", "<s>", "</s>", "\t", "\n", " ", "<start>", "<end>", ".", ":", '"', "[", "]", ","] + digits + WORDS
        )
    }
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    number = r"10|\d" if ten_is_one_token else r"\d"
    tok.pre_tokenizer = pre_tokenizers.Split(
        Regex(rf"\t|\n| |{number}|<start>|<end>|[A-Za-z]+|[^\sA-Za-z\d]"), behavior="isolated"
    )
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    common = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    if family == "gemma3":
        model = Gemma3ForCausalLM(
            Gemma3TextConfig(
                **common,
                head_dim=8,
                query_pre_attn_scalar=8,
                sliding_window=8,
                layer_types=["sliding_attention", "full_attention"],
            )
        )
    else:
        model = LlamaForCausalLM(LlamaConfig(**common))
    model.eval()
    return LoadedModel(name="tiny", model=model, tokenizer=fast, weights_sha256="-", source="local")
