"""The feature dashboard (``saex dashboard``): a static site that opens from disk, one data file per feature.

``site.write_site`` writes the site from summary rows and per-feature payloads (``docs/dashboard.md``);
``gather`` builds them from a feature index and ``saex interpret`` outputs; ``saex.stages.dashboard`` is the
command.
"""
