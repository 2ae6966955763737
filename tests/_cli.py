"""``saex.cli.main`` with its output captured, for the command-line tests."""

from __future__ import annotations

import contextlib
import io

from saex.cli import main


def run_cli(*args) -> tuple[int, str, str]:
    """Run ``saex ARGS...`` in-process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    return rc, out.getvalue(), err.getvalue()
