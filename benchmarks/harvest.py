"""Throughput of ``saex harvest`` against a bare truncated forward, measured in one run on the CPU.

What is measured (tokens/s; every forward runs under ``torch.inference_mode`` on one model, on one batch
of real token contexts, with the same hook points):

``bare``        the reference: a raw ``register_forward_hook`` on the module of the deepest requested hook
                point (``model.model.layers[L]`` for ``hook_resid_post``) that raises an exception, so the
                forward stops there. No capture, no copies, nothing of saex's hooking code.
``capture``     (breakdown) ``HookedLM.capture`` run alone: saex's truncated forward that keeps the
                activations of every hook point, no cast, no copy.
``inner``       harvest's loop without its fixed costs: capture run, cast to the storage dtype, finiteness
                check, copy into shard buffers, ``write_safetensors_atomic`` per shard (fsync included) and a
                small manifest rewrite per shard, as ``saex.stages.harvest._harvest_split`` does; the same batch is
                fed repeatedly.
``harvest``     the real end-to-end path, ``saex.stages.harvest.harvest(HarvestConfig(...), progress=False)`` into a
                fresh temporary folder. harvest() loads the model, reads and fingerprints the corpus and
                hashes the tokenizer itself; to cancel those fixed costs each repeat runs two harvests, of
                N and of 2N tokens (fresh folders), and the rate is N / (t(2N) - t(N)). What is left is the
                per-token cost: forward, copies, shard writes and also lazy tokenisation of the corpus.
                harvest's own contexts are the train split of the corpus with seed 0, whose first batch is
                the batch every other method uses. The held-out split is disabled (heldout_tokens=0).
``full``        the whole model with its LM head (logits for every position), no hooks.
``body``        ``model.model(...)``: every decoder layer and the final norm, no LM head, no hooks.

Method: a warm-up pass of each method, then ``--repeats`` rounds; in each round every method is timed once,
in an order rotated from round to round, so slow drifts of machine load hit every method alike. Reported
values are medians over rounds; ratios are given as ratio of medians, as median of the per-round (paired)
ratios, and as ratio of the best rounds (the least disturbed by other processes). Because every number
that matters is a ratio against a reference measured in the same run and the same process, the results
compare across machines far better than raw tokens/s do. The load average before and after is recorded:
on a shared machine the numbers are noisy (with 2 threads on 2 busy cores, OpenMP barriers make single
forwards up to ~5x slower at random; ``--threads 1`` is steadier there).

Results: a table on stdout and JSON in ``benchmarks/results/harvest.json`` (``--json`` to change).

    .venv/bin/python benchmarks/harvest.py            # ~2-4 min on 2 CPU cores
    .venv/bin/python benchmarks/harvest.py --quick    # ~30 s smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import gc
import io
import json
import pstats
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from _common import load_avg, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from saex.data.corpora import resolve_corpus
from saex.data.packing import pack, resolve_packing
from saex.files import write_json_atomic, write_safetensors_atomic
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model
from saex.stages.harvest import DTYPES, HarvestConfig
from saex.stages.harvest import run as harvest

RESULTS = Path(__file__).resolve().parent / "results" / "harvest.json"
# Order of the hook kinds inside a block, and which module of a Llama-style block each is read from
# (written here independently of saex.lm.hooks; "pre" means the module's input, so stop before it runs).
_KINDS = ("hook_resid_pre", "hook_attn_out", "mlp.hook_post", "hook_mlp_out", "hook_resid_post")
_STOP_AT = {
    "hook_resid_pre": ("", "pre"),
    "hook_attn_out": ("self_attn", "post"),
    "mlp.hook_post": ("mlp.down_proj", "pre"),
    "hook_mlp_out": ("mlp", "post"),
    "hook_resid_post": ("", "post"),
}


class _Stop(Exception):
    pass


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="default")
    p.add_argument("--hooks", default="blocks.6.hook_resid_post,blocks.6.hook_mlp_out")
    p.add_argument("--batch-size", type=int, default=None, help="contexts per forward (default 16; quick 8)")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--dtype", default="float16", choices=sorted(DTYPES))
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
    p.add_argument(
        "--bare-batches", type=int, default=None, help="forwards per round for bare and capture (default 4; quick 2)"
    )
    p.add_argument("--full-batches", type=int, default=1, help="forwards per round for full and body")
    p.add_argument(
        "--harvest-batches",
        type=int,
        default=None,
        help="N, in batches, for the harvest difference (N vs 2N) and the inner loop (default 8; quick 2)",
    )
    p.add_argument(
        "--shard-batches",
        type=int,
        default=None,
        help="batches per shard for harvest and the inner loop (default 4; quick 1)",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: leave torch's default)")
    p.add_argument("--tmp-dir", default=None, help="where the temporary stores go (default: the system temp dir)")
    p.add_argument(
        "--json",
        default=None,
        help=f"output JSON path (default {RESULTS.relative_to(RESULTS.parents[2])}; "
        "--quick: harvest-quick.json beside it)",
    )
    p.add_argument(
        "--only", default=None, help="comma-separated subset of methods: bare,capture,inner,harvest,full,body"
    )
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, run one 2N harvest under cProfile and print/save the hotspots",
    )
    p.add_argument("--quick", action="store_true", help="~30 s smoke run (smaller batch, fewer rounds)")
    a = p.parse_args(argv)
    quick = {"batch_size": 8, "repeats": 2, "bare_batches": 2, "harvest_batches": 2, "shard_batches": 1}
    full = {"batch_size": 16, "repeats": 5, "bare_batches": 4, "harvest_batches": 8, "shard_batches": 4}
    if a.json is None:
        a.json = str(RESULTS.with_name("harvest-quick.json") if a.quick else RESULTS)
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    return a


def first_contexts(lm, hooked: HookedLM, a) -> torch.Tensor:
    """The first batch of train contexts of the corpus, exactly as harvest (seed 0) would pack them."""
    cfg = HarvestConfig()
    packing = resolve_packing(lm.tokenizer, a.context_length, cfg.bos_policy, cfg.separator, hooked.max_context)
    corpus = resolve_corpus(a.corpus, cfg.text_field, cfg.hub_split, cfg.hub_config)
    it = pack(corpus.documents(cfg.seed), lm.tokenizer, packing, "train", cfg.seed, cfg.heldout_fraction)
    ctx = [next(it) for _ in range(a.batch_size)]
    return torch.from_numpy(np.stack([c.tokens_T for c in ctx])).long()


def stop_module(model: torch.nn.Module, hooks: list[str]):
    """(module, 'pre' | 'post') where the bare reference stops: the deepest hook point's module."""
    parsed = []
    for h in hooks:
        m = re.fullmatch(r"blocks\.(\d+)\.(.+)", h)
        if not m or m.group(2) not in _KINDS:
            raise SystemExit(f"cannot parse hook {h!r}")
        parsed.append((int(m.group(1)), _KINDS.index(m.group(2))))
    layer, k = max(parsed)
    sub, when = _STOP_AT[_KINDS[k]]
    block = model.model.layers[layer]
    return (block.get_submodule(sub) if sub else block), when


# --- the methods: each runs `n` forwards and returns the elapsed seconds -------------------------------


def run_bare(model, x, n, stop):
    module, when = stop

    def raise_stop(*_):
        raise _Stop

    h = module.register_forward_pre_hook(raise_stop) if when == "pre" else module.register_forward_hook(raise_stop)
    try:
        with torch.inference_mode():
            t = time.perf_counter()
            for _ in range(n):
                with contextlib.suppress(_Stop):
                    model(input_ids=x, use_cache=False)
            return time.perf_counter() - t
    finally:
        h.remove()


def run_capture(hooked, hooks, x, n):
    with hooked.capture(hooks) as run:
        t = time.perf_counter()
        for _ in range(n):
            run(x)
        return time.perf_counter() - t


def run_inner(hooked, hooks, x, n_batches, shard_batches, dtype_name, folder: Path):
    """harvest's per-shard loop (saex.stages.harvest._harvest_split) on the same batch, without fixed costs."""
    import hashlib

    dtype = DTYPES[dtype_name]
    points = [hooked.resolve(h) for h in hooks]
    B, T = x.shape
    tok_np = x.numpy().astype(np.int32)
    doc_np = np.zeros_like(tok_np)
    manifest = {"shards": []}
    with hooked.capture(hooks) as run:
        t = time.perf_counter()
        done, index = 0, 0
        while done < n_batches:
            nb = min(shard_batches, n_batches - done)
            n = nb * B
            tok_CT = np.zeros((n, T), dtype=np.int32)
            doc_CT = np.zeros((n, T), dtype=np.int32)
            acts = {p.name: torch.empty(n * T, p.width, dtype=dtype) for p in points}
            filled = 0
            while filled < n:
                tok_CT[filled : filled + B] = tok_np
                doc_CT[filled : filled + B] = doc_np
                got = run(torch.from_numpy(tok_CT[filled : filled + B]).long())
                for name, x_BTD in got.items():
                    y = x_BTD.reshape(B * T, -1).to(dtype)
                    if not torch.isfinite(y).all():
                        raise RuntimeError(f"non-finite activation at {name}")
                    acts[name][filled * T : (filled + B) * T] = y
                filled += B
            tensors = dict(acts)
            tensors["tokens"] = torch.from_numpy(tok_CT)
            tensors["doc_ids"] = torch.from_numpy(doc_CT)
            path = folder / "train" / f"shard-{index:05d}.safetensors"
            digest = write_safetensors_atomic(path, tensors, {"split": "train", "index": str(index)})
            manifest["shards"].append(
                {"file": path.name, "sha256": digest, "tokens_sha256": hashlib.sha256(tok_CT.tobytes()).hexdigest()}
            )
            write_json_atomic(folder / "manifest.json", manifest)
            done += nb
            index += 1
        return time.perf_counter() - t


def run_harvest(a, n_tokens: int, tmp_root: Path) -> float:
    out = Path(tempfile.mkdtemp(dir=tmp_root, prefix="harvest-"))
    cfg = HarvestConfig(
        out=str(out / "store"),
        model=a.model,
        corpus=a.corpus,
        hooks=a.hooks,
        tokens=n_tokens,
        heldout_tokens=0,
        context_length=a.context_length,
        dtype=a.dtype,
        batch_size=a.batch_size,
        shard_tokens=a.shard_batches * a.batch_size * a.context_length,
    )
    try:
        gc.collect()
        t = time.perf_counter()
        harvest(cfg, progress=False)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)
        gc.collect()


def run_full(model, x, n):
    with torch.inference_mode():
        t = time.perf_counter()
        for _ in range(n):
            model(input_ids=x, use_cache=False)
        return time.perf_counter() - t


def run_body(model, x, n):
    with torch.inference_mode():
        t = time.perf_counter()
        for _ in range(n):
            model.model(input_ids=x, use_cache=False)
        return time.perf_counter() - t


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    hooks = [h.strip() for h in a.hooks.split(",") if h.strip()]
    methods = ["bare", "capture", "inner", "harvest", "full", "body"]
    if a.only:
        methods = [m for m in methods if m in a.only.split(",")]
    tmp_root = Path(tempfile.mkdtemp(dir=a.tmp_dir, prefix="saex-bench-"))
    t_start = time.perf_counter()
    load_before = load_avg()

    t = time.perf_counter()
    lm = load_model(a.model)
    load_s = time.perf_counter() - t
    model = lm.model
    hooked = HookedLM(model)
    x = first_contexts(lm, hooked, a)
    B, T = x.shape
    tok_batch = B * T
    stop = stop_module(model, hooks)
    n_h = a.harvest_batches * tok_batch  # N tokens

    # tokens processed per call, and the call itself (returns seconds; harvest returns (t_N, t_2N))
    tokens = {
        "bare": a.bare_batches * tok_batch,
        "capture": a.bare_batches * tok_batch,
        "inner": a.harvest_batches * tok_batch,
        "harvest": n_h,
        "full": a.full_batches * tok_batch,
        "body": a.full_batches * tok_batch,
    }
    inner_dir = tmp_root / "inner"

    def call(m: str, warm: bool = False):
        if m == "bare":
            return run_bare(model, x, 1 if warm else a.bare_batches, stop)
        if m == "capture":
            return run_capture(hooked, hooks, x, 1 if warm else a.bare_batches)
        if m == "inner":
            shutil.rmtree(inner_dir, ignore_errors=True)
            nb = min(a.shard_batches, a.harvest_batches) if warm else a.harvest_batches
            return run_inner(hooked, hooks, x, nb, a.shard_batches, a.dtype, inner_dir)
        if m == "harvest":
            if warm:
                return run_harvest(a, tok_batch, tmp_root)
            # alternate which size goes first so a drift in load does not bias the difference
            if len(timings["harvest_N"]) % 2 == 0:
                t1 = run_harvest(a, n_h, tmp_root)
                t2 = run_harvest(a, 2 * n_h, tmp_root)
            else:
                t2 = run_harvest(a, 2 * n_h, tmp_root)
                t1 = run_harvest(a, n_h, tmp_root)
            return t1, t2
        if m == "full":
            return run_full(model, x, 1 if warm else a.full_batches)
        if m == "body":
            return run_body(model, x, 1 if warm else a.full_batches)
        raise ValueError(m)

    timings: dict[str, list] = {m: [] for m in methods}
    timings["harvest_N"], timings["harvest_2N"] = [], []
    print(
        f"model {a.model} loaded in {load_s:.1f}s; batch {B}x{T}; hooks {hooks}; "
        f"threads {torch.get_num_threads()}; load avg {load_before}",
        file=sys.stderr,
    )
    warm = {}
    for m in methods:
        warm[m] = call(m, warm=True)
        print(f"  warm-up {m}: {warm[m]:.2f}s", file=sys.stderr)
    for r in range(a.repeats):
        order = methods[r % len(methods) :] + methods[: r % len(methods)]
        for m in order:
            v = call(m)
            if m == "harvest":
                timings["harvest_N"].append(v[0])
                timings["harvest_2N"].append(v[1])
                v = v[1] - v[0]
            timings[m].append(v)
        print(
            f"  round {r + 1}/{a.repeats}: " + ", ".join(f"{m} {timings[m][-1]:.2f}s" for m in methods), file=sys.stderr
        )

    rates = {m: [tokens[m] / s if s > 0 else float("nan") for s in timings[m]] for m in methods}
    med = {m: statistics.median(v) for m, v in rates.items()}

    def ratio(num, den):
        if num not in med or den not in med:
            return None
        paired = [p / q for p, q in zip(rates[num], rates[den])]
        return {
            "ratio_of_medians": med[num] / med[den],
            "median_paired": statistics.median(paired),
            "ratio_of_best": max(rates[num]) / max(rates[den]),
            "paired": paired,
        }

    ratios = {
        "harvest_vs_bare": ratio("harvest", "bare"),
        "inner_vs_bare": ratio("inner", "bare"),
        "capture_vs_bare": ratio("capture", "bare"),
        "bare_vs_full": ratio("bare", "full"),
        "bare_vs_body": ratio("bare", "body"),
    }
    ratios = {k: v for k, v in ratios.items() if v is not None}
    fixed = None
    if "harvest" in methods:
        fixed = statistics.median([t1 - (t2 - t1) for t1, t2 in zip(timings["harvest_N"], timings["harvest_2N"])])

    profile = None
    if a.profile and "harvest" in methods:
        pr = cProfile.Profile()
        pr.enable()
        run_harvest(a, 2 * n_h, tmp_root)
        pr.disable()
        buf = io.StringIO()
        st = pstats.Stats(pr, stream=buf).strip_dirs()
        st.sort_stats("tottime").print_stats(25)
        st.sort_stats("cumulative").print_stats(40)
        profile = buf.getvalue()
        print(profile)

    shutil.rmtree(tmp_root, ignore_errors=True)
    load_after = load_avg()
    total_s = time.perf_counter() - t_start

    labels = {
        "bare": "bare truncated forward (reference)",
        "capture": "saex capture only (no copy)",
        "inner": "harvest inner loop (capture+cast+copy+write)",
        "harvest": "harvest() end to end (2N-N)",
        "full": "full forward (with LM head)",
        "body": "body-only forward (no LM head)",
    }
    print(f"\n{'method':48s} {'tok/s median':>12s} {'min':>9s} {'max':>9s}  vs bare")
    for m in methods:
        vs = f"{med[m] / med['bare']:.3f}" if "bare" in med else "-"
        print(f"{labels[m]:48s} {med[m]:12.0f} {min(rates[m]):9.0f} {max(rates[m]):9.0f}  {vs}")
    print()
    for k, v in ratios.items():
        print(
            f"{k:18s} ratio of medians {v['ratio_of_medians']:.3f}   median of paired {v['median_paired']:.3f}"
            f"   ratio of best {v['ratio_of_best']:.3f}" + ("   (target >= 0.9)" if k == "harvest_vs_bare" else "")
        )
    if fixed is not None:
        print(f"harvest fixed cost (model load, corpus, tokenizer hash, manifest), median: {fixed:.2f}s")
    print(f"load average before {load_before}, after {load_after}; total {total_s:.0f}s")

    result = {
        "benchmark": "harvest",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(
            torch.__version__,
            torch.get_num_threads(),
            load_before,
            load_after,
            transformers=__import__("transformers").__version__,
            tmp_dir=str(tmp_root.parent),
        ),
        "config": {
            **{k: v for k, v in vars(a).items() if k not in {"json"}},
            "hooks": hooks,
            "batch_tokens": tok_batch,
            "harvest_N_tokens": n_h,
            "harvest_2N_tokens": 2 * n_h,
            "shard_tokens": a.shard_batches * tok_batch,
            "methods": methods,
            "harvest_method": "difference of two harvests of N and 2N tokens (fresh folders): "
            "rate = N / (t(2N) - t(N)); cancels model load, corpus and tokenizer hashing",
        },
        "model_load_s": load_s,
        "tokens_per_call": {m: tokens[m] for m in methods},
        "warmup_s": warm,
        "timings_s": timings,
        "tokens_per_s": rates,
        "median_tokens_per_s": med,
        "ratios": ratios,
        "harvest_fixed_cost_s": fixed,
        "total_s": total_s,
        "profile": profile,
    }
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
