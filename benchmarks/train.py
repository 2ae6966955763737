"""Training-step throughput of saex's SAEs on the CPU, against the fp32 matmul peak and SAELens, in one run.

What is measured (activations/s = inputs per second; float32, CPU, one batch of B real activations per step,
the same batches for every method, inputs scaled to mean norm sqrt(d_in) as ``saex train --normalize
mean_norm`` does):

``peak``            the reference for GFLOP/s: ``torch.mm(x[B, d_in], W[d_in, F])``, 2·B·d_in·F FLOPs.
``tied``            ``saex.dictionaries.TiedL1`` with K = 1 member: ``.step(x, alpha)``, ``loss.backward()``,
                    ``Adam.step()`` (with ``zero_grad`` before), as ``saex.train`` steps it.
``tied8``           the same with an ensemble of K = 8 members (8 α values, α/2 .. 2α), one step for all.
``untied``, ``topk`` ``UntiedL1`` and ``TopK`` (k = 32, no dead latents, so no aux-k loss), K = 1.
``saelens``         SAELens's own training step on the same batches, run in a separate interpreter (its
                    dependencies stay out of saex's venv): a ``StandardTrainingSAE`` (float32, cpu, no
                    normalisation, l1_coefficient = α·d_in, which makes its loss d_in × saex's) stepped by
                    ``SAETrainer.step`` (forward, firing statistics, backward, ``clip_grad_norm_``, Adam,
                    ``zero_grad``, lr and coefficient schedulers), plus the per-step bookkeeping of
                    ``SAETrainer.fit`` (sparsity window, checkpoint check, step counter).
``trainer``         ``saex.train.trainer.train`` end to end (store reading, shuffling, scaling, finiteness
                    check, dead-feature counters, Adam, final checkpoint and export; eval off), from
                    initialisation. Each round runs two trainings, of N and 2N steps, and the rate is
                    N·B / (t(2N) - t(N)): fixed costs (store open and hashing, scale estimate, final
                    checkpoint, export) cancel. The raw 2N rate with its fixed costs is reported too.

Each SAE method is timed in two regimes, because saex's ReLU + L1 step switches to sparse (CSR) products
when the code density drops below ``saex.dictionaries.relu_l1.SPARSE_MAX_DENSITY``:

``dense``   the first steps from initialisation (the state after 2 steps; density ~50 %).
``steady``  after a warm-up of training: a TiedL1 trained ``--warmup-steps`` steps of ``--warmup-batch``
            inputs at α (Adam, lr 1e-3) on the same activations. Its state (weights and Adam moments) is
            cached under ``runs/bench/`` and reused. The K = 8 ensemble starts every member from it, the
            untied SAE and SAELens's SAE from the same function (W_enc = W_dec = M̂, b_enc = b; Adam moments
            carried over), so all of them see the same codes and L0. ``tied_sparse`` / ``tied_dense``
            force one path of the fused step (by setting SPARSE_MAX_DENSITY at run time) at the steady
            state, to show what the other path would cost.

Every timed call restores the method's saved state (weights and Adam moments) first, so every round does
the same work on the same data. Method: a warm-up call (one step) of each method, then ``--repeats`` rounds, every
method once per round in an order rotated from round to round (SAELens's worker is driven from the same
loop, so it is interleaved too); medians over rounds. Ratios are given as ratio of medians, as median of
the per-round (paired) ratios and as ratio of best rounds. GFLOP/s count 12·B·d_in·F FLOPs per step and
member (encoder and decoder matmuls, forward and backward: six B×d_in×F matmuls at 2 FLOPs per
multiply-add, the convention of benchmarks/README.md and of the peak). saex's dense
step does five of the six (no input gradient) and its sparse path far less arithmetic than that, so its
"dense-equivalent" fraction of peak can exceed 100 %; only the dense-phase fraction is a utilisation.

Results: a table on stdout and JSON in ``benchmarks/results/train.json`` (``--json`` to change).

    .venv/bin/python benchmarks/train.py --saelens-python /tmp/saelens-venv/bin/python            # ~2.5-4 min
    .venv/bin/python benchmarks/train.py --quick --saelens-python /tmp/saelens-venv/bin/python    # ~1-2 min

(once the warm-up state is cached: the first run trains it, ~4 min on 2 quiet cores, more under load).

The worker code path (``--saelens-worker``) imports only the standard library, torch, safetensors and
sae_lens.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _common import load_avg, machine  # benchmarks/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "train.json"
DEFAULT_ACTS = ROOT / "runs" / "bench" / "acts"
DEFAULT_HOOK = "blocks.6.hook_resid_post"
REPLY = "@@saelens-worker "


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--acts",
        default=None,
        help=f"activation store (default: {DEFAULT_ACTS.relative_to(ROOT)}, "
        "harvested there from smollm2-135m, 65536 tokens, if missing)",
    )
    p.add_argument("--hook", default=None, help=f"hook point (default {DEFAULT_HOOK}, or the store's first)")
    p.add_argument("--ratio", type=float, default=4.0, help="R = d_dict / d_in")
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--alpha", type=float, default=8.6e-4)
    p.add_argument("--k", type=int, default=32, help="topk: active latents")
    p.add_argument("--ensemble", type=int, default=8, help="members of the ensemble compared with K = 1")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--steps", type=int, default=None, help="timed steps per call, K = 1 methods (default 3; quick 1)")
    p.add_argument("--ensemble-steps", type=int, default=1, help="timed steps per call, ensemble")
    p.add_argument("--peak-reps", type=int, default=5, help="matmuls per call for the peak")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds (default 5; quick 2)")
    p.add_argument(
        "--warmup-steps",
        type=int,
        default=None,
        help="training steps to the steady state (default 2000; quick 300); cached",
    )
    p.add_argument("--warmup-batch", type=int, default=1024, help="batch size of the warm-up training")
    p.add_argument(
        "--trainer-steps",
        type=int,
        default=None,
        help="N for the end-to-end trainer difference N vs 2N (default 4; quick 2; 0 = skip)",
    )
    p.add_argument("--only", default=None, help="comma-separated subset of methods (peak is always run)")
    p.add_argument(
        "--saelens-python",
        default=None,
        help="python of a venv with sae-lens installed (never saex's); without it SAELens is skipped",
    )
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", default=str(ROOT / "runs" / "bench"), help="where the warm-up state is cached")
    p.add_argument("--no-cache", action="store_true", help="redo the warm-up training even if cached")
    p.add_argument(
        "--profile",
        action="store_true",
        help="after timing, profile the tied K=1 and K=8 steps (cProfile and torch.profiler) and print the hotspots",
    )
    p.add_argument(
        "--json", default=None, help="output JSON (default benchmarks/results/train.json; --quick: train-quick.json)"
    )
    p.add_argument(
        "--quick", action="store_true", help="~1-2 min smoke run (1 step per call, 2 rounds, 300 warm-up steps)"
    )
    p.add_argument("--saelens-worker", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    quick = {"steps": 1, "repeats": 2, "warmup_steps": 300, "trainer_steps": 2}
    full = {"steps": 3, "repeats": 5, "warmup_steps": 2000, "trainer_steps": 4}
    for k, v in (quick if a.quick else full).items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.json is None:
        a.json = str(RESULTS.with_name("train-quick.json") if a.quick else RESULTS)
    return a


# --- shared by both sides: save and restore weights and Adam state ------------------------------------


def snapshot(params: list[torch.Tensor], opt: torch.optim.Optimizer) -> tuple[list, list]:
    return (
        [p.detach().clone() for p in params],
        [{k: (v.clone() if torch.is_tensor(v) else v) for k, v in opt.state.get(p, {}).items()} for p in params],
    )


def restore(params: list[torch.Tensor], opt: torch.optim.Optimizer, snap: tuple[list, list]) -> None:
    saved_p, saved_s = snap
    with torch.no_grad():
        for p, v, s in zip(params, saved_p, saved_s):
            p.copy_(v)
            p.grad = None
            cur = opt.state.get(p)
            if cur is not None and cur.keys() == s.keys():
                for k, t in s.items():
                    if torch.is_tensor(t):
                        cur[k].copy_(t)
                    else:
                        cur[k] = t
            else:
                opt.state[p] = {k: (t.clone() if torch.is_tensor(t) else t) for k, t in s.items()}


def set_adam_state(
    opt: torch.optim.Optimizer, p: torch.Tensor, step: float, m: torch.Tensor | None, v: torch.Tensor | None
) -> None:
    opt.state[p] = {
        "step": torch.tensor(float(step)),
        "exp_avg": torch.zeros_like(p) if m is None else torch.empty_like(p).copy_(m),
        "exp_avg_sq": torch.zeros_like(p) if v is None else torch.empty_like(p).copy_(v),
    }


# --- the SAELens worker: imports torch, safetensors and sae_lens only ---------------------------------


def saelens_worker(folder: str, threads: int | None) -> None:
    import sae_lens
    from sae_lens.config import LoggingConfig, SAETrainerConfig
    from sae_lens.saes.standard_sae import StandardTrainingSAE, StandardTrainingSAEConfig
    from sae_lens.training.sae_trainer import SAETrainer
    from safetensors.torch import load_file

    if threads:
        torch.set_num_threads(threads)
    d = Path(folder)
    cfg = json.loads((d / "config.json").read_text())
    data = load_file(str(d / "data.safetensors"))
    batches = [data[f"x{i}"] for i in range(cfg["n_batches"])]
    B, D, F = cfg["batch_size"], cfg["d_in"], cfg["d_sae"]

    def reply(obj):
        sys.stdout.write(REPLY + json.dumps(obj) + "\n")
        sys.stdout.flush()

    def build(regime: str):
        torch.manual_seed(cfg["seed"])
        sae = StandardTrainingSAE(
            StandardTrainingSAEConfig(
                d_in=D,
                d_sae=F,
                dtype="float32",
                device="cpu",
                normalize_activations="none",
                l1_coefficient=cfg["l1_coefficient"],
            )
        )
        tcfg = SAETrainerConfig(
            total_training_samples=10**12,
            train_batch_size_samples=B,
            lr=cfg["lr"],
            lr_end=cfg["lr"] / 10,
            device="cpu",
            logger=LoggingConfig(log_to_wandb=False),
        )
        trainer = SAETrainer(cfg=tcfg, sae=sae, data_provider=iter(()))
        if regime == "steady":
            # The warmed-up saex tied SAE as the same function: W_enc = M̂ᵀ, W_dec = M̂, b_enc = b, b_dec = 0.
            # SAELens's loss is d_in × saex's, so Adam's moments scale by d_in and d_in².
            with torch.no_grad():
                sae.W_enc.copy_(data["M_hat"].T)
                sae.W_dec.copy_(data["M_hat"])
                sae.b_enc.copy_(data["b"])
                sae.b_dec.zero_()
            opt, s = trainer.optimizer, cfg["warm_step"]
            set_adam_state(opt, sae.W_enc, s, data["M_m"].T * D, data["M_v"].T * D * D)
            set_adam_state(opt, sae.W_dec, s, data["M_m"] * D, data["M_v"] * D * D)
            set_adam_state(opt, sae.b_enc, s, data["b_m"] * D, data["b_v"] * D * D)
            set_adam_state(opt, sae.b_dec, s, None, None)
        else:
            for x in batches[:2]:  # as for saex: the state after two steps from initialisation
                run_step(trainer, x)
        params = list(sae.parameters())
        return trainer, params, snapshot(params, trainer.optimizer)

    def run_step(trainer, x):
        # SAETrainer.fit's loop body, less wandb logging and the progress bar.
        trainer.maybe_reset_sparsity()
        out = trainer.step(x)
        trainer._checkpoint_if_needed()
        trainer.n_training_steps += 1
        return out

    models = {r: build(r) for r in ("dense", "steady")}
    reply(
        {
            "ready": True,
            "sae_lens": getattr(sae_lens, "__version__", "?"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
    )
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd.get("quit"):
            break
        trainer, params, snap = models[cmd["regime"]]
        restore(params, trainer.optimizer, snap)
        trainer.n_training_steps = 0
        n, l0 = cmd["steps"], []
        t = time.perf_counter()
        for x in batches[:n]:
            out = run_step(trainer, x)
            l0.append(out.feature_acts.detach())
        dt = time.perf_counter() - t
        reply({"seconds": dt, "l0": statistics.fmean(float((c > 0).sum(-1).float().mean()) for c in l0)})


class SAELensWorker:
    def __init__(self, python: str, folder: Path, threads: int):
        self.err_path = folder / "worker.err"
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).resolve()), "--saelens-worker", str(folder), "--threads", str(threads)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(self.err_path, "w"),  # noqa: SIM115 (closed with the process in close())
            text=True,
            cwd=str(folder),
        )
        self.info = self._read()

    def _read(self) -> dict:
        while True:
            line = self.proc.stdout.readline()
            if not line:
                self.proc.wait()
                err = self.err_path.read_text()[-3000:]
                raise RuntimeError(f"SAELens worker exited with code {self.proc.returncode}:\n{err}")
            if line.startswith(REPLY):
                return json.loads(line[len(REPLY) :])

    def run(self, regime: str, steps: int) -> dict:
        self.proc.stdin.write(json.dumps({"regime": regime, "steps": steps}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        try:
            self.proc.stdin.write(json.dumps({"quit": True}) + "\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)
        except Exception:
            self.proc.kill()


# --- saex side ----------------------------------------------------------------------------------------


def ensure_store(a) -> tuple[Path, bool]:
    if a.acts:
        return Path(a.acts), False
    if (DEFAULT_ACTS / "manifest.json").is_file():
        return DEFAULT_ACTS, False
    from saex.stages.harvest import HarvestConfig
    from saex.stages.harvest import run as harvest

    print(f"harvesting real activations into {DEFAULT_ACTS} (once, ~40 s) ...", file=sys.stderr)
    harvest(
        HarvestConfig(
            out=str(DEFAULT_ACTS),
            model="smollm2-135m",
            corpus="default",
            hooks=DEFAULT_HOOK,
            tokens=65536,
            dtype="float32",
        ),
        progress=False,
    )
    return DEFAULT_ACTS, True


def saex_steps(model, opt, coef_K, batches) -> list[float]:
    """saex's training step as saex.train does it (less the lr schedule and dead-feature counters)."""
    l0 = []
    for x in batches:
        opt.zero_grad(set_to_none=True)
        o = model.step(x, coef_K)
        o.loss.backward()
        opt.step()
        l0.append(o.l0_K)
    return torch.stack(l0).mean(0).tolist()


def warm_state(a, x_ND, d_in, F, store_hash: str) -> tuple[dict, dict]:
    """A TiedL1 (K = 1) trained to the steady state; cached by everything that determines it."""
    import hashlib

    from safetensors.torch import load_file, save_file

    from saex.dictionaries import TiedL1

    key = hashlib.sha256(
        json.dumps(
            [store_hash, a.hook, F, a.alpha, a.lr, a.warmup_steps, a.warmup_batch, a.seed, "tied_l1-warm-v1"]
        ).encode()
    ).hexdigest()[:16]
    path = Path(a.cache) / f"warm-tied_l1-{key}.safetensors"
    if path.is_file() and not a.no_cache:
        t = load_file(str(path))
        info = json.loads(path.with_suffix(".json").read_text())
        info["reused"] = str(path)
        return t, info
    model = TiedL1(d_in, F, seeds=[a.seed + 1])
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    coef = torch.tensor([a.alpha])
    gen = torch.Generator().manual_seed(a.seed + 12345)
    N, Bw = x_ND.shape[0], a.warmup_batch
    perm, pos, trace = torch.randperm(N, generator=gen), 0, []
    t0 = time.perf_counter()
    print(
        f"warm-up training: {a.warmup_steps} steps of {Bw} at alpha {a.alpha:g} (cached afterwards) ...",
        file=sys.stderr,
    )
    for i in range(a.warmup_steps):
        if pos + Bw > N:
            perm, pos = torch.randperm(N, generator=gen), 0
        l0 = saex_steps(model, opt, coef, [x_ND[perm[pos : pos + Bw]]])
        pos += Bw
        if i % 100 == 0 or i == a.warmup_steps - 1:
            trace.append({"step": i + 1, "l0": l0[0]})
            print(f"  warm-up step {i + 1}: L0 {l0[0]:.1f}", file=sys.stderr)
    st = opt.state
    tensors = {
        "M": model.M_KFD.detach()[0].contiguous(),
        "b": model.b_KF.detach()[0].contiguous(),
        "M_m": st[model.M_KFD]["exp_avg"][0].contiguous(),
        "M_v": st[model.M_KFD]["exp_avg_sq"][0].contiguous(),
        "b_m": st[model.b_KF]["exp_avg"][0].contiguous(),
        "b_v": st[model.b_KF]["exp_avg_sq"][0].contiguous(),
    }
    info = {
        "steps": a.warmup_steps,
        "batch": Bw,
        "alpha": a.alpha,
        "lr": a.lr,
        "seconds": time.perf_counter() - t0,
        "l0_trace": trace,
        "adam_step": float(st[model.M_KFD]["step"]),
        "key": key,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(json.dumps(info, indent=1) + "\n")
    info["reused"] = None
    return tensors, info


class SaexMethod:
    """A model + Adam with a saved state; each call restores it and times ``n`` steps."""

    def __init__(self, model, coef_K, lr, init_batches, warm=None, density=None):
        self.model, self.coef = model, coef_K
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)  # as saex.train.trainer builds it
        self.params = list(model.parameters())
        self.density = density  # None: saex's own threshold; else forced SPARSE_MAX_DENSITY
        if warm is None:
            saex_steps(model, self.opt, coef_K, init_batches)  # the state after two steps from init
        else:
            warm(model, self.opt)
        self.snap = snapshot(self.params, self.opt)

    def __call__(self, batches):
        from saex.dictionaries import relu_l1

        restore(self.params, self.opt, self.snap)
        old = getattr(relu_l1, "SPARSE_MAX_DENSITY", None)
        if self.density is not None:
            relu_l1.SPARSE_MAX_DENSITY = self.density
        try:
            t = time.perf_counter()
            l0 = saex_steps(self.model, self.opt, self.coef, batches)
            return time.perf_counter() - t, l0
        finally:
            if self.density is not None:
                relu_l1.SPARSE_MAX_DENSITY = old


def run_trainer(acts: Path, hook: str, a, steps: int, tmp_root: Path) -> float:
    import gc

    from saex.train.config import TrainConfig
    from saex.train.trainer import train

    out = Path(tempfile.mkdtemp(dir=tmp_root, prefix="train-"))
    cfg = TrainConfig(
        acts=str(acts),
        hook=hook,
        out=str(out / "run"),
        arch="tied_l1",
        ratio=f"{a.ratio:g}",
        alpha=repr(a.alpha),
        steps=steps,
        batch_size=a.batch_size,
        lr=a.lr,
        normalize="mean_norm",
        eval_every=0,
        checkpoint_every=0,
        seed=a.seed,
    )
    try:
        gc.collect()
        t = time.perf_counter()
        train(cfg, progress=False)
        return time.perf_counter() - t
    finally:
        shutil.rmtree(out, ignore_errors=True)


def profile_tied(methods: dict, batches, ens_batches) -> str:
    """cProfile (Python-level) and torch.profiler (operator-level) of saex's tied steps."""
    import cProfile
    import io
    import pstats

    from torch.profiler import ProfilerActivity, profile

    buf = io.StringIO()
    for name in ("tied_dense", "tied_steady", "tied8_dense", "tied8_steady"):
        if name not in methods:
            continue
        m = methods[name]
        bs = ens_batches if name.startswith("tied8") else batches
        restore(m.params, m.opt, m.snap)
        pr = cProfile.Profile()
        pr.enable()
        saex_steps(m.model, m.opt, m.coef, bs)
        pr.disable()
        buf.write(f"\n=== cProfile: {name}, {len(bs)} step(s), sorted by tottime ===\n")
        pstats.Stats(pr, stream=buf).strip_dirs().sort_stats("tottime").print_stats(15)
        restore(m.params, m.opt, m.snap)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            saex_steps(m.model, m.opt, m.coef, bs)
        buf.write(f"=== torch.profiler: {name}, {len(bs)} step(s), operators by self CPU time ===\n")
        buf.write(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18) + "\n")
    return buf.getvalue()


def no_nan(obj):
    """JSON has no NaN: write null for the rounds left out."""
    if isinstance(obj, float) and obj != obj:
        return None
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [no_nan(v) for v in obj]
    return obj


def main(argv=None) -> dict:
    a = parse_args(argv)
    if a.saelens_worker:
        saelens_worker(a.saelens_worker, a.threads)
        return {}
    if a.threads:
        torch.set_num_threads(a.threads)
    threads = torch.get_num_threads()
    t_start = time.perf_counter()
    load_before = load_avg()

    import math

    from saex.dictionaries import TiedL1, TopK, UntiedL1, relu_l1
    from saex.store.reader import ActivationStore
    from saex.train.trainer import store_hash

    acts, harvested = ensure_store(a)
    store = ActivationStore(acts)
    a.hook = a.hook or (DEFAULT_HOOK if DEFAULT_HOOK in store.hooks else store.hooks[0])
    x_ND = torch.cat([store.load_shard("train", i, a.hook) for i in range(len(store.shards("train")))])
    N, D = x_ND.shape
    B, F, K8 = a.batch_size, round(a.ratio * D), a.ensemble
    scale = math.sqrt(D) / x_ND.norm(dim=1).mean().item()
    x_ND *= scale
    n_batches = max(a.steps, a.ensemble_steps, 2)
    if n_batches * B > N:
        raise SystemExit(f"the store has {N} rows, fewer than {n_batches} batches of {B}")
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(a.seed))
    batches = [x_ND[perm[i * B : (i + 1) * B]].contiguous() for i in range(n_batches)]
    s_hash = store_hash(store, a.hook)

    warm, warm_info = warm_state(a, x_ND, D, F, s_hash)
    M_hat = warm["M"] / warm["M"].norm(dim=-1, keepdim=True).clamp_min(1e-8)
    wstep = warm_info["adam_step"]
    alpha1 = torch.tensor([a.alpha])
    alphas8 = torch.tensor([a.alpha * 2 ** (-1 + 2 * i / (K8 - 1)) for i in range(K8)]) if K8 > 1 else alpha1

    def warm_tied(K):
        def f(model, opt):
            with torch.no_grad():
                model.M_KFD.copy_(warm["M"].expand(K, F, D))
                model.b_KF.copy_(warm["b"].expand(K, F))
            set_adam_state(opt, model.M_KFD, wstep, warm["M_m"].expand(K, F, D), warm["M_v"].expand(K, F, D))
            set_adam_state(opt, model.b_KF, wstep, warm["b_m"].expand(K, F), warm["b_v"].expand(K, F))

        return f

    def warm_untied(model, opt):
        with torch.no_grad():
            model.W_enc_KFD.copy_(M_hat[None])
            model.W_dec_KFD.copy_(M_hat[None])
            model.b_enc_KF.copy_(warm["b"][None])
        # The tied M's moments (gradient of both uses) stand in for each of the untied weights'.
        set_adam_state(opt, model.W_enc_KFD, wstep, warm["M_m"], warm["M_v"])
        set_adam_state(opt, model.W_dec_KFD, wstep, warm["M_m"], warm["M_v"])
        set_adam_state(opt, model.b_enc_KF, wstep, warm["b_m"], warm["b_v"])

    ib = batches[:2]
    seeds1, seeds8 = [a.seed + 1], [a.seed + 1 + i for i in range(K8)]
    has_threshold = hasattr(relu_l1, "SPARSE_MAX_DENSITY")
    builders = {
        "tied_dense": lambda: SaexMethod(TiedL1(D, F, seeds1), alpha1, a.lr, ib),
        "tied_steady": lambda: SaexMethod(TiedL1(D, F, seeds1), alpha1, a.lr, ib, warm_tied(1)),
        "tied_steady_forced_sparse": lambda: SaexMethod(TiedL1(D, F, seeds1), alpha1, a.lr, ib, warm_tied(1), 1.0),
        "tied_steady_forced_dense": lambda: SaexMethod(TiedL1(D, F, seeds1), alpha1, a.lr, ib, warm_tied(1), -1.0),
        "tied8_dense": lambda: SaexMethod(TiedL1(D, F, seeds8), alphas8, a.lr, ib),
        "tied8_steady": lambda: SaexMethod(TiedL1(D, F, seeds8), alphas8, a.lr, ib, warm_tied(K8)),
        "untied_dense": lambda: SaexMethod(UntiedL1(D, F, seeds1), alpha1, a.lr, ib),
        "untied_steady": lambda: SaexMethod(UntiedL1(D, F, seeds1), alpha1, a.lr, ib, warm_untied),
        "topk": lambda: SaexMethod(TopK(D, F, seeds1, k=a.k), alpha1, a.lr, ib),
    }
    if not has_threshold:
        print("saex.dictionaries.relu_l1 has no SPARSE_MAX_DENSITY: forced-path variants skipped", file=sys.stderr)
        del builders["tied_steady_forced_sparse"], builders["tied_steady_forced_dense"]
    only = set(a.only.split(",")) if a.only else None
    wanted = [m for m in [*builders, "saelens_dense", "saelens_steady", "trainer"] if only is None or m in only]

    tmp_root = Path(tempfile.mkdtemp(prefix="saex-train-bench-"))
    methods = {m: builders[m]() for m in wanted if m in builders}
    steps_of = {m: (a.ensemble_steps if m.startswith("tied8") else a.steps) for m in methods}

    # SAELens worker
    saelens = {"status": "not requested (pass --saelens-python PATH)"}
    worker = None
    if a.saelens_python and any(m.startswith("saelens") for m in wanted):
        from safetensors.torch import save_file

        wdir = tmp_root / "saelens"
        wdir.mkdir()
        data = {f"x{i}": b for i, b in enumerate(batches)}
        data |= {
            "M_hat": M_hat.contiguous(),
            "b": warm["b"],
            "M_m": warm["M_m"],
            "M_v": warm["M_v"],
            "b_m": warm["b_m"],
            "b_v": warm["b_v"],
        }
        save_file(data, str(wdir / "data.safetensors"))
        (wdir / "config.json").write_text(
            json.dumps(
                {
                    "n_batches": n_batches,
                    "batch_size": B,
                    "d_in": D,
                    "d_sae": F,
                    "lr": a.lr,
                    "seed": a.seed,
                    "l1_coefficient": a.alpha * D,
                    "warm_step": wstep,
                }
            )
        )
        try:
            worker = SAELensWorker(a.saelens_python, wdir, threads)
            saelens = {"status": "ok", "python": a.saelens_python, **worker.info, "l1_coefficient": a.alpha * D}
        except Exception as e:  # noqa: BLE001 - report any failure to start and carry on without SAELens
            saelens = {"status": "skipped", "python": a.saelens_python, "error": str(e)}
            print(f"SAELens skipped: {e}", file=sys.stderr)
    if worker is None:
        wanted = [m for m in wanted if not m.startswith("saelens")]
    for m in wanted:
        if m.startswith("saelens"):
            steps_of[m] = a.steps
    if a.trainer_steps <= 0 and "trainer" in wanted:
        wanted.remove("trainer")

    # peak
    xp, Wp = batches[0], torch.randn(D, F, generator=torch.Generator().manual_seed(1)) / math.sqrt(D)
    outp = torch.empty(B, F)

    def peak_call(reps):
        t = time.perf_counter()
        for _ in range(reps):
            torch.mm(xp, Wp, out=outp)
        return (time.perf_counter() - t) / reps

    timings: dict[str, list] = {m: [] for m in ["peak", *wanted]}
    l0s: dict[str, list] = {m: [] for m in wanted if m != "trainer"}
    trainer_raw = {"N": [], "2N": []}

    def call(m, warmup=False):
        if m == "peak":
            return peak_call(1 if warmup else a.peak_reps), None
        n = 1 if warmup else steps_of.get(m, 1)
        if m in methods:
            t, l0 = methods[m](batches[:n])
            return t / n, l0
        if m.startswith("saelens"):
            r = worker.run(m.split("_")[1], n)
            return r["seconds"] / n, [r["l0"]]
        if m == "trainer":
            n = a.trainer_steps
            if warmup:
                return run_trainer(acts, a.hook, a, 1, tmp_root), None
            if len(trainer_raw["N"]) % 2 == 0:
                t1 = run_trainer(acts, a.hook, a, n, tmp_root)
                t2 = run_trainer(acts, a.hook, a, 2 * n, tmp_root)
            else:
                t2 = run_trainer(acts, a.hook, a, 2 * n, tmp_root)
                t1 = run_trainer(acts, a.hook, a, n, tmp_root)
            trainer_raw["N"].append(t1)
            trainer_raw["2N"].append(t2)
            # A round where load noise makes t(2N) <= t(N) has no usable difference: left out (NaN).
            return ((t2 - t1) / n if t2 > t1 else float("nan")), None
        raise ValueError(m)

    order0 = ["peak", *wanted]
    print(
        f"d_in {D}, F {F}, batch {B}, store {acts} ({N} rows, scale {scale:.4g}), threads {threads}, "
        f"load avg {load_before}; steady state: {warm_info['steps']} warm-up steps "
        f"({'cached' if warm_info['reused'] else 'trained now'})",
        file=sys.stderr,
    )
    warm_s = {}
    for m in order0:
        t = time.perf_counter()
        call(m, warmup=True)
        warm_s[m] = time.perf_counter() - t
    print("  warm-up calls: " + ", ".join(f"{m} {v:.1f}s" for m, v in warm_s.items()), file=sys.stderr)
    for r in range(a.repeats):
        order = order0[r % len(order0) :] + order0[: r % len(order0)]
        for m in order:
            t, l0 = call(m)
            timings[m].append(t)
            if l0 is not None:
                l0s[m].append(l0)
        print(
            f"  round {r + 1}/{a.repeats}: " + ", ".join(f"{m} {timings[m][-1]:.3f}s" for m in order0), file=sys.stderr
        )
    if worker is not None:
        worker.close()
        saelens["worker_stderr_tail"] = (tmp_root / "saelens" / "worker.err").read_text()[-2000:]

    profile = None
    if a.profile:
        profile = profile_tied(methods, batches[: a.steps], batches[: a.ensemble_steps])
        print(profile)
    shutil.rmtree(tmp_root, ignore_errors=True)
    load_after = load_avg()
    total_s = time.perf_counter() - t_start

    # --- summary -----------------------------------------------------------------------------------
    flop_step = 12 * B * D * F
    flop_peak = 2 * B * D * F

    def finite(v):
        return [t for t in v if t == t]

    med_t = {m: statistics.median(finite(v)) for m, v in timings.items() if finite(v)}
    peak_gflops = [flop_peak / t / 1e9 for t in timings["peak"]]
    summary = {
        "peak": {
            "median_gflops": statistics.median(peak_gflops),
            "best_gflops": max(peak_gflops),
            "gflops": peak_gflops,
        }
    }
    wanted = [m for m in wanted if m in med_t]
    for m in wanted:
        ts = timings[m]
        acts_s = [B / t for t in finite(ts)]
        row = {
            "median_step_s": med_t[m],
            "median_acts_per_s": statistics.median(acts_s),
            "best_acts_per_s": max(acts_s),
            "acts_per_s": acts_s,
        }
        k = K8 if m.startswith("tied8") else 1
        gf = [k * flop_step / t / 1e9 for t in ts]
        row["dense_equiv_gflops"] = statistics.median(finite(gf))
        row["fraction_of_peak_median_paired"] = statistics.median(finite([g / p for g, p in zip(gf, peak_gflops)]))
        row["fraction_of_peak_of_medians"] = row["dense_equiv_gflops"] / summary["peak"]["median_gflops"]
        if m in l0s and l0s[m]:
            per = [statistics.fmean(x[i] for x in l0s[m]) for i in range(len(l0s[m][0]))]
            row["l0"] = per if len(per) > 1 else per[0]
            row["density"] = [v / F for v in per] if len(per) > 1 else per[0] / F
        summary[m] = row
    if "trainer" in wanted:
        n = a.trainer_steps
        summary["trainer"]["raw_2N_acts_per_s"] = [2 * n * B / t for t in trainer_raw["2N"]]
        summary["trainer"]["median_raw_2N_acts_per_s"] = statistics.median(summary["trainer"]["raw_2N_acts_per_s"])
        summary["trainer"]["fixed_cost_s"] = statistics.median(
            [t1 - (t2 - t1) for t1, t2 in zip(trainer_raw["N"], trainer_raw["2N"])]
        )

    def ratio(num, den, mult=1.0, invert=False):
        """Ratio of step times num/den (or rates den/num if invert); mult scales the denominator."""
        if num not in med_t or den not in med_t:
            return None
        f = (lambda p, q: q * mult / p) if invert else (lambda p, q: p / (q * mult))
        paired = finite([f(p, q) for p, q in zip(timings[num], timings[den])])
        return {
            "ratio_of_medians": f(med_t[num], med_t[den]),
            "median_paired": statistics.median(paired),
            "ratio_of_best": f(min(finite(timings[num])), min(finite(timings[den]))),
            "paired": paired,
        }

    ratios = {
        "ensemble_dense_vs_1": ratio("tied8_dense", "tied_dense"),
        "ensemble_steady_vs_1": ratio("tied8_steady", "tied_steady"),
        "tied_vs_saelens_dense": ratio("tied_dense", "saelens_dense", invert=True),
        "tied_vs_saelens_steady": ratio("tied_steady", "saelens_steady", invert=True),
        "untied_vs_saelens_dense": ratio("untied_dense", "saelens_dense", invert=True),
        "untied_vs_saelens_steady": ratio("untied_steady", "saelens_steady", invert=True),
        "trainer_vs_tied_step_dense": ratio("trainer", "tied_dense", invert=True),
        "tied_steady_vs_dense": ratio("tied_steady", "tied_dense", invert=True),
    }
    ratios = {k: v for k, v in ratios.items() if v is not None}

    labels = {
        "tied_dense": "saex tied_l1 K=1, dense phase",
        "tied_steady": "saex tied_l1 K=1, steady",
        "tied_steady_forced_sparse": "  same, CSR path forced",
        "tied_steady_forced_dense": "  same, dense path forced",
        "tied8_dense": f"saex tied_l1 K={K8}, dense phase",
        "tied8_steady": f"saex tied_l1 K={K8}, steady",
        "untied_dense": "saex untied_l1 K=1, dense phase",
        "untied_steady": "saex untied_l1 K=1, steady",
        "topk": f"saex topk k={a.k} K=1 (no aux)",
        "saelens_dense": "SAELens standard, dense phase",
        "saelens_steady": "SAELens standard, steady",
        "trainer": "saex train() end to end (2N-N), dense",
    }
    print(
        f"\nfp32 matmul peak [{B}x{D}]@[{D}x{F}]: {summary['peak']['median_gflops']:.1f} GFLOP/s median "
        f"(best {summary['peak']['best_gflops']:.1f})"
    )
    print(
        f"{'method':38s} {'step ms':>8s} {'act/s med':>10s} {'act/s best':>10s} {'GFLOP/s*':>9s} {'%peak*':>7s} {'L0':>8s}"
    )
    for m in wanted:
        r = summary[m]
        l0 = r.get("l0")
        l0s_ = "-" if l0 is None else (f"{l0:.0f}" if not isinstance(l0, list) else f"{statistics.fmean(l0):.0f}avg")
        print(
            f"{labels[m]:38s} {r['median_step_s'] * 1e3:8.0f} {r['median_acts_per_s']:10.0f} "
            f"{r['best_acts_per_s']:10.0f} {r['dense_equiv_gflops']:9.1f} "
            f"{100 * r['fraction_of_peak_median_paired']:6.0f}% {l0s_:>8s}"
        )
    print(
        "* dense-equivalent: 12·B·d_in·F FLOPs per step (per member) / step time; the sparse path does less "
        "arithmetic, so this can exceed 100%; %peak is the median of per-round paired fractions."
    )
    targets = {
        "ensemble_dense_vs_1": "<= 8.5",
        "ensemble_steady_vs_1": "<= 8.5",
        "tied_vs_saelens_dense": ">= 1.5",
        "tied_vs_saelens_steady": ">= 1.5",
    }
    print()
    for k, v in ratios.items():
        print(
            f"{k:28s} of medians {v['ratio_of_medians']:6.3f}   median paired {v['median_paired']:6.3f}   "
            f"of best {v['ratio_of_best']:6.3f}" + (f"   (target {targets[k]})" if k in targets else "")
        )
    for m in ("tied_dense", "tied_steady"):
        if m in summary:
            print(
                f"{m} fraction of peak (paired median): {100 * summary[m]['fraction_of_peak_median_paired']:.0f}% "
                f"(target >= 60% for tied_l1 at d=576, R=4, B=4096)"
            )
    if "trainer" in summary:
        print(
            f"trainer fixed cost {summary['trainer']['fixed_cost_s']:.2f}s; raw 2N rate "
            f"{summary['trainer']['median_raw_2N_acts_per_s']:.0f} act/s"
        )
    print(
        f"SAELens: {saelens.get('status')}" + (f" ({saelens.get('error', '')[:300]})" if saelens.get("error") else "")
    )
    print(f"load average before {load_before}, after {load_after}; total {total_s:.0f}s")

    result = {
        "benchmark": "train",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": machine(torch.__version__, threads, load_before, load_after),
        "config": {
            **{k: v for k, v in vars(a).items() if k not in {"json", "saelens_worker"}},
            "acts": str(acts),
            "harvested_now": harvested,
            "rows": N,
            "d_in": D,
            "d_dict": F,
            "input_scale": scale,
            "ensemble_alphas": alphas8.tolist(),
            "methods": wanted,
            "steps_per_call": steps_of,
            "flops_per_step_convention": "12*B*d_in*d_dict (per member)",
            "sparse_max_density": getattr(relu_l1, "SPARSE_MAX_DENSITY", None),
        },
        "warmup": warm_info,
        "saelens": saelens,
        "warmup_call_s": warm_s,
        "timings_s_per_step": timings,
        "trainer_raw_s": trainer_raw,
        "l0_per_round": l0s,
        "summary": summary,
        "ratios": ratios,
        "total_s": total_s,
        "profile": profile,
    }
    out = Path(a.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(no_nan(result), indent=1) + "\n")
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
