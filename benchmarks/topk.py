"""TopK-family training steps on the CPU: saex's sparse step against its own dense step and SAELens's, one run.

Issue 15's shapes: d_in = 576, R = 8 (F = 4608), k = 32, batch B = 4096, float32, one member (K = 1). Inputs are
Gaussian rows scaled to norm √d_in (what ``--normalize mean_norm`` gives); TopK's cost does not depend on the
data. Every method does one full training step per call: forward, backward, Adam (``zero_grad`` first).

``saex_topk``, ``saex_batchtopk``  ``saex.dictionaries`` TopK / BatchTopK as ``saex train`` steps them: the
                                  encoder's forward product dense, everything after it on the B·k kept codes
                                  (``saex.dictionaries.sparse_codes``).
``saex_topk_dense``               the same model and loss written with dense codes ([B, F] tensors, every
                                  product dense, plain autograd): what the sparse step replaces.
``saelens_topk[_sparse]``,        SAELens's ``TopKTrainingSAE`` / ``BatchTopKTrainingSAE`` (its
``saelens_batchtopk[_sparse]``    ``training_forward_pass``, backward, Adam), with ``use_sparse_activations``
                                  off (its default) and on, in a separate interpreter (``--saelens-python``):
                                  its dependencies stay out of saex's venv. A variant that fails is recorded
                                  with its error (sae-lens 6.54.12's sparse activations fail on the CPU here:
                                  ``aten::view`` has no SparseCPU kernel).

Then the ensemble cost: for every registered architecture, one step of K = 8 members against K = 1 at
``--ensemble-shape`` (default d 576, F 2304, B 1024, k 32), target ≤ 8.5×.

Method: a warm-up step of each, then ``--repeats`` rounds; in each round every saex method is timed over
``--steps`` steps and the SAELens worker runs the same number of its steps; medians over rounds. Results: a
table on stdout and JSON in ``benchmarks/results/topk.json``.

    .venv/bin/python benchmarks/topk.py --saelens-python /tmp/saelens-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

D, R, KEEP, B = 576, 8, 32, 4096


def batch(d: int, b: int, seed: int) -> torch.Tensor:
    x = torch.randn(b, d, generator=torch.Generator().manual_seed(seed))
    return x * (d**0.5) / x.norm(dim=1, keepdim=True)


def timed(step, steps: int) -> float:
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - t0) / steps


# -- the SAELens worker (runs in the SAELens interpreter: standard library, torch and sae_lens only) ----------
def saelens_worker(arch: str, sparse: bool, steps: int, threads: int) -> None:
    torch.set_num_threads(threads)
    from sae_lens.saes.batchtopk_sae import BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput
    from sae_lens.saes.topk_sae import TopKTrainingSAE, TopKTrainingSAEConfig

    cls, cfg_cls = (TopKTrainingSAE, TopKTrainingSAEConfig) if arch == "topk" else (
        BatchTopKTrainingSAE, BatchTopKTrainingSAEConfig)  # fmt: skip
    sae = cls(cfg_cls(d_in=D, d_sae=R * D, k=KEEP, use_sparse_activations=sparse))
    opt = torch.optim.Adam(sae.parameters(), lr=1e-3)
    x = batch(D, B, 0)
    dead = torch.zeros(R * D, dtype=torch.bool)

    def step():
        opt.zero_grad(set_to_none=True)
        out = sae.training_forward_pass(
            TrainStepInput(sae_in=x, coefficients={}, dead_neuron_mask=dead, n_training_steps=0, is_logging_step=False)
        )
        out.loss.backward()
        opt.step()

    step()
    print(json.dumps(timed(step, steps)))


def run_saelens(python: str, arch: str, sparse: bool, steps: int, threads: int) -> float | str:
    """Seconds per step, or the error the worker ended with."""
    proc = subprocess.run(
        [python, __file__, "--worker", arch, "--worker-sparse", str(int(sparse)), "--steps", str(steps),
         "--threads", str(threads)],
        capture_output=True, text=True,
    )  # fmt: skip
    if proc.returncode:
        errors = [line for line in proc.stderr.splitlines() if "Error" in line]
        return (errors[-1] if errors else proc.stderr.strip().splitlines()[-1])[:300]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- saex ----------------------------------------------------------------------------------------------------
def saex_step(model, x):
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3, fused=True)
    coef = torch.zeros(model.K)

    def step():
        opt.zero_grad(set_to_none=True)
        model(x, coef).loss.backward()
        opt.step()

    return step


def dense_topk_step(model, x):
    """The TopK loss with dense [B, F] codes and plain autograd (the formulation the sparse step replaces)."""
    from saex.dictionaries.ensemble import unit_rows

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)

    def step():
        opt.zero_grad(set_to_none=True)
        pre = torch.addmm(model.b_enc_KF[0], x - model.b_dec_KD[0], model.W_enc_KFD[0].T)
        vals, idx = pre.topk(model.k, dim=-1, sorted=False)
        c = torch.zeros_like(pre).scatter(-1, idx, vals.relu())
        xhat = c @ unit_rows(model.W_dec_KFD[0]) + model.b_dec_KD[0]
        (xhat - x).pow(2).mean().backward()
        opt.step()

    return step


def ensemble_ratios(shape: tuple[int, int, int, int], steps: int, repeats: int) -> dict[str, dict]:
    from saex.dictionaries import architectures

    d, F, b, k = shape
    x = batch(d, b, 1)
    out = {}
    for name, cls in sorted(architectures().items()):
        kw = {"k": k} if name in ("topk", "batchtopk", "matryoshka") else {}
        steps_1 = saex_step(cls(d, F, [1], **kw), x)
        steps_8 = saex_step(cls(d, F, list(range(8)), **kw), x)
        steps_1(), steps_8()  # warm-up
        t1, t8 = [], []
        for _ in range(repeats):
            t1.append(timed(steps_1, steps))
            t8.append(timed(steps_8, steps))
        one, eight = statistics.median(t1), statistics.median(t8)
        out[name] = {"one_s": one, "eight_s": eight, "ratio": eight / one}
        print(
            f"  {name:<12} K=1 {one * 1e3:8.1f} ms   K=8 {eight * 1e3:8.1f} ms   ratio {eight / one:5.2f}", flush=True
        )
    return out


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--saelens-python", help="a Python with sae-lens installed (its steps are skipped without)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--ensemble-shape", default="576,2304,1024,32", help="d,F,B,k of the ensemble ratios")
    p.add_argument("--json", default=str(Path(__file__).parent / "results" / "topk.json"))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--worker-sparse", type=int, default=0, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        saelens_worker(a.worker, bool(a.worker_sparse), a.steps, a.threads)
        return {}
    torch.set_num_threads(a.threads)
    from saex.dictionaries.batchtopk import BatchTopK
    from saex.dictionaries.topk import TopK

    x = batch(D, B, 0)
    methods = {
        "saex_topk": saex_step(TopK(D, R * D, [0], k=KEEP), x),
        "saex_batchtopk": saex_step(BatchTopK(D, R * D, [0], k=KEEP), x),
        "saex_topk_dense": dense_topk_step(TopK(D, R * D, [0], k=KEEP), x),
    }
    for step in methods.values():
        step()
    times: dict[str, list[float]] = {name: [] for name in methods}
    failed: dict[str, str] = {}
    saelens = [
        (f"saelens_{arch}{'_sparse' if sp else ''}", arch, sp) for arch in ("topk", "batchtopk") for sp in (False, True)
    ]
    if a.saelens_python:
        times |= {name: [] for name, _, _ in saelens}
    for r in range(a.repeats):
        for name, step in methods.items():
            times[name].append(timed(step, a.steps))
        if a.saelens_python:
            for name, arch, sp in saelens:
                if name in failed:
                    continue
                t = run_saelens(a.saelens_python, arch, sp, a.steps, a.threads)
                if isinstance(t, str):
                    failed[name] = t
                    print(f"{name}: failed: {t}", flush=True)
                else:
                    times[name].append(t)
        shown = ", ".join(f"{n} {t[-1] * 1e3:.0f} ms" for n, t in times.items() if t)
        print(f"round {r + 1}/{a.repeats}: {shown}", flush=True)
    med = {name: statistics.median(t) for name, t in times.items() if t}
    rate = {name: B / s for name, s in med.items()}
    print(
        f"\nactivations/s (d {D}, F {R * D}, k {KEEP}, batch {B}, {a.threads} threads; median of {a.repeats} rounds of {a.steps} steps)"
    )
    for name in med:
        print(f"  {name:<26} {rate[name]:>10,.0f} /s   {med[name] * 1e3:8.1f} ms/step")
    ratios = {"saex_topk / saex_topk_dense": rate["saex_topk"] / rate["saex_topk_dense"]}
    for arch in ("topk", "batchtopk"):
        for sp in ("", "_sparse"):
            if f"saelens_{arch}{sp}" in rate:
                ratios[f"saex_{arch} / saelens_{arch}{sp}"] = rate[f"saex_{arch}"] / rate[f"saelens_{arch}{sp}"]
    for k, v in ratios.items():
        print(f"  {k:<44} {v:5.2f}x")
    print("\nensemble of 8 against one member, every architecture (target ≤ 8.5x):")
    shape = tuple(int(v) for v in a.ensemble_shape.split(","))
    ens = ensemble_ratios(shape, max(1, a.steps - 1), a.repeats)  # type: ignore[arg-type]
    result = {
        "shape": {"d_in": D, "d_sae": R * D, "k": KEEP, "batch": B},
        "threads": a.threads,
        "torch": torch.__version__,
        "seconds_per_step": med,
        "activations_per_s": rate,
        "ratios": ratios,
        "failed": failed,
        "ensemble": {"shape": dict(zip(("d_in", "d_sae", "batch", "k"), shape)), "by_arch": ens},
        "rounds": times,
    }
    Path(a.json).parent.mkdir(parents=True, exist_ok=True)
    Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    if "--worker" not in sys.argv:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
