"""``saex reproduce``'s machinery: the plan (presets), the stage graph and the resumable pipeline
(docs/report.md, docs/architecture.md). The command itself is ``saex.stages.reproduce``."""
