"""The quick pipeline on a GPU, checked against the CPU, and its throughput there (``make bench-gpu``).

Needs a CUDA GPU (``--device cuda``); ``--device cpu`` runs every code path against itself on the CPU (a smoke
test of this script: every comparison must then be exact or at rounding level, the speeds mean nothing).

Checks (each against the CPU result of the same stage on the same inputs; tolerances stated in ``TOLERANCES``):

``harvest``  SmolLM2-135M at layer 6 over the embedded corpus, the model in float32 on the GPU and on the CPU:
             activations equal to a relative error (‖Δ‖/‖x‖ per row, max); the model in bfloat16 on the GPU:
             not bits but numbers: mean row cosine to the float32 activations and relative norm error.
``train``    the quick run's tied SAE (R 4, α 8.6e-4, mean-norm inputs) trained on the CPU and on the GPU from
             the same float32 store: final held-out FVU and L0 (different summation orders: close, not equal).
``eval``     the CPU-trained SAE evaluated on the CPU (float32 model) and on the GPU (bfloat16 model): FVU and
             L0 (the same stored activations: rounding level), CE recovered and KL (bfloat16 model: metrics
             within tolerance).
``features`` the feature index of that SAE on both: the top-activating fragments of the first 64 features
             (overlap of their sets).

Throughput (GPU only, medians over ``--repeats``):

``harvest``  tokens/s of ``saex harvest`` (bfloat16, capture at layer 6, store writes included) against a bare
             ``model(input_ids)`` forward over the same batches (the whole model: the ratio is what harvest's
             early stop and writes cost or save).
``train``    activations/s of saex's training step (tied SAE, K = 1 and an 8-member ensemble, TopK k 32) at
             d_in 576, F 4608 (×4) and 18432 (×32), B 4096, float32, against the GPU's measured float32 matmul
             peak (``torch.mm`` at the same shapes; 12·B·d·F FLOPs per step and member, as
             benchmarks/README.md counts) and against SAELens's training step on the same shapes when
             ``sae_lens`` imports.

Results: a table on stdout and ``benchmarks/results/gpu.json``.

    .venv/bin/python benchmarks/gpu.py                   # on a CUDA machine, ~5-8 min
    .venv/bin/python benchmarks/gpu.py --device cpu --quick   # smoke test of the script on a CPU, ~4 min
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from saex.devices import resolve_device
from saex.stages.eval import EvalConfig
from saex.stages.eval import run as run_eval
from saex.stages.features import FeaturesConfig
from saex.stages.features import run as run_features
from saex.stages.harvest import HarvestConfig
from saex.stages.harvest import run as harvest
from saex.store.reader import ActivationStore
from saex.train.config import TrainConfig
from saex.train.trainer import train

sys.path.insert(0, str(Path(__file__).parent))
from _common import load_avg, machine  # noqa: E402

HOOK = "blocks.6.hook_resid_post"
TOLERANCES = {
    "harvest_fp32_rel_err": 1e-3,
    "harvest_bf16_cosine_min": 0.99,
    "harvest_bf16_norm_rel_err": 0.02,
    "train_fvu_abs": 0.02,
    "train_l0_rel": 0.10,
    "eval_fvu_abs": 1e-4,
    "eval_l0_abs": 0.05,
    "eval_ce_recovered_abs": 0.03,
    "eval_kl_rel": 0.15,
    "features_top_overlap_min": 0.8,
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda", help="the accelerator to check (cuda, cuda:N; cpu: smoke test)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--tokens", type=int, default=262_144, help="train tokens harvested for the checks")
    p.add_argument("--steps", type=int, default=1000, help="training steps of the compared SAEs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="a small run (64k tokens, 200 steps, 2 repeats)")
    p.add_argument("--work", default="runs/bench/gpu")
    p.add_argument("--json", default="benchmarks/results/gpu.json")
    a = p.parse_args(argv)
    if a.quick:
        a.tokens, a.steps, a.repeats = 65_536, 200, 2
    return a


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after one warm-up."""
    fn()
    out = []
    for _ in range(repeats):
        _sync(device)
        t = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def harvest_on(work: Path, a, device: str, lm_dtype: str, name: str, tokens: int | None = None) -> Path:
    tokens = tokens or a.tokens
    cfg = HarvestConfig(
        out=str(work / name), model=a.model, hooks=[HOOK], tokens=tokens, heldout_tokens=tokens // 4,
        dtype="float32", device=device, lm_dtype=lm_dtype,
    )  # fmt: skip
    return harvest(cfg, progress=False)


def compare_stores(cpu: Path, other: Path) -> dict:
    a, b = ActivationStore(cpu), ActivationStore(other)
    x, y = a.load_shard("train", 0, HOOK), b.load_shard("train", 0, HOOK)
    n = min(len(x), len(y))  # the same contexts: one store may be shorter
    x, y = x[:n], y[:n]
    rel = ((x - y).norm(dim=1) / x.norm(dim=1).clamp_min(1e-8)).max().item()
    cos = torch.nn.functional.cosine_similarity(x, y, dim=1).mean().item()
    norm = ((y.norm(dim=1) - x.norm(dim=1)).abs() / x.norm(dim=1).clamp_min(1e-8)).mean().item()
    return {"max_row_rel_err": rel, "mean_cosine": cos, "mean_norm_rel_err": norm}


def train_on(work: Path, acts: Path, a, device: str, name: str) -> dict:
    cfg = TrainConfig(
        acts=str(acts), hook=HOOK, out=str(work / name), ratio=[4.0], alpha=[8.6e-4], normalize="mean_norm",
        steps=a.steps, batch_size=1024, device=device,
    )  # fmt: skip
    out = train(cfg, progress=False)
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    return {"out": str(out), "fvu": last["fvu"], "l0": last["l0"]}


def eval_on(work: Path, acts: Path, dicts: str, device: str, lm_dtype: str, name: str) -> dict:
    cfg = EvalConfig(acts=str(acts), dicts=[dicts], out=str(work / name), device=device, lm_dtype=lm_dtype)
    out = Path(cfg.out)
    run_eval(cfg, progress=False)
    return json.loads((out / "comparison.json").read_text())[0]


def top_fragments(work: Path, acts: Path, dicts: str, device: str, name: str) -> list[set]:
    cfg = FeaturesConfig(acts=str(acts), dicts=[dicts], out=str(work / name), device=device, top=20, random=0, zero=0)
    out = run_features(cfg, progress=False)
    from saex.features.index import INDEX_JSON, FeatureIndex

    index = FeatureIndex(next(Path(out).rglob(INDEX_JSON)).parent)
    return [set(index.examples(f, "top")[0].tolist()) for f in range(min(64, index.n_features))]


def matmul_peak(device: torch.device, B: int, D: int, F: int, repeats: int) -> float:
    """GFLOP/s of torch.mm at [B, D] × [D, F] in float32 (TF32 off: what saex's float32 training does)."""
    x, w = torch.randn(B, D, device=device), torch.randn(D, F, device=device)
    s = _timed(lambda: torch.mm(x, w), device, repeats * 10)
    return 2 * B * D * F / s / 1e9


def saex_step_rate(device: torch.device, arch: str, K: int, D: int, F: int, B: int, repeats: int) -> float:
    """Activations/s of saex's training step (forward, backward, fused Adam) of one group of K members."""
    from saex.distributed import Ranks
    from saex.train import trainer as tr
    from saex.train.config import validate

    alphas = [8.6e-4 * 2 ** (i / max(1, K - 1) * 2 - 1) for i in range(K)]
    cfg = TrainConfig(arch=arch, hook=HOOK, ratio=[F / D], alpha=alphas, k=[32], steps=10**6, batch_size=B)
    groups = tr._build_groups(cfg, validate(cfg, D), D, None)
    for g in groups:
        g.model.to(device)
        g.coef_K, g.since_fired_KF, g.step_fn = g.coef_K.to(device), g.since_fired_KF.to(device), g.model
    opt = torch.optim.Adam([p for g in groups for p in g.model.parameters() if p.requires_grad], fused=True)
    x = torch.randn(B, D, device=device) * math.sqrt(1.0)
    step = [0]

    def one():
        tr._train_step(cfg, [(groups, x, None)], opt, step[0], 10**6, Ranks(), device.type)
        step[0] += 1

    return B / _timed(one, device, repeats * 5)


def saelens_step_rate(device: torch.device, D: int, F: int, B: int, repeats: int) -> float | None:
    try:
        from sae_lens.config import LoggingConfig, SAETrainerConfig
        from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
        from sae_lens.training.sae_trainer import SAETrainer
    except ImportError:
        return None
    sae = StandardTrainingSAE(
        StandardTrainingSAEConfig(d_in=D, d_sae=F, dtype="float32", device=str(device), l1_coefficient=1.0)
    )
    tcfg = SAETrainerConfig(
        total_training_samples=10**12, train_batch_size_samples=B, lr=1e-3, lr_end=1e-4, device=str(device),
        logger=LoggingConfig(log_to_wandb=False),
    )  # fmt: skip
    trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=iter(()))
    x = torch.randn(B, D, device=device)
    return B / _timed(lambda: trainer.step(x), device, repeats * 5)


def harvest_rates(work: Path, a, device: torch.device) -> dict:
    """tokens/s of saex harvest (bfloat16) and of a bare forward over the same contexts."""
    from saex.lm.loading import load_model

    n = min(a.tokens, 131_072)
    cfg = dict(model=a.model, hooks=[HOOK], tokens=n, heldout_tokens=128, device=str(device), dtype="float16")
    times = []
    for r in range(a.repeats):
        t = time.perf_counter()
        harvest(HarvestConfig(out=str(work / f"rate{r}"), **cfg), progress=False)  # type: ignore[arg-type]
        times.append(time.perf_counter() - t)
    tokens = ActivationStore(work / "rate0").tokens("train").long()
    lm = load_model(a.model)
    lm.model.to(device=device, dtype=torch.bfloat16 if device.type == "cuda" else torch.float32).eval()

    def bare():
        with torch.inference_mode():
            for i in range(0, len(tokens), 16):
                lm.model(input_ids=tokens[i : i + 16].to(device), use_cache=False)

    bare_s = _timed(bare, device, a.repeats)
    return {
        "tokens": n,
        "harvest_tokens_per_s": (n + 128) / statistics.median(times),
        "bare_forward_tokens_per_s": len(tokens) * tokens.shape[1] / bare_s,
    }


def check(name: str, ok: bool, detail: str, failures: list) -> None:
    print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


def main(argv=None) -> int:
    a = parse_args(argv)
    device = resolve_device(a.device)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    load_before = load_avg()
    torch.backends.cuda.matmul.allow_tf32 = False
    failures: list[str] = []
    res: dict = {"device": str(device), "tolerances": TOLERANCES}
    if device.type == "cuda":
        res["gpu"] = torch.cuda.get_device_name(device)

    print(f"checks on {device} against the CPU ({a.tokens} tokens, {a.steps} steps)")
    cpu_store = harvest_on(work, a, "cpu", "float32", "acts-cpu")
    fp32 = compare_stores(cpu_store, harvest_on(work, a, str(device), "float32", "acts-fp32"))
    # bfloat16 matmul is hundreds of times slower on a CPU: the smoke test checks that path on 4096 tokens
    small = None if device.type == "cuda" else 4096
    bf16 = compare_stores(cpu_store, harvest_on(work, a, str(device), "bfloat16", "acts-bf16", small))
    res["harvest"] = {"float32": fp32, "bfloat16": bf16}
    check("harvest float32", fp32["max_row_rel_err"] <= TOLERANCES["harvest_fp32_rel_err"], f"{fp32}", failures)
    check(
        "harvest bfloat16",
        bf16["mean_cosine"] >= TOLERANCES["harvest_bf16_cosine_min"]
        and bf16["mean_norm_rel_err"] <= TOLERANCES["harvest_bf16_norm_rel_err"],
        f"{bf16}",
        failures,
    )
    t_cpu = train_on(work, cpu_store, a, "cpu", "train-cpu")
    t_dev = train_on(work, cpu_store, a, str(device), "train-dev")
    res["train"] = {"cpu": t_cpu, "device": t_dev}
    check(
        "train",
        abs(t_cpu["fvu"] - t_dev["fvu"]) <= TOLERANCES["train_fvu_abs"]
        and abs(t_cpu["l0"] - t_dev["l0"]) <= TOLERANCES["train_l0_rel"] * t_cpu["l0"],
        f"FVU {t_cpu['fvu']:.4f} vs {t_dev['fvu']:.4f}, L0 {t_cpu['l0']:.1f} vs {t_dev['l0']:.1f}",
        failures,
    )
    e_cpu = eval_on(work, cpu_store, t_cpu["out"], "cpu", "float32", "eval-cpu")
    e_dev = eval_on(work, cpu_store, t_cpu["out"], str(device), "auto", "eval-dev")
    res["eval"] = {"cpu": e_cpu, "device": e_dev}
    check(
        "eval",
        abs(e_cpu["fvu"] - e_dev["fvu"]) <= TOLERANCES["eval_fvu_abs"]
        and abs(e_cpu["l0"] - e_dev["l0"]) <= TOLERANCES["eval_l0_abs"]
        and abs(e_cpu["ce_recovered"] - e_dev["ce_recovered"]) <= TOLERANCES["eval_ce_recovered_abs"]
        and abs(e_cpu["kl"] - e_dev["kl"]) <= TOLERANCES["eval_kl_rel"] * e_cpu["kl"],
        " ".join(f"{k} {e_cpu[k]:.4f}/{e_dev[k]:.4f}" for k in ("fvu", "l0", "ce_recovered", "kl")),
        failures,
    )
    f_cpu = top_fragments(work, cpu_store, t_cpu["out"], "cpu", "features-cpu")
    f_dev = top_fragments(work, cpu_store, t_cpu["out"], str(device), "features-dev")
    overlaps = [len(x & y) / max(1, len(x)) for x, y in zip(f_cpu, f_dev, strict=True) if x]
    overlap = statistics.fmean(overlaps) if overlaps else math.nan
    res["features"] = {"mean_top_overlap": overlap, "features": len(overlaps)}
    check("features", overlap >= TOLERANCES["features_top_overlap_min"], f"mean top-20 overlap {overlap:.3f}", failures)

    if device.type == "cuda":
        print("throughput")
        res["harvest_rate"] = harvest_rates(work, a, device)
        print(f"  {res['harvest_rate']}")
        rates = []
        for F in (4608, 18432):
            peak = matmul_peak(device, 4096, 576, F, a.repeats)
            for arch, K in (("tied_l1", 1), ("tied_l1", 8), ("topk", 1)):
                r = saex_step_rate(device, arch, K, 576, F, 4096, a.repeats)
                gflops = 12 * 4096 * 576 * F * K / (4096 / r) / 1e9
                row = {"arch": arch, "K": K, "F": F, "acts_per_s": r, "gflops": gflops, "peak_gflops": peak}
                row["fraction_of_peak"] = gflops / peak
                if arch == "tied_l1" and K == 1:
                    sl = saelens_step_rate(device, 576, F, 4096, a.repeats)
                    row["saelens_acts_per_s"] = sl
                    row["saex_over_saelens"] = None if sl is None else r / sl
                rates.append(row)
                print(f"  {row}")
        res["train_rate"] = rates
    res["machine"] = machine(torch.__version__, torch.get_num_threads(), load_before, load_avg())
    res["failures"] = failures
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(res, indent=1, default=str) + "\n")
    print(f"{len(failures)} check(s) failed" if failures else "all checks passed", f"(results: {a.json})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
