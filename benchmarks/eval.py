"""Throughput of ``saex eval`` against a plain forward of the model, measured in one run on the CPU.

What is measured (tokens/s; one batch of real token contexts, every forward under ``torch.inference_mode``):

``plain``      the reference: ``model(input_ids).logits``, the whole model with its LM head, no hooks.
``spliced``    the same forward with an SAE's reconstruction spliced in at the hook point
               (``HookedLM.splice``): the cost of encoding, decoding and the hook.
``eval1``      ``saex.evaluate.spliced.spliced_losses`` with one dictionary: the clean, zero-ablated and
               spliced forwards, log-softmax, CE and KL: everything ``saex eval`` does per batch of contexts.
``eval4``      the same with four dictionaries at one hook point: the clean and zero-ablated forwards are
               shared, so each dictionary adds one forward.
``metrics``    (activations/s) ``ReconstructionMetrics.update`` with the SAE's encode and decode on
               held-out-sized batches, against ``bare_sae``: the encode and decode matmuls alone.

Ratios reported: ``spliced_vs_plain`` (ideal: 1 minus the SAE's share), ``eval1_vs_plain`` (ideal 1/3:
three forwards), ``eval4_vs_plain`` (ideal 1/6), the marginal cost of one more dictionary in plain
forwards, and ``metrics_vs_bare_sae``. Method as in ``benchmarks/harvest.py``: a warm-up of each method,
then ``--repeats`` rounds with the order rotated; medians; ratios as ratio of medians and median of paired
per-round ratios.

    .venv/bin/python benchmarks/eval.py            # ~3 min on 2 CPU cores
    .venv/bin/python benchmarks/eval.py --quick    # ~40 s smoke run
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from _common import load_avg, machine  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from harvest import first_contexts  # noqa: E402
from saex.dictionaries.sae import SAE
from saex.evaluate.metrics import ReconstructionMetrics
from saex.evaluate.spliced import spliced_losses
from saex.files import write_json_atomic
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_model

RESULTS = Path(__file__).resolve().parent / "results" / "eval.json"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--corpus", default="default")
    p.add_argument("--hook", default="blocks.6.hook_resid_post")
    p.add_argument("--ratio", type=int, default=4, help="SAE width as a multiple of the hook's width")
    p.add_argument("--batch-size", type=int, default=None, help="contexts per forward (default 8; quick 4)")
    p.add_argument("--context-length", type=int, default=128)
    p.add_argument("--metrics-rows", type=int, default=4096, help="activations per metrics batch")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None)
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    a.batch_size = a.batch_size or (4 if a.quick else 8)
    a.repeats = a.repeats or (2 if a.quick else 5)
    a.json = a.json or str(RESULTS.with_name("eval-quick.json") if a.quick else RESULTS)
    return a


def random_sae(d: int, F: int, seed: int) -> SAE:
    """A tied SAE with unit-norm random rows and a negative bias, so about a quarter of features fire."""
    g = torch.Generator().manual_seed(seed)
    W_FD = torch.randn(F, d, generator=g)
    W_FD /= W_FD.norm(dim=1, keepdim=True)
    return SAE(W_FD.T.clone(), W_FD, torch.full((F,), -0.5), torch.zeros(d), "standard", apply_b_dec_to_input=False)


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    load_before = load_avg()
    lm = load_model(a.model)
    lm.model.eval()
    hooked = HookedLM(lm.model)
    x = first_contexts(lm, hooked, a)
    width = hooked.resolve(a.hook).width
    saes = {f"sae{i}": random_sae(width, a.ratio * width, i) for i in range(4)}
    with hooked.capture([a.hook]) as run:
        acts = run(x)[a.hook].reshape(-1, width)
    acts = acts.repeat((a.metrics_rows + len(acts) - 1) // len(acts), 1)[: a.metrics_rows].contiguous()
    tokens = x.numel()
    sae = saes["sae0"]

    def plain():
        with torch.inference_mode():
            _ = lm.model(input_ids=x, use_cache=False).logits

    def spliced():
        with torch.inference_mode(), hooked.splice(a.hook, lambda t: sae.decode(sae.encode(t))):
            _ = lm.model(input_ids=x, use_cache=False).logits

    def eval1():
        spliced_losses(hooked, a.hook, {"sae0": sae}, x, batch_size=len(x))

    def eval4():
        spliced_losses(hooked, a.hook, saes, x, batch_size=len(x))

    def metrics():
        acc = ReconstructionMetrics(width, sae.d_dict)
        with torch.inference_mode():
            c = sae.encode(acts)
            acc.update(acts, sae.decode(c), c)
            acc.result()

    def bare_sae():
        with torch.inference_mode():
            (acts @ sae.W_enc_DF + sae.b_enc_F).relu() @ sae.W_dec_FD

    methods = {
        "plain": (plain, tokens),
        "spliced": (spliced, tokens),
        "eval1": (eval1, tokens),
        "eval4": (eval4, tokens),
        "metrics": (metrics, len(acts)),
        "bare_sae": (bare_sae, len(acts)),
    }
    for f, _ in methods.values():
        f()
    rates: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    for r in range(a.repeats):
        for m in names[r % len(names) :] + names[: r % len(names)]:
            f, n = methods[m]
            t = time.perf_counter()
            f()
            rates[m].append(n / (time.perf_counter() - t))
        print(f"round {r + 1}/{a.repeats}: " + "  ".join(f"{m} {rates[m][-1]:.0f}" for m in names), file=sys.stderr)
    med = {m: statistics.median(v) for m, v in rates.items()}

    def ratio(num, den):
        paired = [n / d for n, d in zip(rates[num], rates[den])]
        return {"ratio_of_medians": med[num] / med[den], "median_paired": statistics.median(paired), "paired": paired}

    ratios = {
        "spliced_vs_plain": ratio("spliced", "plain"),
        "eval1_vs_plain": ratio("eval1", "plain"),
        "eval4_vs_plain": ratio("eval4", "plain"),
        "metrics_vs_bare_sae": ratio("metrics", "bare_sae"),
    }
    # Seconds per token of one more dictionary, in units of one plain forward's seconds per token.
    extra = (1 / med["eval4"] - 1 / med["eval1"]) / 3
    ratios["extra_dictionary_in_plain_forwards"] = {"ratio_of_medians": extra * med["plain"]}
    result = {
        "benchmark": "eval",
        "config": vars(a),
        "tokens_per_batch": tokens,
        "hook": a.hook,
        "width": width,
        "d_sae": sae.d_dict,
        "machine": machine(torch.__version__, torch.get_num_threads(), load_before, load_avg()),
        "rates_per_s": rates,
        "median_per_s": med,
        "ratios": ratios,
    }
    print(f"{'method':<10}{'median/s':>12}   (tokens/s; metrics and bare_sae: activations/s)")
    for m in names:
        print(f"{m:<10}{med[m]:>12.0f}")
    for k, v in ratios.items():
        extra_txt = f"   median of paired {v['median_paired']:.3f}" if "median_paired" in v else ""
        print(f"{k:<36} {v['ratio_of_medians']:.3f}{extra_txt}")
    write_json_atomic(Path(a.json), result)
    print(f"results in {a.json}")
    return result


if __name__ == "__main__":
    main()
