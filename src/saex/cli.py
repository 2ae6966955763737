"""The ``saex`` command: one subcommand per stage module (``saex.stages``), its options the fields of the
stage's config dataclass (``saex.config``).

User mistakes (a ``SaexError``) print one line on stderr and exit with status 2, without a traceback. A reader
that closes the output early (``saex store … | head``) ends the command quietly with status 141 (128 + SIGPIPE,
as a command killed by the broken pipe), without a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import select
import sys
import warnings
from types import ModuleType

from saex.config import add_arguments, from_namespace, load_config_file
from saex.distributed import teardown
from saex.errors import SaexError
from saex.stages import COMMANDS


def stage_modules() -> dict[str, ModuleType]:
    """Subcommand name → stage module, in ``COMMANDS`` order."""
    modules = [importlib.import_module(f"saex.stages.{name}") for name in COMMANDS]
    return {m.NAME: m for m in modules}


class Parser(argparse.ArgumentParser):
    """argparse, with a usage mistake (an unknown option, a value that does not parse) reported as every other
    error is: one line naming it, exit status 2, no usage block (``saex CMD --help`` shows that)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="saex", description="Sparse dictionary learning on language-model activations.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for name, stage in stage_modules().items():
        p = sub.add_parser(name, help=stage.HELP, description=stage.CONFIG.__doc__)
        add_arguments(p, stage.CONFIG)
        p.add_argument(
            "--config",
            dest="_config",
            metavar="FILE",
            help="a .json or .toml file of option values, or a saved manifest (run.json; its 'config' is "
            "used): the command line overrides it",
        )
        p.add_argument("--from", dest="_config", metavar="RUN_JSON", help="replay a saved run's manifest (as --config)")
        p.add_argument("--quiet", dest="_quiet", action="store_true", help="no progress output")
        p.set_defaults(_stage=stage)
    return parser


def run_command(args: argparse.Namespace) -> None:
    stage = args._stage
    base = load_config_file(stage.CONFIG, args._config) if args._config else {}
    out = stage.run(from_namespace(stage.CONFIG, args, base), progress=not args._quiet)
    # Under torchrun, one summary, from rank 0.
    if hasattr(stage, "summary") and os.environ.get("RANK", "0") == "0":
        print(stage.summary(out))


BROKEN_PIPE = 141
"""Exit status when stdout's reader went away: 128 + SIGPIPE, what a shell reports for a command the signal killed."""


def _stdout_closed() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll reports an error on its write end); True where that
    cannot be told (no ``poll``), False for output captured in memory."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return False
    if not hasattr(select, "poll"):
        return True
    poller = select.poll()
    poller.register(fd, select.POLLOUT)
    return any(event & select.POLLERR for _, event in poller.poll(0))


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's flush at exit does not raise BrokenPipeError again
    (the Python documentation's recipe, ``signal`` docs: "Note on SIGPIPE"). Output captured in memory (tests) has
    no descriptor and is left alone."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    # Tokenizer threads fight torch's two threads for the two cores, and fork warnings are noise here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        args, unknown = build_parser().parse_known_args(argv)
    except SystemExit as e:  # a usage error (its one line is printed) or --help: the status, from Python too
        return e.code if isinstance(e.code, int) else 2
    if unknown:  # named under the subcommand they were given to, as every other error
        print(f"saex {args.command}: error: unrecognized arguments: {' '.join(unknown)}", file=sys.stderr)
        return 2
    warnings.simplefilter("default")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        run_command(args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's flush at exit
    except SaexError as e:
        print(f"saex {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saex {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _stdout_closed():  # another pipe or socket: a real failure, with its traceback
            raise
        _silence_stdout()
        return BROKEN_PIPE
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    code = main()
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Under torchrun, interpreter shutdown can still abort a rank in C++ thread teardown (gloo / OpenMP:
        # "terminate called without an active exception") after every file is written and the process
        # group is destroyed; skip the finalisers so the exit status reports the work, not the teardown.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
