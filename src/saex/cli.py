"""The ``saex`` command: one subcommand per stage.

User mistakes (a ``SaexError``) print one line on stderr and exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

from saex.config import add_arguments, from_namespace
from saex.errors import SaexError


def _cmd_harvest(args) -> None:
    from saex.harvest import HarvestConfig, harvest
    from saex.store.summary import summarize

    cfg = from_namespace(HarvestConfig, args)
    out = harvest(cfg, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        print(summarize(out))


def _cmd_train(args) -> None:
    from saex.config import load_config_file
    from saex.train.config import TrainConfig
    from saex.train.trainer import summary, train

    base = {}
    for source in (args.config, args.from_run):
        if source:
            base |= load_config_file(TrainConfig, source)
    cfg = from_namespace(TrainConfig, args, base)
    out = train(cfg, progress=not args.quiet)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, one summary, from rank 0
        print(summary(out))


def _cmd_calibrate(args) -> None:
    from saex.train.calibrate import CalibrateConfig, calibrate, summary

    print(summary(calibrate(from_namespace(CalibrateConfig, args), progress=not args.quiet)))


def _cmd_baselines(args) -> None:
    from saex.baselines import BaselinesConfig, build_baselines

    out = build_baselines(from_namespace(BaselinesConfig, args), progress=not args.quiet)
    print(f"baselines in {out}")


def _cmd_eval(args) -> None:
    from saex.evaluate.run import EvalConfig, evaluate_dictionaries

    out = evaluate_dictionaries(from_namespace(EvalConfig, args), progress=not args.quiet)
    print((out / "comparison.md").read_text(), end="")
    print(f"results, comparison and plots in {out}")


def _cmd_features(args) -> None:
    from saex.features.build import FeaturesConfig, build_features

    out = build_features(from_namespace(FeaturesConfig, args), progress=not args.quiet)
    print(f"feature indexes in {out}")


def _cmd_interpret(args) -> None:
    from saex.interpret.run import InterpretConfig, interpret

    out = interpret(from_namespace(InterpretConfig, args), progress=not args.quiet)
    print((out / "comparison.md").read_text(), end="")
    print(f"scores, tables and plots in {out}")


def _cmd_ioi(args) -> None:
    from saex.causal.run import IOIConfig, run_ioi

    out = run_ioi(from_namespace(IOIConfig, args), progress=not args.quiet)
    print(f"IOI curves and plots in {out}")


def _cmd_reproduce(args) -> None:
    from saex.report.pipeline import ReproduceConfig, reproduce

    reproduce(from_namespace(ReproduceConfig, args), progress=not args.quiet)


def _cmd_dashboard(args) -> None:
    from saex.viz.dashboard.run import DashboardConfig, build_dashboard

    out = build_dashboard(from_namespace(DashboardConfig, args), progress=not args.quiet)
    print(f"dashboard in {out}: open {out / 'index.html'} in a browser")


def _cmd_case_study(args) -> None:
    from saex.causal.case_study import CaseStudyConfig, run_case_study

    out = run_case_study(from_namespace(CaseStudyConfig, args), progress=not args.quiet)
    print(f"case study in {out / 'case_study.json'} (figures beside it)")


def _cmd_report(args) -> None:
    from pathlib import Path

    from saex.report.render import build_report

    if not (Path(args.run) / "reproduce.json").exists():
        raise SaexError(f"{args.run} is not a saex reproduce run folder (it has no reproduce.json)")
    paths = build_report(Path(args.run))
    print(f"report: {paths['html']}  (Markdown: {paths['md']}; numbers: {paths['results']})")


def _cmd_mmcs(args) -> None:
    from saex.dictionaries.sae import SAE
    from saex.evaluate.mmcs import mmcs

    r = mmcs(SAE.load(args.reference).W_dec_FD, SAE.load(args.other).W_dec_FD, hungarian=not args.no_hungarian)
    print(json.dumps(r, indent=1) if args.json else "  ".join(f"{k} {v:.4g}" for k, v in r.items()))


def _cmd_store(args) -> None:
    from saex.store.summary import summarize

    print(summarize(args.path, verify=args.verify, as_json=args.json))


def _cmd_hooks(args) -> None:
    from saex.lm.hooks import HookedLM
    from saex.lm.loading import load_model

    hooked = HookedLM(load_model(args.model).model)
    rows = [hooked.resolve(n) for n in hooked.hook_names()]
    if args.json:
        print(json.dumps({p.name: p.describe() for p in rows}, indent=1))
        return
    for p in rows:
        print(f"{p.name:<28} {p.capture:>6} of {p.module:<40} width {p.width}")


def build_parser() -> argparse.ArgumentParser:
    from saex.harvest import HarvestConfig

    parser = argparse.ArgumentParser(
        prog="saex", description="Sparse dictionary learning on language-model activations."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from saex.baselines import BaselinesConfig
    from saex.causal.run import IOIConfig
    from saex.evaluate.run import EvalConfig
    from saex.features.build import FeaturesConfig
    from saex.interpret.run import InterpretConfig
    from saex.report.pipeline import ReproduceConfig
    from saex.train.config import TrainConfig

    def stage(name: str, help_text: str, cls: type, func) -> argparse.ArgumentParser:
        """A subcommand whose options are the fields of a config dataclass, plus --quiet."""
        p = sub.add_parser(name, help=help_text, description=cls.__doc__)
        add_arguments(p, cls)
        p.add_argument("--quiet", action="store_true", help="no progress output")
        p.set_defaults(func=func)
        return p

    stage("harvest", "run a model over a corpus and store activations at hook points", HarvestConfig, _cmd_harvest)
    p = stage("train", "train a sweep of sparse autoencoders on an activation store", TrainConfig, _cmd_train)
    p.add_argument("--config", help="a .json or .toml file of option values (the command line overrides it)")
    p.add_argument(
        "--from",
        dest="from_run",
        metavar="RUN_JSON",
        help="replay a saved run: its run.json supplies every option (the command line overrides it)",
    )
    from saex.train.calibrate import CalibrateConfig

    stage(
        "calibrate",
        "choose the L1 coefficients α that give target L0s on a store's hook (a short sweep)",
        CalibrateConfig,
        _cmd_calibrate,
    )
    stage(
        "baselines",
        "build baseline dictionaries (neurons, random, PCA, ICA, top-k) from a store",
        BaselinesConfig,
        _cmd_baselines,
    )
    stage("eval", "FVU, L0, dead features, spliced CE/KL and MMCS of dictionaries, with plots", EvalConfig, _cmd_eval)
    stage(
        "features",
        "index each feature's top, random and non-activating fragments over held-out text",
        FeaturesConfig,
        _cmd_features,
    )
    stage(
        "interpret",
        "automated interpretability: explain, simulate and score features (offline or with an LLM)",
        InterpretConfig,
        _cmd_interpret,
    )
    stage(
        "ioi",
        "patch feature subsets on indirect object identification: KL against features patched and edit size",
        IOIConfig,
        _cmd_ioi,
    )
    stage(
        "reproduce",
        "the paper's whole study, resumable: harvest, sweeps, baselines, eval, autointerp, IOI, "
        "case studies, dashboard and the report",
        ReproduceConfig,
        _cmd_reproduce,
    )

    from saex.viz.dashboard.run import DashboardConfig

    stage(
        "dashboard",
        "write a static feature dashboard (opens from disk): examples, explanations, scores, analyses",
        DashboardConfig,
        _cmd_dashboard,
    )

    from saex.causal.case_study import CaseStudyConfig

    stage(
        "case-study",
        "per-feature case studies: prompt search, token histograms, logit lens, ablation effects, upstream circuits",
        CaseStudyConfig,
        _cmd_case_study,
    )

    p = sub.add_parser("report", help="rebuild the paper report of a saex reproduce run folder from what it holds")
    p.add_argument("run", help="the run folder (--out of saex reproduce)")
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("mmcs", help="mean max cosine similarity of one dictionary's features against another's")
    p.add_argument("reference", help="dictionary folder whose atoms are matched against")
    p.add_argument("other", help="dictionary folder whose atoms are each matched")
    p.add_argument("--no-hungarian", action="store_true", help="skip the one-to-one (Hungarian) matching")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_mmcs)

    p = sub.add_parser("store", help="summarise an activation store (and verify its checksums)")
    p.add_argument("path", help="folder of the store")
    p.add_argument("--verify", action="store_true", help="check every shard's sha256 against the manifest")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=_cmd_store)

    p = sub.add_parser("hooks", help="list a model's hook points and the modules behind them")
    p.add_argument("--model", default="smollm2-135m", help="embedded model, local folder or hub id")
    p.add_argument("--json", action="store_true", help="print as JSON")
    p.set_defaults(func=_cmd_hooks)
    return parser


def main(argv: list[str] | None = None) -> int:
    # Tokenizer threads fight torch's two threads for the two cores, and fork warnings are noise here.
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        hf_logging.set_verbosity_error()
        args.func(args)
    except SaexError as e:
        print(f"saex {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"saex {args.command}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        from saex.distributed import teardown

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
