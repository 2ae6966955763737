"""The stages: one module per ``saex`` subcommand, named after it.

Each module holds ``NAME`` (the subcommand), ``HELP`` (its one-line help), ``CONFIG`` (its config dataclass,
whose fields are its options: ``saex.config``) and ``run(cfg, progress) -> Path`` (what it writes, or for a
command that only prints, what it read); ``summary(out) -> str``, where present, is what the command prints
when it is done. The algorithms live in the library packages below (docs/architecture.md); ``saex.cli``
builds the command line from ``COMMANDS``, and ``saex reproduce`` runs the stages in-process.
"""

from __future__ import annotations

# The order of ``saex --help``: the data flow from corpus to report, then the tools.
COMMANDS = (
    "harvest",
    "calibrate",
    "train",
    "baselines",
    "eval",
    "features",
    "interpret",
    "ioi",
    "case_study",
    "steer",
    "dashboard",
    "export",
    "reproduce",
    "compare",
    "report",
    "mmcs",
    "convert",
    "store",
    "hooks",
)
