"""Activation patching with a subset of a dictionary's features (Cunningham et al. 2023 §4, Fig. 3).

On the base prompt, at every position of the hook point, the activation becomes
``x′ = x + Σ_{j∈F} (c̄_j − c_j) f_j``: the codes of the features in F are replaced by their values on the
counterfactual prompt, and the dictionary's reconstruction error is kept (the paper's code writes it as
``x − predict(x) + decode(codes)``). The metric is KL(patched ‖ target) of the next-token distribution at
the final position, averaged over prompts; the edit magnitude is the mean ‖x′ − x‖ over the prompts'
positions.

Speed on CPU: everything before the hook point is computed once (``PatchingSetup`` caches the base and
counterfactual activations, their codes and the target log-probabilities); each evaluation runs only the
blocks after the hook, on a batch of candidate patches at once, and the final norm and LM head only at the
final position. For residual-stream hook points the blocks are called directly with the keyword arguments
the model passed them on the base run (rotary embeddings, masks), captured once; other hook kinds fall back
to a full forward with the activation spliced in.

Devices: the model runs where it is, in its dtype; the cached activations, codes and log-probabilities and every
patch live on the dictionary's device in float32 (a patched activation goes back into the model in its dtype).
Feature masks may be given anywhere; ``evaluate`` returns CPU tensors.
"""

from __future__ import annotations

from functools import cached_property

import torch
import torch.nn.functional as F

from saex.causal.ioi import IOIPrompts
from saex.devices import device_of
from saex.errors import SaexError
from saex.lm.hooks import HookedLM, _first, expand_batch


def _clone(value):
    if torch.is_tensor(value):
        return value.clone()
    if isinstance(value, (tuple, list)):
        return type(value)(_clone(v) for v in value)
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    return value


class PatchingSetup:
    """One (model, hook point, prompt set, dictionary): the cached runs every patch evaluation reuses."""

    def __init__(self, hooked: HookedLM, hook: str, prompts: IOIPrompts, dictionary):
        self.hooked, self.hook, self.prompts, self.d = hooked, hook, prompts, dictionary
        point = hooked.resolve(hook)
        if dictionary.d_in != point.width:
            raise SaexError(f"the dictionary has d_in {dictionary.d_in}, but {hook} has width {point.width}")
        self.suffix_from = {"hook_resid_post": point.layer + 1, "hook_resid_pre": point.layer}.get(point.kind)
        N, T = prompts.base_NT.shape
        self.N, self.T = N, T
        self.device, lm = device_of(dictionary), hooked.device
        self.valid_NT = torch.arange(T, device=self.device)[None, :] < prompts.lengths_N.to(self.device)[:, None]
        self.last_N = (prompts.lengths_N - 1).to(lm)  # indexes the model's outputs
        self.base_NT = prompts.base_NT.to(lm)
        model = hooked.model
        self._kwargs: dict[int, dict] = {}
        with torch.inference_mode():
            self.x_base_NTD = self._capture(self.base_NT, record_kwargs=True).to(self.device, torch.float32).clone()
            self.x_target_NTD = self._capture(prompts.counterfactual_NT).to(self.device, torch.float32).clone()
            rows_N = torch.arange(N, device=lm)
            logits = model(input_ids=prompts.counterfactual_NT.to(lm), use_cache=False).logits
            self.logp_target_NV = F.log_softmax(logits[rows_N, self.last_N].float(), -1).to(self.device)
            base_logits = model(input_ids=self.base_NT, use_cache=False).logits
            self.logp_base_NV = F.log_softmax(base_logits[rows_N, self.last_N].float(), -1).to(self.device)
            c_base = dictionary.encode(self.x_base_NTD)
            c_target = dictionary.encode(self.x_target_NTD)
        # outside inference mode, copies are ordinary tensors that autograd may save (attribution patching)
        self._kwargs = {i: _clone(kw) for i, kw in self._kwargs.items()}
        self.x_base_NTD, self.x_target_NTD = self.x_base_NTD.clone(), self.x_target_NTD.clone()
        self.logp_target_NV, self.logp_base_NV = self.logp_target_NV.clone(), self.logp_base_NV.clone()
        # A dictionary that normalises its input decodes x̂·σ + μ with the base input's σ: the patch in the
        # model's units is Δc W_dec σ (σ = 1 without a normalisation).
        sigma = dictionary.norm_stats(self.x_base_NTD)[1]
        self.delta_NTF = ((c_target - c_base) * self.valid_NT[..., None] * sigma).clone().contiguous()
        self.W_dec_FD = dictionary.W_dec_FD.detach().float().clone()

    @cached_property
    def active(self) -> torch.Tensor:
        """The features whose code differs between the runs somewhere, on the CPU (those whose code is the same
        at every position change nothing when patched)."""
        return torch.nonzero(self.delta_NTF.abs().amax((0, 1)) > 0).squeeze(1).cpu()

    def auto_batch(self, rows: int = 1200) -> int:
        """Candidates per suffix forward: about ``rows`` token rows in all, 1 to 8. Measured on 2 cores
        (benchmarks/ioi.py): 8 candidates win at 2-10 prompts, but at 25-50 prompts (1000 rows each) a
        stack of 8 leaves the caches and is 10-20% slower than one at a time."""
        return max(1, min(8, rows // (self.N * self.T)))

    @property
    def n_features(self) -> int:
        return self.delta_NTF.shape[-1]

    def _capture(self, ids_NT: torch.Tensor, record_kwargs: bool = False) -> torch.Tensor:
        """The hook point's activation; on the base run, also the kwargs of every block after it."""
        handles = []
        if record_kwargs and self.suffix_from is not None:
            for i in range(self.suffix_from, self.hooked.n_layers):

                def keep(mod, args, kwargs, i=i):
                    self._kwargs[i] = dict(kwargs)

                handles.append(self.hooked.blocks[i].register_forward_pre_hook(keep, with_kwargs=True))
        try:
            with self.hooked.capture([self.hook], stop_early=not record_kwargs) as run:
                return run(ids_NT)[self.hook]
        finally:
            for h in handles:
                h.remove()

    # -- one batch of candidate patches ----------------------------------------------------------------
    def edit(self, mask_BF: torch.Tensor) -> torch.Tensor:
        """x′ − x [B, N, T, D] for each row of a 0/1 feature mask (on any device)."""
        mask = mask_BF.to(self.device, self.delta_NTF.dtype)
        return (self.delta_NTF[None] * mask[:, None, None, :]) @ self.W_dec_FD

    def patched(self, mask_BF: torch.Tensor) -> torch.Tensor:
        """x′ [B, N, T, D] for each row of a 0/1 feature mask."""
        return self.x_base_NTD[None] + self.edit(mask_BF)

    def final_logits(self, x_BNTD: torch.Tensor) -> torch.Tensor:
        """Logits [B, N, V] at each prompt's final position with the hook point's activation replaced (float32,
        on the dictionary's device; the model runs on its own in its dtype)."""
        B = x_BNTD.shape[0]
        N, T = self.N, self.T
        lm = self.hooked.device
        flat = x_BNTD.reshape(B * N, T, -1)
        rows, last = torch.arange(B * N, device=lm), self.last_N.repeat(B)
        if self.suffix_from is None:
            ids = self.base_NT.repeat(B, 1)
            with self.hooked.splice(self.hook, lambda a: flat):  # put back in the model's device and dtype
                logits = self.hooked.model(input_ids=ids, use_cache=False).logits
            return logits[rows, last].reshape(B, N, -1).float().to(self.device)
        h = flat.to(lm, self.hooked.dtype)
        for i in range(self.suffix_from, self.hooked.n_layers):
            h = _first(self.hooked.blocks[i](h, **expand_batch(self._kwargs[i], N, B)))
        return self.hooked.logits_at(h[rows, last]).reshape(B, N, -1).to(self.device)

    def kl(self, logits_BNV: torch.Tensor) -> torch.Tensor:
        """KL(patched ‖ target) at the final position, mean over prompts, one value per candidate."""
        logp = F.log_softmax(logits_BNV, -1)
        return (logp.exp() * (logp - self.logp_target_NV[None])).sum(-1).mean(-1)

    def edit_magnitude(self, mask_BF: torch.Tensor) -> torch.Tensor:
        """Mean ‖x′ − x‖ over the prompts' positions, per candidate."""
        return self._magnitude(self.edit(mask_BF))

    def _magnitude(self, edit_BNTD: torch.Tensor) -> torch.Tensor:
        norms = edit_BNTD.norm(dim=-1)  # [B, N, T]
        return (norms * self.valid_NT[None]).sum((1, 2)) / self.valid_NT.sum()

    @torch.inference_mode()
    def evaluate_batch(self, mask_BF: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL, edit magnitude) for every row of a feature mask, in one suffix forward, on the dictionary's
        device."""
        e = self.edit(mask_BF)
        return self.kl(self.final_logits(self.x_base_NTD[None] + e)), self._magnitude(e)

    def evaluate(self, mask_BF: torch.Tensor, batch: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """(KL, edit magnitude) for every row of a feature mask, ``batch`` candidates per suffix forward; on the
        CPU."""
        if mask_BF.shape[0] == 0:
            return torch.zeros(0), torch.zeros(0)
        kls, edits = zip(*(self.evaluate_batch(mask_BF[i : i + batch]) for i in range(0, mask_BF.shape[0], batch)))
        return torch.cat(kls).cpu(), torch.cat(edits).cpu()

    def kl_base(self) -> float:
        """KL(base ‖ target): nothing patched."""
        logp = self.logp_base_NV
        return float((logp.exp() * (logp - self.logp_target_NV)).sum(-1).mean())
