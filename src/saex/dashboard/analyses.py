"""The dashboard's analysis panels for every feature shown (Cunningham et al. 2023 §5; docs/dashboard.md).

Two analyses are cheap enough for every feature of a dictionary and are computed by ``saex dashboard``:

* the token histogram (§5.1, Fig. 4 left) from the feature index's random sample of activating fragments
  (``features/histogram.py``'s ``histogram_from_index``), one feature at a time as its page is written, so
  memory never holds more than one feature's sample;
* the logit lens (§5.2) of every decoder direction at once (``features/logit_lens.py``'s ``logit_lens_all``,
  in chunks of directions, so memory is ``chunk × vocabulary`` floats plus k ids and values per feature).
  It needs the model's unembedding: the model is the one the index's activation store records (or
  ``--model``, whose weights must be the store's, as every other stage checks). Dictionaries at MLP-neuron
  hook points (``mlp.hook_post``) live in another space than the one the unembedding reads: no lens.

The output effect (Fig. 4 right) and the upstream circuit (Fig. 5) need forward passes per feature; they come
only from a ``saex case-study`` output folder, whose per-feature entries (and the circuit of its target
feature) replace the index-based panels of those features. A case study of another dictionary is refused.
Every panel left empty says why in the payload's ``not_computed`` (panel -> reason).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from saex.causal.case_study import decoder
from saex.dashboard.gather import ANALYSES as PANELS
from saex.dictionaries import load_dictionary
from saex.dictionaries.formats import is_dictionary, weights_file
from saex.dictionaries.sae import WEIGHTS
from saex.errors import SaexError
from saex.features.histogram import histogram_from_index
from saex.features.index import VOCAB_JSON, FeatureIndex
from saex.features.logit_lens import excluded_tokens, logit_lens_all, payload, unembedding
from saex.files import sha256_path
from saex.lm.loading import load_store_model
from saex.naming import hook_suffix
from saex.store.reader import ActivationStore

COMPUTED = ("histogram", "logit_lens")
"""What ``--analyses`` may name: the analyses ``saex dashboard`` computes itself."""
LOGIT_TOP = 20
"""Tokens at each end of the logit lens (as ``saex case-study --logit-top``'s default)."""
UNEMBED_OUTLIERS = "5x"
"""Tokens left out of the logit lens for their unembedding norm (``saex case-study``'s default rule)."""
CHUNK = 1024
"""Directions per logit-lens step: memory is CHUNK × vocabulary floats (200 MB for a 49k vocabulary)."""
CASE_STUDY_ONLY = "computed by saex case-study only (forward passes per feature); give --case-study"


def parse_analyses(names_or_text: list[str] | str | None) -> tuple[str, ...]:
    """``--analyses``: ``COMPUTED`` names (a list, or comma-separated text; empty for none)."""
    given = names_or_text.split(",") if isinstance(names_or_text, str) else names_or_text or []
    names = tuple(dict.fromkeys(p.strip() for p in given if p.strip()))
    for name in names:
        if name not in COMPUTED:
            extra = " (output_effect and upstream come from --case-study)" if name in PANELS else ""
            raise SaexError(
                f"unknown --analyses {name!r}; allowed: {', '.join(COMPUTED)}, comma-separated, or '' for none{extra}"
            )
    return names


def load_decoder(index: FeatureIndex, n: int) -> torch.Tensor:
    """The first ``n`` decoder rows ``[n, D]`` of the index's dictionary, refused unless its weights are the
    ones the index was built from (of a saex / SAELens folder only ``W_dec`` is read)."""
    from safetensors import safe_open

    folder = Path(index.meta.get("dictionary", {}).get("path", ""))
    if not folder.exists() or not is_dictionary(folder):
        raise SaexError(
            f"the logit lens needs the dictionary the index {index.path} was built from, but "
            f"{folder} is not there; leave the logit lens out with --analyses histogram"
        )
    weights = weights_file(folder)
    if sha256_path(weights) != index.meta["identity"]["weights_sha256"]:
        raise SaexError(
            f"the dictionary {folder} has changed since the index {index.path} was built from it; "
            "rebuild the index with saex features"
        )
    if weights.name != WEIGHTS:  # another library's file: read it whole
        return load_dictionary(folder).W_dec_FD[:n].detach().float()
    with safe_open(str(weights), framework="pt") as fh:
        return fh.get_slice("W_dec")[:n].float()


def load_unembedding(index: FeatureIndex, model: str | None):
    """(W_U [V, D], token decoder, model name) of the index's store's model, or of ``model`` (same weights)."""

    store = index.meta.get("store")
    if not store or not Path(store).is_dir():
        raise SaexError(
            f"the logit lens needs the model of the activation store {store}, which the index "
            f"{index.path} records but does not exist; leave the logit lens out with --analyses histogram"
        )
    manifest = ActivationStore(store).manifest["model"]
    try:
        lm = load_store_model(manifest, model)
    except SaexError as e:
        raise SaexError(
            f"the logit lens needs the store's model: {str(e).rstrip('.')}; give --model, or leave "
            "the logit lens out with --analyses histogram"
        ) from e
    return unembedding(lm.model), decoder(lm.tokenizer), lm.name


def read_case_study(folder: str | Path, index: FeatureIndex) -> tuple[dict[int, dict], str]:
    """Feature -> panels from a ``saex case-study`` output folder of this index's dictionary (histogram,
    output_effect, logit_lens per studied feature; the circuit as its target's ``upstream``)."""
    folder = Path(folder)
    result, config = folder / "case_study.json", folder / "config.json"
    if not result.is_file() or not config.is_file():
        raise SaexError(
            f"--case-study {folder} is not a saex case-study output folder (needs case_study.json and config.json)"
        )
    cfg = json.loads(config.read_text())
    ident = index.meta["identity"]
    recorded = (cfg.get("identity") or {}).get("dictionary")
    if recorded != ident["weights_sha256"]:
        raise SaexError(
            f"--case-study {folder} was run on the dictionary {(cfg.get('config') or {}).get('dict')} "
            f"(weights {str(recorded)[:12]}), not on this index's "
            f"{index.meta.get('dictionary', {}).get('path')} (weights {ident['weights_sha256'][:12]})"
        )
    data = json.loads(result.read_text())
    out: dict[int, dict] = {}
    for e in data.get("features") or []:
        if e.get("hook") not in (None, ident["hook"]):
            raise SaexError(
                f"--case-study {folder} studied the dictionary at {e['hook']}, but the index is at {ident['hook']}"
            )
        out.setdefault(int(e["feature"]), {}).update(
            {k: e[k] for k in ("histogram", "output_effect", "logit_lens") if e.get(k) is not None}
        )
    circuit = data.get("circuit")
    if circuit and circuit.get("hook") == ident["hook"]:
        out.setdefault(int(circuit["feature"]), {})["upstream"] = circuit
    return out, str(folder)


class Analyses:
    """Per-feature panels for ``Gatherer.payloads``: ``self(f) -> (panels, not_computed)``."""

    def __init__(
        self,
        index: FeatureIndex,
        features: list[int],
        names: tuple[str, ...] = COMPUTED,
        model: str | None = None,
        case_study: str | None = None,
        progress: bool = False,
        device: torch.device | str = "cpu",
    ):
        """``device``: where the logit lens's products run (the decoder rows and the unembedding go there)."""
        self.index, self.names, self.device = index, names, torch.device(device)
        self.has_text = (index.path / VOCAB_JSON).is_file()
        self.case = read_case_study(case_study, index)[0] if case_study else {}
        self.info: dict = {"analyses": list(names) or None, "case_study": case_study}
        self.lens_reason = None if "logit_lens" in names else "not requested (--analyses)"
        self.lens: tuple[torch.Tensor, ...] | None = None
        if "logit_lens" in names and features:
            if hook_suffix(index.meta.get("hook")) == "mlp.hook_post":
                self.lens_reason = (
                    f"the dictionary is at MLP neurons ({index.meta.get('hook')}), whose directions "
                    "are not in the residual stream that the unembedding reads"
                )
            else:
                self._logit_lens(features, model, progress)

    def _logit_lens(self, features: list[int], model: str | None, progress: bool) -> None:

        W_dec_FD = load_decoder(self.index, max(features) + 1)[torch.as_tensor(features)].to(self.device)
        W_U_VD, self.decode, name = load_unembedding(self.index, model)
        W_U_VD = W_U_VD.to(self.device)
        excluded = excluded_tokens(W_U_VD, UNEMBED_OUTLIERS)
        self.excluded = int(excluded.sum())
        parts = []
        bar = tqdm(total=len(features), desc="dashboard: logit lens", unit="feature", disable=not progress)
        for lo in range(0, len(features), CHUNK):
            parts.append(logit_lens_all(W_dec_FD[lo : lo + CHUNK], W_U_VD, LOGIT_TOP, excluded, chunk=256))
            bar.update(min(CHUNK, len(features) - lo))
        bar.close()
        top_v, top_i, bot_v, bot_i = (torch.cat(p) for p in zip(*parts))
        self.row = {f: i for i, f in enumerate(features)}
        self.lens = (top_v, top_i, bot_v, bot_i)
        self.info["logit_lens"] = (
            f"decoder rows · unembedding of {name}, top and bottom {LOGIT_TOP}, tokens above "
            f"{UNEMBED_OUTLIERS} the median unembedding norm left out ({self.excluded})"
        )

    def __call__(self, f: int) -> tuple[dict, dict]:

        panels: dict = {}
        if "histogram" in self.names:
            decode = None if self.has_text else (lambda i: f"[{i}]")
            panels["histogram"] = histogram_from_index(self.index, f, decode)
        if self.lens is not None:
            r = self.row[f]
            top_v, top_i, bot_v, bot_i = (t[r] for t in self.lens)
            panels["logit_lens"] = payload(top_v, top_i, bot_v, bot_i, self.decode, self.excluded, False)
        panels.update(self.case.get(f, {}))
        notes = {
            "histogram": "not requested (--analyses)",
            "logit_lens": self.lens_reason,
            "output_effect": CASE_STUDY_ONLY,
            "upstream": "computed by saex case-study --upstream only, for its target feature; give --case-study",
        }
        return panels, {k: v for k, v in notes.items() if panels.get(k) is None and v}
