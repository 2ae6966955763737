"""``saex export neuronpedia``: write one dictionary's features (from its ``saex features`` index) as a
Neuronpedia export, ready to upload as a source (``saex.dashboard.neuronpedia``)."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import saex
from saex.config import Config, opt
from saex.dashboard.gather import find_index
from saex.dashboard.neuronpedia import Source, export, source_id
from saex.errors import SaexError
from saex.features.index import FeatureIndex
from saex.files import check_output_folder, locked_output, write_json_atomic

NAME = "export"
HELP = "write a dictionary's features for another tool: a Neuronpedia export (saex export neuronpedia)"
MARKER = "export.json"


@dataclass
class ExportConfig(Config):
    """What ``saex export`` writes, and the Neuronpedia source it describes."""

    to: Literal["neuronpedia"] = opt(positional=True)
    """The format: neuronpedia (its export layout: release, model, source set, source, feature and activation
    batches)."""
    source_set: str = opt(nonempty=True)
    """Neuronpedia source set id, without the layer (e.g. saex-res-2k): the source is <layer>-<source-set>."""
    features: str = "runs/features"
    """Feature index folder (saex features output), or one index folder."""
    dict: str | None = None
    """The dictionary: its index folder name or path (optional when the features folder holds one index)."""
    out: str = "runs/neuronpedia"
    """Output folder; the source is written to OUT/<model-id>/<layer>-<source-set>/."""
    model_id: str | None = None
    """Neuronpedia's model id (default: the name of the model the index's store was harvested from)."""
    description: str = ""
    """Source set description shown on Neuronpedia (default: the hook point and width)."""
    creator: str = "saex"
    """Creator name recorded in the release and source set."""
    release: str = "saex"
    """Release id (alphanumeric and dashes)."""
    release_title: str = "Sparse dictionaries trained with saex"
    """Release title."""
    url: str = ""
    """URL of the paper or release."""
    hf_repo_id: str | None = None
    """Hugging Face repository holding the weights (owner/name), if published."""
    hf_folder_id: str | None = None
    """Folder of the weights in that repository."""
    limit: int | None = opt(None, gt=0)
    """Only the first this many features (default: all)."""
    logit_lens: bool = True
    """Positive / negative logits and the logit histogram from the model's unembedding (--no-logit-lens: empty;
    always empty at MLP-neuron hooks)."""
    model: str | None = None
    """Model whose unembedding the logit lens uses (default: the store's; its weights must be the store's)."""
    batch: int = opt(128, gt=0)
    """Features per batch file."""


CONFIG = ExportConfig


@locked_output("saex export")
def run(cfg: ExportConfig, progress: bool = True) -> Path:
    for flag, value in (("--source-set", cfg.source_set), ("--release", cfg.release)):
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9-]*", value):
            raise SaexError(f"{flag} {value!r}: Neuronpedia ids are letters, digits and dashes")
    index = FeatureIndex(find_index(cfg.features, cfg.dict))
    out = Path(cfg.out)
    check_output_folder(out, MARKER, "export")
    n = index.n_features if cfg.limit is None else min(cfg.limit, index.n_features)
    model_id = cfg.model_id or str(index.meta.get("model") or "model").split("/")[-1]
    src = Source(
        model_id=model_id,
        source_set=cfg.source_set,
        description=cfg.description or f"{index.meta.get('hook')} - {index.n_features} features",
        creator=cfg.creator,
        release=cfg.release,
        release_title=cfg.release_title,
        url=cfg.url,
        hf_repo_id=cfg.hf_repo_id,
        hf_folder_id=cfg.hf_folder_id,
    )
    write_json_atomic(out / MARKER, {"saex_version": saex.__version__, "config": asdict(cfg), "index": str(index.path)})
    folder = export(index, out, src, list(range(n)), cfg.model, cfg.logit_lens, cfg.batch, progress)
    print(f"neuronpedia export of {n} features in {folder} (source {source_id(index, cfg.source_set)} of {model_id})")
    return folder
