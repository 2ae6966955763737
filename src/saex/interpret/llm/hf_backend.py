"""An in-process Hugging Face causal LM as a saex LLM backend (default: the embedded SmolLM2-135M-Instruct).

Simulation reads the model's *exact* next-token distribution after each tab of Bills et al.'s
all-at-once prompt (autointerp.md §1.4), from ONE forward pass per record:

- The prompt is tokenised segment by segment (``prompts.simulation_segments``), so a token boundary
  always falls right after each target tab and the logits at that token predict the activation.
- Where a value is two tokens ("10" under digit-splitting tokenizers such as SmolLM2's: "1" then "0"),
  a probe token ("1") is appended per slot, placed at the position after the tab with a 4-D attention
  mask that lets it see only the prefix up to that tab. Its logits give P("0" | "…\\t1"), so
  P(10) = P("1")·P("0" | "1") and P(1) = P("1")·(1 − P(any digit | "1")), all in the same pass and
  with the prompt's ``unknown`` context intact.

Explanations and detection use greedy generation through the tokenizer's chat template when it has
one, else Bills' flat completion format; per-token top logprobs come from the raw logits. Small models
are a wire/format smoke test, not a judge of interpretability (autointerp.md §4). The model runs on any device
(``device``, ``dtype``); probabilities are taken in float64 (float32 on MPS).
"""

from __future__ import annotations

import numpy as np
import torch

from saex.devices import device_of, wide_dtype
from saex.errors import SaexError
from saex.interpret.llm.base import ChatResult, Counter, MalformedAnswer
from saex.interpret.llm.prompts import flatten
from saex.lm.loading import load_model


def value_token_plan(tokenizer) -> list[list[int]]:
    """Token ids spelling "0".."10" at the start of a fresh segment; each one or two ids long."""
    vocab = tokenizer.get_vocab()
    plan = []
    for v in range(11):
        s = str(v)
        ids = [vocab[s]] if s in vocab else tokenizer(s, add_special_tokens=False).input_ids
        if not 1 <= len(ids) <= 2:
            raise SaexError(f"the tokenizer spells {s!r} with {len(ids)} tokens; saex handles one or two")
        plan.append(list(ids))
    return plan


class HFBackend(Counter):
    """Transformers model in this process (see ``saex.interpret.llm.base.Backend``).

    Bills et al. 2023's all-at-once simulator (autointerp.md §1.4) with exact probabilities, and greedy
    generation for their explainer (§1.3) and Paulo et al. 2024's detection (§2.3). ``loaded`` takes an
    already loaded ``saex.lm.loading.LoadedModel`` (tests, or sharing the subject model's copy); ``device`` and
    ``dtype`` move the model (default: where it is, as it is).
    """

    concurrency = 1  # one model, one forward at a time: torch already uses the cores

    def __init__(
        self,
        model: str = "smollm2-135m",
        *,
        loaded=None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):

        super().__init__()
        lm = loaded if loaded is not None else load_model(model)
        self.model, self.name = model, f"hf:{model}"
        self.lm, self.tokenizer = lm.model.eval(), lm.tokenizer
        if device is not None or dtype is not None:
            self.lm.to(device=device, dtype=dtype)
        self.device = device_of(self.lm)
        self.wide = wide_dtype(self.device)
        self.plan = value_token_plan(self.tokenizer)
        self._prefixes = sorted({ids[0] for ids in self.plan if len(ids) == 2})
        self._digits = [ids[0] for ids in self.plan[:10] if len(ids) == 1]
        self.max_positions = getattr(self.lm.config, "max_position_embeddings", None)

    def __repr__(self) -> str:
        return f"HFBackend(model={self.model!r})"

    def capabilities(self) -> dict[str, bool]:
        return {"echo": True, "chat_logprobs": True}

    def probe(self) -> str:
        return "echo"

    def map(self, fn, items: list) -> list:
        return [fn(x) for x in items]

    # ---- all-at-once simulation -------------------------------------------------------------------------

    def _segment_ids(self, segments: list[str]) -> tuple[list[int], list[int]]:
        ids: list[int] = []
        ends = []
        for i, seg in enumerate(segments):
            ids += self.tokenizer(seg, add_special_tokens=i == 0).input_ids
            ends.append(len(ids) - 1)
        return ids, ends[:-1]

    @torch.no_grad()
    def slot_probs(self, segments: list[str], *, usage: dict | None = None, probe: bool = False):
        """Per slot the distribution over "0".."10", shape (11,) each, summing to 1; one forward pass."""
        ids, tabs = self._segment_ids(segments)
        n_slots, n_probes, n_ctx = len(tabs), len(self._prefixes), len(ids)
        total = n_ctx + n_slots * n_probes
        if self.max_positions and total > self.max_positions:
            self.note_error(f"the prompt needs {total} positions; the model has {self.max_positions}")
            self.count(usage, "failures")
            return None
        self.count(usage, "requests")
        self.count(usage, "prompt_tokens", total)
        if n_probes == 0:
            logits = self.lm(input_ids=torch.tensor([ids], device=self.device)).logits[0]
        else:
            logits = self._forward_with_probes(ids, tabs)
        logp = torch.log_softmax(logits.to(self.wide), dim=-1)
        rows = []
        for s, tab in enumerate(tabs):
            first = logp[tab].exp()
            p = np.zeros(11, dtype=np.float64)
            after = {f: logp[n_ctx + s * n_probes + k].exp() for k, f in enumerate(self._prefixes)}
            for v, seq in enumerate(self.plan):
                if len(seq) == 2:
                    p[v] = float(first[seq[0]] * after[seq[0]][seq[1]])
                elif seq[0] in after:  # "1" is also the start of "10": keep only "1" not followed by a digit
                    p[v] = float(first[seq[0]] * (1.0 - after[seq[0]][self._digits].sum()))
                else:
                    p[v] = float(first[seq[0]])
            rows.append(p / p.sum() if p.sum() > 0 else None)
        return rows

    def _forward_with_probes(self, ids: list[int], tabs: list[int]) -> torch.Tensor:
        n_ctx, probes = len(ids), self._prefixes
        full = ids + [f for _ in tabs for f in probes]
        total = len(full)
        allowed = torch.zeros(total, total, dtype=torch.bool)
        allowed[:n_ctx, :n_ctx] = torch.tril(torch.ones(n_ctx, n_ctx, dtype=torch.bool))
        positions = list(range(n_ctx))
        row = n_ctx
        for tab in tabs:
            for _ in probes:
                allowed[row, : tab + 1] = True  # the prefix up to and including the tab ...
                allowed[row, row] = True  # ... and itself, as if it were the token after the tab
                positions.append(tab + 1)
                row += 1
        return self.lm(
            input_ids=torch.tensor([full], device=self.device),
            attention_mask=self._probe_masks(allowed.to(self.device), positions),
            position_ids=torch.tensor([positions], device=self.device),
        ).logits[0]

    def _probe_masks(self, allowed: torch.Tensor, positions: list[int]):
        """Additive 4-D mask(s): a custom mask is used as given, so sliding-window layers need their own."""
        config = self.lm.config
        pos = torch.tensor(positions, device=allowed.device)
        window = getattr(config, "sliding_window", None)
        windowed = allowed & (pos[None, :] > pos[:, None] - window) if window else allowed  # HF's overlay rule
        dtype = next(self.lm.parameters()).dtype

        def additive(a: torch.Tensor) -> torch.Tensor:
            return torch.zeros(a.shape, dtype=dtype, device=a.device).masked_fill(~a, torch.finfo(dtype).min)[
                None, None
            ]

        kinds = set(getattr(config, "layer_types", None) or [])
        if kinds - {"full_attention"}:  # per-layer-type models (Gemma 3, Qwen 2) take a dict of masks
            unknown = kinds - {"full_attention", "sliding_attention"}
            if unknown:
                raise SaexError(
                    f"{self.model}: attention types {sorted(unknown)} are not supported by the hf simulator"
                )
            return {"full_attention": additive(allowed), "sliding_attention": additive(windowed)}
        if window and getattr(config, "use_sliding_window", True) and not kinds:  # Mistral-style: one window for all
            return additive(windowed)
        return additive(allowed)

    # ---- generation -------------------------------------------------------------------------------------

    def _prompt_ids(self, messages: list[dict]) -> torch.Tensor:
        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return tok(text, add_special_tokens=False, return_tensors="pt").input_ids
        return tok(flatten(messages), return_tensors="pt").input_ids

    @torch.no_grad()
    def chat(
        self,
        messages: list[dict],
        *,
        max_tokens: int,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        parse,
        usage: dict | None = None,
        probe: bool = False,
    ):
        """Greedy decoding (temperature is ignored: reproducible and deterministic); parse or None."""
        from transformers import GenerationConfig

        tok = self.tokenizer
        ids = self._prompt_ids(messages).to(self.device)
        if self.max_positions and ids.shape[1] + max_tokens > self.max_positions:
            self.note_error(
                f"the prompt needs {ids.shape[1] + max_tokens} positions; the model has {self.max_positions}"
            )
            self.count(usage, "failures")
            return None
        eos = tok.eos_token_id
        config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max_tokens,
            eos_token_id=eos,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos,
            output_logits=True,
            return_dict_in_generate=True,
        )
        out = self.lm.generate(ids, attention_mask=torch.ones_like(ids), generation_config=config)
        new = out.sequences[0, ids.shape[1] :].tolist()
        self.count(usage, "requests")
        self.count(usage, "prompt_tokens", int(ids.shape[1]))
        self.count(usage, "completion_tokens", len(new))
        pieces = []
        for step, token_id in enumerate(new):
            if token_id == eos:
                break
            top: dict[str, float] = {}
            if top_logprobs:
                logp = torch.log_softmax(out.logits[step][0].to(self.wide), dim=-1)
                values, idx = logp.topk(top_logprobs)
                for lp, i in zip(values.tolist(), idx.tolist()):
                    key = tok.decode([i])
                    top[key] = max(top.get(key, -np.inf), lp)
            pieces.append((tok.decode([token_id], skip_special_tokens=True), top))
        text = "".join(p for p, _ in pieces)
        try:
            return parse(ChatResult(text=text, pieces=pieces if top_logprobs else None))
        except MalformedAnswer as err:
            # Greedy decoding would repeat the same answer: retrying cannot help.
            self.note_error(f"malformed answer: {err}")
            self.count(usage, "malformed")
            self.count(usage, "failures")
            return None
