"""``saex dashboard``: a static, self-contained feature dashboard of one dictionary (docs/dashboard.md).

Reads one feature index (``saex features``) and, when given, ``saex interpret`` outputs, and writes a site
that opens from disk: an index of every feature (search; sort by id, density, max activation, score,
explanation) and one page per feature with its examples, explanation and scores, and the analysis panels
(histogram, output effect, logit lens, upstream tree; paper §5 case studies): the histogram and the logit lens
are computed for every feature (``analyses.py``), the output effect and the circuit come from a
``saex case-study`` folder.
A rebuild into the same folder rewrites only the feature files whose content changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saex.config import opt
from saex.dashboard.analyses import Analyses, parse_analyses
from saex.dashboard.gather import Gatherer, check_analyses, find_index, load_interpretations
from saex.dashboard.site import MARKER, write_site
from saex.devices import DeviceOptions, placement
from saex.errors import SaexError
from saex.features.index import FeatureIndex
from saex.files import check_output_folder, locked_output

NAME = "dashboard"
HELP = "write a static feature dashboard (opens from disk): examples, explanations, scores, analyses"


@dataclass
class DashboardConfig(DeviceOptions):
    """What ``saex dashboard`` shows; the site opens from disk (OUT/index.html) with no server."""

    features: str = "runs/features"
    """Feature index folder (saex features output), or one index folder."""
    dict: str | None = None
    """The dictionary to show: its index folder name or path, or its recorded name (optional when the
    features folder holds one index)."""
    interpret: str | None = None
    """saex interpret output folder: the explanation and scores of every backend and preset found there
    (default: the dashboard shows none)."""
    out: str = "runs/dashboard"
    """Output folder of the site (index.html, feature.html, static/, data/)."""
    examples: int = opt(20, ge=0)
    """Examples shown in the top-activations section and in the random section."""
    decile_examples: int = opt(2, ge=0)
    """Examples shown for each of the 10 activation deciles of the random activating sample."""
    limit: int | None = opt(None, gt=0)
    """Only the first this many features (default: all)."""
    analyses: list[str] = opt(["histogram", "logit_lens"])
    """Analyses computed for every feature shown: histogram (token histogram of the index's
    random activating sample), logit_lens (decoder direction · unembedding; needs the store's model; none at
    MLP-neuron hooks); "" for none. Output effects and circuits come only from --case-study."""
    case_study: str | None = None
    """saex case-study output folder of this dictionary: its per-feature histogram, output effect and logit
    lens, and its circuit (as the target feature's upstream tree), replace the computed panels."""
    model: str | None = None
    """Model whose unembedding the logit lens uses (default: the store's; its weights must be the store's)."""


CONFIG = DashboardConfig


def summary(out: Path) -> str:
    return f"dashboard in {out}: open {out / 'index.html'} in a browser"


@locked_output("saex dashboard")
def run(cfg: DashboardConfig, progress: bool = True, analyses: dict[int, dict] | None = None) -> Path:
    """Write the site. Every feature shown gets the panels of ``cfg.analyses`` (computed) and of
    ``cfg.case_study``; ``analyses`` maps a feature id to histogram / logit_lens / output_effect / upstream
    payloads (docs/dashboard.md) that replace those. An empty panel says "not computed" and why."""
    device = placement(cfg).device  # the logit lens runs there (it runs no model: the unembedding only)
    check_analyses(analyses or {})
    names = parse_analyses(cfg.analyses)
    if cfg.case_study is not None and not Path(cfg.case_study).is_dir():
        raise SaexError(f"--case-study folder {cfg.case_study} does not exist")
    if not Path(cfg.features).exists():
        raise SaexError(f"--features path {cfg.features} does not exist")
    check_output_folder(Path(cfg.out), MARKER, "saex dashboard")  # before the model loads
    index = FeatureIndex(find_index(cfg.features, cfg.dict))
    interp = load_interpretations(cfg.interpret, index.meta["identity"]) if cfg.interpret else None
    g = Gatherer(index, interp, examples=cfg.examples, decile_examples=cfg.decile_examples, limit=cfg.limit)
    computed = Analyses(index, g.features, names, cfg.model, cfg.case_study, progress, device)
    meta = g.meta() | {k: v for k, v in computed.info.items() if v is not None}
    out = write_site(cfg.out, meta, g.rows(), g.payloads(analyses, computed), progress=progress)
    return out
