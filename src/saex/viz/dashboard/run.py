"""``saex dashboard``: a static, self-contained feature dashboard of one dictionary (docs/dashboard.md).

Reads one feature index (``saex features``) and, when given, ``saex interpret`` outputs, and writes a site
that opens from disk: an index of every feature (search; sort by id, density, max activation, score,
explanation) and one page per feature with its examples, explanation and scores, and the analysis panels
(histogram, output effect, logit lens, upstream tree) where they were computed (paper §5 case studies).
A rebuild into the same folder rewrites only the feature files whose content changed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saex.errors import SaexError
from saex.features.index import FeatureIndex
from saex.viz.dashboard.gather import Gatherer, check_analyses, find_index, load_interpretations
from saex.viz.dashboard.site import write_site


@dataclass
class DashboardConfig:
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
    examples: int = 20
    """Examples shown in the top-activations section and in the random section."""
    decile_examples: int = 2
    """Examples shown for each of the 10 activation deciles of the random activating sample."""
    limit: int | None = None
    """Only the first this many features (default: all)."""


def build_dashboard(cfg: DashboardConfig, progress: bool = True, analyses: dict[int, dict] | None = None) -> Path:
    """Write the site; ``analyses`` maps a feature id to its histogram / logit_lens / output_effect /
    upstream payloads (docs/dashboard.md), shown on its page (the others say "not computed")."""
    for name in ("examples", "decile_examples"):
        if getattr(cfg, name) < 0:
            raise SaexError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if cfg.limit is not None and cfg.limit <= 0:
        raise SaexError(f"--limit must be positive, got {cfg.limit}")
    check_analyses(analyses or {})
    if not Path(cfg.features).exists():
        raise SaexError(f"--features path {cfg.features} does not exist")
    index = FeatureIndex(find_index(cfg.features, cfg.dict))
    interp = load_interpretations(cfg.interpret, index.meta["identity"]) if cfg.interpret else None
    g = Gatherer(index, interp, examples=cfg.examples, decile_examples=cfg.decile_examples, limit=cfg.limit)
    out = write_site(cfg.out, g.meta(), g.rows(), g.payloads(analyses), progress=progress)
    return out
