"""``saex report``: rebuild the paper report of a ``saex reproduce`` run folder from what it holds
(``saex.report``: docs/report.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from saex.config import Config, opt
from saex.errors import SaexError
from saex.files import locked_output
from saex.report.render import build_report

NAME = "report"
HELP = "rebuild the paper report of a saex reproduce run folder from what it holds"


@dataclass
class ReportConfig(Config):
    """What ``saex report`` rebuilds."""

    run: str = opt(positional=True)
    """The run folder (--out of saex reproduce)."""


CONFIG = ReportConfig


@locked_output("saex report", folder=lambda cfg: Path(cfg.run) / "report")
def run(cfg: ReportConfig, progress: bool = True) -> Path:
    """Write report.html, report.md and results.json under ``<run>/report/``; returns that folder."""
    if not (Path(cfg.run) / "reproduce.json").exists():
        raise SaexError(f"{cfg.run} is not a saex reproduce run folder (it has no reproduce.json)")
    return build_report(Path(cfg.run))["html"].parent


def summary(out: Path) -> str:
    return f"report: {out / 'report.html'}  (Markdown: {out / 'report.md'}; numbers: {out / 'results.json'})"
