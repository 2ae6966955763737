"""Time of the IOI greedy feature search at one layer with a 4x dictionary, and what the prefix cache and
batching buy against a naive loop, measured in one run on the CPU.

The experiment (Cunningham et al. 2023 §4, ``saex.causal``): on the IOI prompts, patch a subset of a
dictionary's features at one hook point (their codes replaced by the counterfactual run's, the
reconstruction error kept) and measure KL(patched ‖ target) at the final position; the greedy search
(ACDC-style) un-patches features one at a time for 50 thresholds τ. Its cost is the number of candidate
evaluations times the cost of one. What is timed, per candidate evaluation (one candidate = the all-active
mask with one feature removed, cycling through the active features; KL and edit magnitude computed):

``naive``           the reference, the paper's loop: the patched activation (``PatchingSetup.patched``, from
                    the cached codes: no re-encoding is charged to it) spliced into a plain full-model forward
                    of the base prompts with ``HookedLM.splice``, logits at every position, then log-softmax
                    and KL at the final position; one candidate per forward.
``prefix``          ``PatchingSetup.evaluate(masks, batch=1)``: the blocks before the hook are never rerun
                    (cached activations and block kwargs), only the blocks after it, and the final norm and
                    LM head only at the final position; one candidate per suffix forward.
``prefix_batched``  the same with ``batch=8``: eight candidates stacked into one suffix forward.

Ratios: naive / prefix and naive / prefix_batched, time per evaluation (speed-ups), as ratio of medians and
median of per-round paired ratios. The KL of every naive candidate is checked against the prefix path's.

Also measured once each (not ratios): the number of active features (features whose code differs between
the base and counterfactual runs somewhere; the rest are dropped without an evaluation), the prefix cache's
set-up, ``attribution_scores``, ``validate`` (Spearman of estimated vs exact single-feature effects),
``quick_curve`` (exact KL of the nested prefixes of the attribution order), and the exact ``greedy_prune``
with the default τ grid (``logspace(-5, 0, 50)``) on ``--greedy-prompts`` prompts, with its number of
evaluations. The exact greedy costs about (active features) x (evaluations per feature) x (time per
evaluation); when the prediction for the requested prompt count exceeds ``--max-greedy-s``, the benchmark
runs it on fewer prompts (the first n of the same prompt list: 25, 10, 5, 2, 1), and if the run still hits
the budget it stops at the end of a τ step (or inside one) and records exactly which τ values were
completed. Everything that is not measured (the prediction for the requested configuration) is stored
under keys named ``extrapolated`` / ``predicted``.

The dictionary: ``--dict FOLDER``, or a real one made here (harvest ``--harvest-tokens`` of
``blocks.{L}.hook_resid_post`` from the default corpus, train a tied_l1 SAE with R = 4, alpha 8.6e-4,
mean_norm scaling, ``--train-steps`` steps of 1024 inputs) in a temp folder, or under ``--work`` where it is reused by
later runs. Its time is printed and saved but is no part of any ratio.

    .venv/bin/python benchmarks/ioi.py --threads 1                     # 50 prompts; ~20 min with the dictionary
    .venv/bin/python benchmarks/ioi.py --quick --work runs/bench/ioi   # 10 prompts, small dictionary, ~4 min
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from _common import load_avg, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from saex.causal.attribution import attribution_scores, quick_curve, validate
from saex.causal.greedy import TAUS, greedy_prune
from saex.causal.ioi import make_prompts, task_performance
from saex.causal.patching import PatchingSetup
from saex.dictionaries import load_dictionary
from saex.dictionaries.folders import find_dictionaries
from saex.files import write_json_atomic
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from saex.stages.harvest import HarvestConfig
from saex.stages.harvest import run as harvest
from saex.train.config import TrainConfig
from saex.train.trainer import train

RESULTS = Path(__file__).resolve().parent / "results" / "ioi.json"
METHODS = ("naive", "prefix", "prefix_batched")
LADDER = (25, 10, 5, 2, 1)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="default")
    p.add_argument("--layer", type=int, default=16, help="hook point blocks.{L}.hook_resid_post")
    p.add_argument("--dict", default=None, help="dictionary folder to use (default: make one)")
    p.add_argument(
        "--work",
        default=None,
        help="folder for the harvested store and the trained dictionary, reused when it already holds "
        "them (default: a temp folder, deleted at the end)",
    )
    p.add_argument("--harvest-tokens", type=int, default=None, help="default 100,000; quick 32,768")
    p.add_argument(
        "--train-steps", type=int, default=None, help="optimiser steps of 1024 inputs; default 1000, quick 200"
    )
    p.add_argument("--ratio", type=float, default=4.0)
    p.add_argument("--alpha", type=float, default=8.6e-4)
    p.add_argument("--prompts", type=int, default=None, help="IOI prompts for the timing (default 50; quick 10)")
    p.add_argument(
        "--greedy-prompts", type=int, default=None, help="prompts for the exact greedy (default 50; quick 10)"
    )
    p.add_argument(
        "--max-greedy-s", type=float, default=None, help="budget of the exact greedy (default 900; quick 120)"
    )
    p.add_argument(
        "--evals-per-feature",
        type=float,
        default=10.0,
        help="prior for planning the greedy: evaluations per active feature over the default τ grid "
        "(10.1 measured on SmolLM2 layer 16, 1 prompt; see benchmarks/README.md)",
    )
    p.add_argument("--batch", type=int, default=8, help="candidates per suffix forward for prefix_batched")
    p.add_argument("--naive-per-round", type=int, default=None, help="naive candidates per round (default 4; quick 2)")
    p.add_argument(
        "--per-round",
        type=int,
        default=None,
        help="prefix / prefix_batched candidates per round, a multiple of --batch (default 8)",
    )
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
    p.add_argument("--validate-n", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true", help="10 prompts, a smaller dictionary, 2 rounds")
    a = p.parse_args(argv)
    quick = {
        "harvest_tokens": 32_768,
        "train_steps": 200,
        "prompts": 10,
        "greedy_prompts": 10,
        "max_greedy_s": 120.0,
        "naive_per_round": 2,
        "per_round": 8,
        "repeats": 2,
    }
    full = {
        "harvest_tokens": 100_000,
        "train_steps": 1000,
        "prompts": 50,
        "greedy_prompts": 50,
        "max_greedy_s": 900.0,
        "naive_per_round": 4,
        "per_round": 8,
        "repeats": 5,
    }
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.per_round % a.batch:
        p.error(f"--per-round {a.per_round} must be a multiple of --batch {a.batch}")
    a.json = a.json or str(RESULTS.with_name("ioi-quick.json") if a.quick else RESULTS)
    a.hook = f"blocks.{a.layer}.hook_resid_post"
    return a


# --- the dictionary -------------------------------------------------------------------------------------


def get_dictionary(a) -> tuple[object, dict]:
    if a.dict:
        d = load_dictionary(a.dict)
        return d, {"source": "given", "folder": a.dict, "d_dict": d.d_dict, "metadata": d.metadata}
    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="saex-ioi-bench-"))
    info = {"source": "made", "work": str(work), "temporary": not a.work}
    try:
        t0 = time.perf_counter()
        harvest(
            HarvestConfig(
                out=str(work / "acts"),
                model=a.model,
                corpus=a.corpus,
                hooks=a.hook,
                tokens=a.harvest_tokens,
                heldout_tokens=0,
            ),
            progress=False,
        )
        t1 = time.perf_counter()
        out = train(
            TrainConfig(
                acts=str(work / "acts"),
                hook=a.hook,
                out=str(work / "dicts"),
                arch="tied_l1",
                ratio=f"{a.ratio:g}",
                alpha=f"{a.alpha:g}",
                normalize="mean_norm",
                steps=a.train_steps,
                eval_every=0,
                seed=a.seed,
            ),
            progress=False,
        )
        t2 = time.perf_counter()
        ((name, folder),) = find_dictionaries(str(out)).items()
        d = load_dictionary(folder)
    finally:
        if not a.work:
            shutil.rmtree(work, ignore_errors=True)
    info |= {
        "harvest_s": t1 - t0,
        "train_s": t2 - t1,
        "harvest_tokens": a.harvest_tokens,
        "train_steps": a.train_steps,
        "name": name,
        "d_dict": d.d_dict,
        "note": "with --work, a store or dictionary already there is reused (then these times are short)",
    }
    print(
        f"dictionary {name}: harvest {info['harvest_s']:.0f} s, train {info['train_s']:.0f} s "
        f"({'temp folder, deleted' if not a.work else work})",
        flush=True,
    )
    return d, info


# --- the three ways of evaluating candidates --------------------------------------------------------------


class Candidates:
    """All-active masks with one active feature removed, cycling through the active features."""

    def __init__(self, setup: PatchingSetup):
        self.setup, self.i = setup, 0

    def take(self, n: int) -> tuple[torch.Tensor, list[int]]:
        active = self.setup.active
        idx = [(self.i + k) % len(active) for k in range(n)]
        self.i += n
        masks = torch.zeros(n, self.setup.n_features)
        masks[:, active] = 1.0
        masks[torch.arange(n), active[idx]] = 0.0
        return masks, idx


@torch.inference_mode()
def naive_eval(setup: PatchingSetup, hooked: HookedLM, hook: str, mask_1F: torch.Tensor) -> tuple[float, float]:
    """The paper's loop: one full forward of the base prompts per candidate, the patched activation spliced in."""
    x_NTD = setup.patched(mask_1F)[0]
    with hooked.splice(hook, lambda act: x_NTD):
        logits = hooked.model(input_ids=setup.prompts.base_NT, use_cache=False).logits
    last = logits[torch.arange(setup.N), setup.last_N].float()
    logp = F.log_softmax(last, -1)
    kl = (logp.exp() * (logp - setup.logp_target_NV)).sum(-1).mean()
    return float(kl), float(setup.edit_magnitude(mask_1F)[0])


def time_methods(a, setup: PatchingSetup, hooked: HookedLM) -> dict:
    counts = {"naive": a.naive_per_round, "prefix": a.per_round, "prefix_batched": a.per_round}
    cands = {m: Candidates(setup) for m in METHODS}
    kls: dict[str, dict[int, float]] = {m: {} for m in METHODS}

    def run(m: str, n: int) -> float:
        masks, idx = cands[m].take(n)
        t = time.perf_counter()
        if m == "naive":
            out = [naive_eval(setup, hooked, a.hook, masks[k : k + 1])[0] for k in range(n)]
        else:
            out = setup.evaluate(masks, batch=1 if m == "prefix" else a.batch)[0].tolist()
        dt = time.perf_counter() - t
        for k, v in zip(idx, out):
            kls[m].setdefault(k, v)
        return dt / n

    for m in METHODS:  # warm-up: one call each
        run(m, 1 if m != "prefix_batched" else a.batch)
    per_eval: dict[str, list[float]] = {m: [] for m in METHODS}
    for r in range(a.repeats):
        order = list(METHODS[r % 3 :] + METHODS[: r % 3])
        for m in order:
            per_eval[m].append(run(m, counts[m]))
        print(
            f"round {r + 1}/{a.repeats}: " + "  ".join(f"{m} {per_eval[m][-1]:.3f} s/eval" for m in METHODS),
            file=sys.stderr,
            flush=True,
        )
    med = {m: statistics.median(v) for m, v in per_eval.items()}

    def speedup(fast: str) -> dict:
        paired = [n / f for n, f in zip(per_eval["naive"], per_eval[fast])]
        return {
            "ratio_of_medians": med["naive"] / med[fast],
            "median_paired": statistics.median(paired),
            "ratio_of_best": min(per_eval["naive"]) / min(per_eval[fast]),
            "paired": paired,
        }

    common = sorted(set(kls["naive"]) & set(kls["prefix"]) & set(kls["prefix_batched"]))
    diff = max(
        (max(abs(kls["naive"][k] - kls["prefix"][k]), abs(kls["naive"][k] - kls["prefix_batched"][k])) for k in common),
        default=float("nan"),
    )
    return {
        "per_round": counts,
        "seconds_per_eval": per_eval,
        "median_s_per_eval": med,
        "speedups": {"naive_vs_prefix": speedup("prefix"), "naive_vs_prefix_batched": speedup("prefix_batched")},
        "kl_check": {
            "candidates_compared": len(common),
            "max_abs_kl_diff": diff,
            "kl_range": [min(kls["naive"].values()), max(kls["naive"].values())],
        },
    }


# --- the exact greedy, within a budget ------------------------------------------------------------------


class _OverBudget(Exception):
    pass


class _Taus(list):
    """The τ grid, iterated by greedy_prune: records the wall time and evaluations after each τ step and stops
    yielding once the budget is spent (greedy_prune then returns the records of the completed steps)."""

    def __init__(self, taus, clock):
        super().__init__(float(t) for t in taus)
        self.clock, self.steps, self.stopped_early = clock, [], False

    def __iter__(self):
        for tau in list.__iter__(self):
            if self.clock.over():
                self.stopped_early = True
                return
            yield tau
            self.steps.append({"tau": tau, "evaluations": self.clock.evaluations, "elapsed_s": self.clock.elapsed()})


class _Clock:
    def __init__(self, budget_s: float, hard_s: float):
        self.t0, self.budget_s, self.hard_s, self.evaluations, self.calls = time.perf_counter(), budget_s, hard_s, 1, 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def over(self) -> bool:
        return self.elapsed() > self.budget_s

    def on_eval(self, n: int) -> None:
        self.evaluations += n
        self.calls += 1
        if self.elapsed() > self.hard_s:
            raise _OverBudget


def plan_greedy(a, setup: PatchingSetup, med: dict) -> tuple[int, list[dict]]:
    """The largest prompt count (requested, then the ladder) whose predicted exact-greedy time fits the budget.

    Prediction (not a measurement): active features among the first n prompts x --evals-per-feature x time per
    evaluation, scaled linearly (n / --prompts) from the timing phase's medians, as 1/4 prefix + 3/4
    prefix_batched (the greedy's batch shrinks to 1 after every drop: about a quarter of its evaluations are
    single ones)."""
    t_eval = 0.25 * med["prefix"] + 0.75 * med["prefix_batched"]
    options = [a.greedy_prompts] + [n for n in LADDER if n < a.greedy_prompts]
    plan = []
    for n in options:
        if n <= setup.N:
            n_active = int((setup.delta_NTF[:n].abs().amax((0, 1)) > 0).sum())
        else:
            n_active = None
        t = t_eval * n / setup.N
        pred = n_active * a.evals_per_feature * t if n_active is not None else None
        plan.append({"prompts": n, "n_active": n_active, "predicted_s_per_eval": t, "predicted_greedy_s": pred})
        if pred is None or pred <= a.max_greedy_s:
            return n, plan
    return options[-1], plan


def run_greedy(a, hooked: HookedLM, lm, d, n: int, setup_main: PatchingSetup) -> dict:
    t = time.perf_counter()
    setup = (
        setup_main
        if n == setup_main.N
        else PatchingSetup(hooked, a.hook, make_prompts(lm.tokenizer, n=n, seed=a.seed), d)
    )
    setup_s = time.perf_counter() - t
    # soft budget: no new τ step after it; hard budget: abort inside a step (no records then)
    clock = _Clock(a.max_greedy_s, 1.25 * a.max_greedy_s)
    taus = _Taus(TAUS, clock)
    print(
        f"greedy: exact greedy_prune on {n} prompts, {len(taus)} τ values, {len(setup.active)} active features, "
        f"budget {a.max_greedy_s:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    out = {
        "prompts": n,
        "setup_s": setup_s,
        "n_active": int(len(setup.active)),
        "n_features": setup.n_features,
        "taus_requested": len(taus),
        "budget_s": a.max_greedy_s,
        "hard_budget_s": clock.hard_s,
    }
    try:
        res = greedy_prune(setup, taus=taus, seed=a.seed, max_batch=a.batch, on_eval=clock.on_eval)
    except _OverBudget:
        out |= {
            "status": "aborted inside a τ step at the hard budget",
            "wall_s": clock.elapsed(),
            "evaluations": clock.evaluations,
            "suffix_calls": clock.calls,
            "taus_completed": len(taus.steps),
            "steps": taus.steps,
        }
        return out
    done = len(taus.steps)
    out |= {
        "status": "complete" if done == len(taus) else f"stopped at the budget after {done} of {len(taus)} τ steps",
        "wall_s": clock.elapsed(),
        "evaluations": res["evaluations"],
        "suffix_calls": clock.calls,
        "taus_completed": done,
        "tau_range_measured": [taus[0], taus[done - 1]] if done else None,
        ("evaluations_per_active_feature" if done == len(taus) else "evaluations_per_active_feature_partial"): (
            res["evaluations"] - 1
        )
        / max(1, len(setup.active)),
        "s_per_eval": clock.elapsed() / res["evaluations"],
        "steps": taus.steps,
        "records": res["records"],
    }
    return out


# --- main -----------------------------------------------------------------------------------------------


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    t_start = time.perf_counter()
    load_before = load_avg()
    d, dict_info = get_dictionary(a)
    lm = load_model(a.model)
    lm.model.eval()
    hooked = HookedLM(lm.model)
    prompts = make_prompts(lm.tokenizer, n=a.prompts, seed=a.seed)
    perf = task_performance(lm.model, prompts)
    print(
        f"IOI task, {prompts.n} prompts: mean logit diff {perf['mean_logit_diff']:.2f}, "
        f"accuracy {perf['accuracy']:.2f}",
        flush=True,
    )
    t = time.perf_counter()
    setup = PatchingSetup(hooked, a.hook, prompts, d)
    setup_s = time.perf_counter() - t
    print(f"prefix cache set-up {setup_s:.1f} s; active features {len(setup.active)} of {setup.n_features}", flush=True)

    timing = time_methods(a, setup, hooked)

    t = time.perf_counter()
    scores = attribution_scores(setup)
    attribution_s = time.perf_counter() - t
    t = time.perf_counter()
    val = validate(setup, scores, n=a.validate_n, seed=a.seed, batch=a.batch)
    validate_s = time.perf_counter() - t
    t = time.perf_counter()
    curve = quick_curve(setup, scores, batch=a.batch)
    curve_s = time.perf_counter() - t
    print(
        f"attribution {attribution_s:.1f} s; validate {validate_s:.1f} s (Spearman {val['spearman']:.3f}, "
        f"{len(val['features'])} features); quick_curve {curve_s:.1f} s ({len(curve['records'])} prefixes)",
        flush=True,
    )

    n_g, plan = plan_greedy(a, setup, timing["median_s_per_eval"])
    greedy = run_greedy(a, hooked, lm, d, n_g, setup)
    greedy["plan"] = plan
    greedy["requested_prompts"] = a.greedy_prompts
    if (
        greedy.get("evaluations_per_active_feature") is not None
        and greedy["status"] == "complete"
        and n_g != a.greedy_prompts
        and plan[0]["n_active"] is not None
    ):
        # labelled extrapolation to the requested prompt count, from this run's evaluations per active feature
        req = plan[0]
        evals = 1 + greedy["evaluations_per_active_feature"] * req["n_active"]
        greedy["extrapolated_to_requested"] = {
            "prompts": a.greedy_prompts,
            "n_active": req["n_active"],
            "evaluations": evals,
            "s_per_eval": req["predicted_s_per_eval"],
            "wall_s": evals * req["predicted_s_per_eval"],
            "how": "NOT MEASURED: evaluations per active feature from the run above x active features on the "
            "requested prompts x the plan's s/eval for that prompt count (timing-phase medians, "
            "1/4 prefix + 3/4 prefix_batched, scaled by prompts)",
        }
    print(
        f"greedy ({greedy['status']}): {greedy.get('wall_s', float('nan')):.0f} s, "
        f"{greedy.get('evaluations')} evaluations on {n_g} prompts",
        flush=True,
    )

    total_s = time.perf_counter() - t_start
    result = {
        "benchmark": "ioi",
        "config": vars(a),
        "hook": a.hook,
        "dictionary": dict_info,
        "machine": machine(torch.__version__, torch.get_num_threads(), load_before, load_avg()),
        "task": {k: v for k, v in perf.items()},
        "prompt_tokens": int(prompts.lengths_N.sum()),
        "padded_length": int(prompts.base_NT.shape[1]),
        "setup_s": setup_s,
        "n_active": int(len(setup.active)),
        "n_features": setup.n_features,
        "kl_base": setup.kl_base(),
        "timing": timing,
        "attribution": {
            "scores_s": attribution_s,
            "validate_s": validate_s,
            "validate_n": a.validate_n,
            "validate_features": len(val["features"]),
            "spearman": val["spearman"],
            "quick_curve_s": curve_s,
            "quick_curve_prefixes": len(curve["records"]),
            "quick_curve_records": curve["records"],
        },
        "greedy": greedy,
        "total_wall_s": total_s,
    }
    print_table(result)
    write_json_atomic(Path(a.json), result)
    print(f"results in {a.json}")
    return result


def print_table(r: dict) -> None:
    tm = r["timing"]
    med = tm["median_s_per_eval"]
    print(f"\n{'method':<16}{'s/eval median':>14}{'min':>9}{'max':>9}{'speed-up':>10}")
    for m in METHODS:
        v = tm["seconds_per_eval"][m]
        sp = 1.0 if m == "naive" else tm["speedups"][f"naive_vs_{m}"]["ratio_of_medians"]
        print(f"{m:<16}{med[m]:>14.3f}{min(v):>9.3f}{max(v):>9.3f}{sp:>9.2f}x")
    for k, v in tm["speedups"].items():
        print(
            f"{k:<28} of medians {v['ratio_of_medians']:.2f}   median of paired {v['median_paired']:.2f}"
            f"   of best {v['ratio_of_best']:.2f}"
        )
    kc = tm["kl_check"]
    print(
        f"KL naive vs prefix paths: max |diff| {kc['max_abs_kl_diff']:.2e} over {kc['candidates_compared']} candidates"
    )
    at = r["attribution"]
    print(
        f"active features {r['n_active']} of {r['n_features']}; set-up {r['setup_s']:.1f} s; "
        f"attribution_scores {at['scores_s']:.1f} s; validate(n={at['validate_n']}) {at['validate_s']:.1f} s, "
        f"Spearman {at['spearman']:.3f}; quick_curve {at['quick_curve_s']:.1f} s, {at['quick_curve_prefixes']} prefixes"
    )
    g = r["greedy"]
    print(
        f"exact greedy on {g['prompts']} prompts ({g['status']}): {g['wall_s']:.0f} s, {g['evaluations']} evaluations, "
        f"{g['taus_completed']} of {g['taus_requested']} τ steps"
    )
    if "extrapolated_to_requested" in g:
        e = g["extrapolated_to_requested"]
        print(
            f"  EXTRAPOLATED (not measured) to {e['prompts']} prompts: ~{e['evaluations']:.0f} evaluations, "
            f"~{e['wall_s']:.0f} s"
        )
    print(f"total wall time {r['total_wall_s']:.0f} s")


if __name__ == "__main__":
    main()
