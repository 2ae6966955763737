"""``saex train``: a whole sweep of sparse autoencoders from one shuffled pass over an activation store.

Implements the paper's training (Cunningham et al. 2023, §2 and App. B; docs/training.md) the way its
reference code did it — many α values trained at once in one vmapped ensemble — generalised: members of
equal width are stacked into one model with [K, ...] parameters, stepped by one fused forward and
backward (see ``saex.dictionaries.relu_l1``), each batch is read once and fed to every group, and one
Adam (lr 1e-3 by default) updates all of them. Optional extras beyond the paper: learning-rate
warm-up and decay, input scaling to a fixed mean norm (folded back into the saved weights), dead-feature
resampling (Bricken et al. 2023) for every architecture, the registered modern architectures (TopK with
aux-k, BatchTopK, Matryoshka, JumpReLU, Gated: ``saex.dictionaries``), and transcoders (``--target``: read one
hook point, reconstruct another). Held-out MSE, FVU, L0 and dead fraction are logged to ``metrics.jsonl``;
atomic checkpoints make a killed run resume to the same weights.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

import saex
from saex import distributed
from saex.config import recorded_identity
from saex.dictionaries.ensemble import Ensemble, Member, architectures
from saex.errors import SaexError
from saex.evaluate.metrics import ReconstructionMetrics
from saex.files import (
    open_output_folder,
    read_jsonl,
    remove_stale_temporaries,
    write_json_atomic,
)
from saex.store.reader import ActivationStore, RowFilter, store_hash
from saex.train import checkpoint, convergence
from saex.train.config import TrainConfig, dead_window, eval_every, validate

RUN = "run.json"
METRICS = "metrics.jsonl"


@dataclass
class Group:
    """Members of one width (and one k, for TopK), stacked in one ensemble."""

    members: list[Member]
    model: Ensemble
    coef_K: torch.Tensor
    since_fired_KF: torch.Tensor
    step_fn: torch.nn.Module | None = None
    """What a training step calls: the model, or its DistributedDataParallel wrapper."""


def _build_groups(cfg: TrainConfig, members: list[Member], d_in: int, d_out: int | None) -> list[Group]:
    arch = architectures()[cfg.arch]
    keys = sorted({arch.group_key(m) for m in members}, key=lambda key: tuple(v or 0 for v in key))
    groups = []
    for key in keys:
        ms = [m for m in members if arch.group_key(m) == key]
        model = arch.build(cfg, d_in, ms[0].d_dict, ms, d_out)
        groups.append(
            Group(ms, model, torch.tensor([m.alpha for m in ms]), torch.zeros(len(ms), ms[0].d_dict, dtype=torch.long))
        )
    return groups


def lr_at(cfg: TrainConfig, step: int, total: int) -> float:
    """Linear warm-up over ``warmup_steps``, linear decay to 0 over the last ``decay_fraction`` of steps."""
    scale = 1.0
    if cfg.warmup_steps:
        scale = min(scale, (step + 1) / cfg.warmup_steps)
    decay_steps = int(cfg.decay_fraction * total)
    if decay_steps:
        scale = min(scale, (total - step) / decay_steps)
    return cfg.lr * scale


def input_scale(store: ActivationStore, hook: str, normalize: str, rows: RowFilter) -> float:
    """Factor s with mean ‖s·x‖ = sqrt(d_in) over the kept rows of the first train shard (deterministic)."""
    if normalize == "none":
        return 1.0
    x = store.load_kept("train", 0, hook, rows)
    return math.sqrt(x.shape[1]) / x.norm(dim=1).mean().item()


def _heldout_sample(store: ActivationStore, hooks: list[str], n: int, seed: int, rows: RowFilter) -> list[torch.Tensor]:
    """The same held-out rows at each hook point (kept at all of them): a seeded sample of at most n."""
    kept = store.kept_rows("heldout", rows, hooks[0])
    for h in hooks[1:]:
        kept = np.intersect1d(kept, store.kept_rows("heldout", rows, h))
    if len(kept) == 0:
        raise SaexError(f"the store {store.path} has no held-out rows to evaluate on")
    idx = np.sort(kept[np.random.default_rng([seed, 1]).permutation(len(kept))[: min(n, len(kept))]])
    out = []
    for h in hooks:
        x = store.rows("heldout", h, idx)
        if not torch.isfinite(x).all():
            raise SaexError(
                f"the store {store.path} holds NaN or Inf activations at {h} in its held-out split; "
                "re-harvest with --dtype float32"
            )
        out.append(x)
    return out


@torch.no_grad()
def evaluate(
    sae,
    x_ND: torch.Tensor,
    scale: float = 1.0,
    alpha: float = 0.0,
    y_NO: torch.Tensor | None = None,
    penalty: Callable[[Any, torch.Tensor, torch.Tensor, float], float] | None = None,
) -> dict:
    """Held-out numbers of one exported dictionary on unscaled inputs: MSE, FVU (about the mean) and L0
    (``saex.evaluate.metrics``) of its reconstruction of x, or of a transcoder's target ``y_NO``; the training
    objective, MSE + α·L1 or MSE + ``penalty(sae, x, c, s)`` (``Ensemble.held_out_penalty``), in the scaled units
    it was trained in (an exported SAE gives codes c/s and x̂/s for x, s the target's scale: see
    ``Ensemble.inference``); the fraction of features firing on more than ``convergence.DENSE_DENSITY`` of the
    inputs."""
    y_NO = x_ND if y_NO is None else y_NO
    c_NF = sae.encode(x_ND)
    acc = ReconstructionMetrics(y_NO.shape[1], c_NF.shape[1])
    acc.update(y_NO, sae.decode(c_NF) + sae.skip(x_ND), c_NF)
    r = acc.result()
    l1 = c_NF.abs().sum(1).mean().item()
    density_F = (c_NF != 0).float().mean(0)
    return {
        "mse": r["mse"],
        "fvu": r["fvu"],
        "l0": r["l0"],
        "loss": scale**2 * r["mse"] + (alpha * scale * l1 if penalty is None else penalty(sae, x_ND, c_NF, scale)),
        "dense_fraction": (density_F > convergence.DENSE_DENSITY).float().mean().item(),
    }


def check_target(cfg: TrainConfig, store: ActivationStore) -> int | None:
    """A transcoder's target width (None for autoencoders), after checking that the store has it."""
    if not cfg.target:
        if cfg.skip:
            raise SaexError("--skip adds a linear skip connection to a transcoder: name its --target hook")
        return None
    if cfg.target not in store.hooks:
        raise SaexError(f"transcoder target hook {cfg.target!r} is not in the store {store.path}; it has {store.hooks}")
    if cfg.target == cfg.hook:
        raise SaexError(f"--target {cfg.target} is the --hook itself: leave --target out to train autoencoders")
    if not architectures()[cfg.arch].can_transcode:
        raise SaexError(f"--arch {cfg.arch} cannot be a transcoder (its encoder is its decoder); choose another")
    return store.width(cfg.target)


def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train every dictionary of the sweep; resumes from ``cfg.out/checkpoint`` after an interruption."""
    store = ActivationStore(cfg.acts)
    if not cfg.hook:
        raise SaexError(f"name the hook point to train on with --hook; the store has {store.hooks}")
    d_in = store.width(cfg.hook)
    d_out = check_target(cfg, store)
    hooks = [cfg.hook] + ([cfg.target] if cfg.target else [])
    members = validate(cfg, d_in)
    ranks = distributed.setup(cfg.batch_size)
    out = Path(cfg.out)
    # What the run reads: the input hook's activations, and a transcoder's target's.
    s_hash = store_hash(store, cfg.hook) if not cfg.target else "+".join(store_hash(store, h) for h in hooks)
    identity = {k: v for k, v in asdict(cfg).items() if k not in {"out", "acts", "checkpoint_every"}}
    identity |= {"store_hash": s_hash, "d_in": d_in}
    saved = open_output_folder(
        out,
        RUN,
        "saex training run",
        identity,
        differs="training run",
        typed=partial(recorded_identity, TrainConfig, asked=identity),
    )
    if saved is not None and saved.get("status") == "complete":
        return out
    groups = _build_groups(cfg, members, d_in, d_out)
    params = {
        f"g{g}.{n}": p for g, grp in enumerate(groups) for n, p in grp.model.named_parameters() if p.requires_grad
    }
    # fused: one pass over each parameter and its two moments instead of several (CPU kernel since torch 2.4).
    opt = torch.optim.Adam(params.values(), lr=cfg.lr, fused=True)
    total = cfg.steps
    rfilter = RowFilter.of(cfg)
    rfilter.check(store.context_length)
    step, epoch, in_epoch = 0, 0, 0
    scale = input_scale(store, cfg.hook, cfg.normalize, rfilter)
    out_scale = input_scale(store, cfg.target, cfg.normalize, rfilter) if cfg.target else scale
    if ranks.main:
        remove_stale_temporaries(out)
    ranks.barrier()
    state = checkpoint.load(out)
    if state is not None:
        scalars, tensors = state
        if scalars["store_hash"] != s_hash:
            raise SaexError(
                f"the checkpoint in {out} was made on different activations; delete it or use another --out"
            )
        step, epoch, in_epoch, scale = scalars["step"], scalars["epoch"], scalars["in_epoch"], scalars["scale"]
        out_scale = scalars.get("out_scale", scale)
        for g, grp in enumerate(groups):
            grp.model.load_state_dict({n: tensors[f"g{g}.{n}"] for n, _ in grp.model.named_parameters()})
            grp.since_fired_KF.copy_(tensors[f"g{g}.since_fired"])
        checkpoint.restore_optimizer(opt, params, tensors)
        if ranks.main:
            _truncate_metrics(out / METRICS, step)
    for grp in groups:  # after loading weights: DDP broadcasts rank 0's parameters when it wraps
        grp.step_fn = distributed.wrap(grp.model, ranks)
    run: dict[str, Any] = {
        "saex_version": saex.__version__,
        "config": asdict(cfg),
        "identity": identity,
        "status": "running",
        "members": [asdict(m) for m in members],
        "d_in": d_in,
        "hook": cfg.hook,
        "target": cfg.target or None,
        "scale": scale,
        "out_scale": out_scale,
        "store": {"path": str(store.path), "hash": s_hash, "model": store.manifest["model"]["name"]},
        "steps": total,
        "dead_window": dead_window(cfg),
        "eval_every": eval_every(cfg),
        "rows": {
            **asdict(rfilter),
            "kept_train_rows": int(len(store.kept_rows("train", rfilter, cfg.hook))),
            "train_rows": store.n_rows("train"),
            "norm_limit": store.norm_limit(cfg.hook, rfilter),
        },
    }
    run["passes"] = round(total * cfg.batch_size / max(1, run["rows"]["kept_train_rows"]), 2)
    if ranks.main:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / RUN, run)
    every = eval_every(cfg)
    held = _heldout_sample(store, hooks, cfg.eval_tokens, cfg.seed, rfilter) if every and ranks.main else None

    def save_checkpoint():
        tensors = {f"g{g}.{n}": p for g, grp in enumerate(groups) for n, p in grp.model.named_parameters()}
        tensors |= {f"g{g}.since_fired": grp.since_fired_KF for g, grp in enumerate(groups)}
        tensors |= checkpoint.optimizer_tensors(opt, params)
        checkpoint.save(
            out,
            step,
            tensors,
            {"epoch": epoch, "in_epoch": in_epoch, "scale": scale, "out_scale": out_scale, "store_hash": s_hash},
        )

    bar = tqdm(
        total=total, initial=step, unit="step", disable=not (progress and ranks.main), desc="train", dynamic_ncols=True
    )
    metrics = open(out / METRICS, "a") if ranks.main else None  # noqa: SIM115 (closed in the finally below)
    try:
        while step < total:
            stream = store.batches(
                "train",
                hooks,
                cfg.batch_size,
                seed=cfg.seed,
                epoch=epoch,
                shards_in_buffer=cfg.shards_in_buffer,
                skip_batches=in_epoch,
                rows=rfilter,
            )
            yielded = False
            for x_BD in stream:
                yielded = True
                if not torch.isfinite(x_BD).all():
                    raise SaexError(
                        f"the store {store.path} holds NaN or Inf activations at {' or '.join(hooks)} "
                        f"(found in the batch of step {step}); re-harvest with --dtype float32"
                    )
                x_BD, y_BO = (x_BD[:, :d_in], x_BD[:, d_in:]) if cfg.target else (x_BD, None)
                x_BD = x_BD * scale if scale != 1.0 else x_BD
                if y_BO is not None and out_scale != 1.0:
                    y_BO = y_BO * out_scale
                _train_step(cfg, groups, opt, x_BD, y_BO, step, total, ranks)
                step += 1
                in_epoch += 1
                bar.update(1)
                if ranks.main and every and (step % every == 0 or step == total):
                    rows = _log_eval(groups, held, (scale, out_scale), step, cfg, metrics)
                    bar.set_postfix_str(
                        f"fvu {np.mean([r['fvu'] for r in rows]):.3f} l0 {np.mean([r['l0'] for r in rows]):.1f}"
                    )
                if ranks.main and (step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0)):
                    save_checkpoint()
                if step == total:
                    break
            else:
                if not yielded and in_epoch == 0:
                    raise SaexError(
                        f"the train split of {store.path} has {store.n_rows('train')} rows: not one batch of "
                        f"{cfg.batch_size} per buffer of {cfg.shards_in_buffer} shards; lower --batch-size "
                        "or raise --shards-in-buffer"
                    )
                epoch, in_epoch = epoch + 1, 0
    finally:
        if metrics is not None:
            metrics.close()
        bar.close()
    if not ranks.main:
        ranks.barrier()
        return out
    run["convergence"] = verdicts = _convergence(out, cfg, members, total)
    for grp in groups:
        for i, m in enumerate(grp.members):
            meta = {
                "saex_version": saex.__version__,
                "arch": cfg.arch,
                "alpha": m.alpha,
                "ratio": m.ratio,
                "k": m.k,
                "seed": m.seed,
                "hook_name": cfg.hook,
                **({"target_hook": cfg.target} if cfg.target else {}),
                "model_name": store.manifest["model"]["name"],
                "tokens_seen": step * cfg.batch_size,
                "steps": step,
                "store_hash": s_hash,
                "input_scale": scale,
                **({"target_scale": out_scale} if cfg.target else {}),
                "train_config": asdict(cfg),
                "row_filter": asdict(rfilter),
                "convergence": verdicts[m.name],
            }
            grp.model.export(i, scale, meta, out_scale).save(out / m.name)
    run["status"] = "complete"
    run["completed"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    write_json_atomic(out / RUN, run)
    ranks.barrier()
    return out


def _convergence(out: Path, cfg: TrainConfig, members: list[Member], total: int) -> dict[str, dict]:
    """Each member's convergence verdict from the held-out evaluations in metrics.jsonl."""
    arch = architectures()[cfg.arch]
    by_member: dict[str, list[dict]] = {m.name: [] for m in members}
    for row in read_jsonl(out / METRICS):
        if row.get("dictionary") in by_member:
            by_member[row["dictionary"]].append(row)
    return {m.name: convergence.assess(by_member[m.name], total, sparse=arch.sparse(m)) for m in members}


def _train_step(cfg, groups, opt, x_BD, y_BO, step, total, ranks) -> None:
    lr = lr_at(cfg, step, total)
    for pg in opt.param_groups:
        pg["lr"] = lr
    opt.zero_grad(set_to_none=True)
    x_local = ranks.local_slice(x_BD)
    y_local = None if y_BO is None else ranks.local_slice(y_BO)
    for grp in groups:
        dead = grp.since_fired_KF >= dead_window(cfg) if grp.model.needs_dead_mask else None
        o = grp.step_fn(x_local, grp.coef_K, dead, y_local)
        o.loss.backward()
        grp.since_fired_KF += x_BD.shape[0]
        grp.since_fired_KF[ranks.any_fired(o.fired_KF)] = 0
    opt.step()
    if cfg.resample_every and (step + 1) % cfg.resample_every == 0:
        for grp in groups:
            _resample(cfg, grp, opt, x_BD, y_BO, step)


def _unit(x_ND: torch.Tensor) -> torch.Tensor:
    return x_ND / x_ND.norm(dim=1, keepdim=True).clamp_min(1e-8)


@torch.no_grad()
def _resample(cfg, grp, opt, x_BD, y_BO, step) -> None:
    """Point dead features at inputs that are reconstructed badly (Bricken et al. 2023), sampled with
    probability proportional to the squared loss, and reset their Adam moments. A transcoder's encoder
    rows point at the input, its decoder rows at what is left of the target."""
    y_BO = x_BD if y_BO is None else y_BO
    for i, m in enumerate(grp.members):
        dead = torch.nonzero(grp.since_fired_KF[i] >= dead_window(cfg)).flatten()
        if len(dead) == 0:
            continue
        sae = grp.model.export(i)
        err_BO = y_BO - sae(x_BD)
        loss_B = err_BO.pow(2).sum(1)
        # Seeded by the member's own seed, not its place in the ensemble: a dictionary resamples the same
        # inputs whatever else is trained beside it.
        gen = torch.Generator().manual_seed(int(np.random.default_rng([m.seed, step]).integers(2**62)))
        pick = torch.multinomial(loss_B.pow(2) + 1e-12, len(dead), replacement=True, generator=gen)
        out_dirs = _unit(err_BO[pick]) if grp.model.transcoder else None
        grp.model.resample(i, dead, _unit(x_BD[pick]), out_dirs)
        for name in grp.model.feature_params:
            p = getattr(grp.model, name)
            for moment in ("exp_avg", "exp_avg_sq"):
                if p in opt.state:
                    opt.state[p][moment][i, dead] = 0.0
        grp.since_fired_KF[i, dead] = 0


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint being resumed from; they will be written again."""
    if path.is_file():
        keep = []
        for line in path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                pass  # a line torn by a kill mid-write
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(line + "\n" for line in keep))
        tmp.replace(path)


def _log_eval(groups, held, scales, step, cfg, metrics) -> list[dict]:
    (scale, out_scale), (x_eval, *y_eval) = scales, held
    arch = architectures()[cfg.arch]
    rows = []
    for grp in groups:
        dead_frac = (grp.since_fired_KF >= dead_window(cfg)).float().mean(1)
        for i, m in enumerate(grp.members):
            sae = grp.model.export(i, scale, out_scale=out_scale)
            r = {
                "step": step,
                "tokens": step * cfg.batch_size,
                "dictionary": m.name,
                **evaluate(
                    sae, x_eval, out_scale, m.alpha, y_eval[0] if y_eval else None, partial(arch.held_out_penalty, m)
                ),
                "dead_fraction": dead_frac[i].item(),
            }
            metrics.write(json.dumps(r) + "\n")
            rows.append(r)
    metrics.flush()
    return rows


def summary(out: str | Path) -> str:
    """A table of the run's dictionaries with their latest held-out metrics, then the convergence check."""
    out = Path(out)
    last = {row["dictionary"]: row for row in read_jsonl(out / METRICS) if "dictionary" in row}
    run = json.loads((out / RUN).read_text())
    n = len(run["members"])
    lines = [
        f"{n} {'dictionary' if n == 1 else 'dictionaries'} on {run['hook']} of {run['store']['model']} in {out}"
        + (f" ({run['steps']} steps, {run['passes']:g} passes over the store)" if "passes" in run else ""),
        f"  {'dictionary':<28}{'d_dict':>8}{'FVU':>9}{'L0':>9}{'dense':>8}{'dead':>8}  convergence",
    ]
    verdicts = run.get("convergence") or {}
    for m in run["members"]:
        r = last.get(m["name"])
        cells = (
            f"{r['fvu']:>9.4f}{r['l0']:>9.1f}{r.get('dense_fraction', math.nan):>8.1%}{r['dead_fraction']:>8.1%}"
            if r
            else f"{'—':>9}{'—':>9}{'—':>8}{'—':>8}"
        )
        v = verdicts.get(m["name"])
        state = "—" if v is None else {True: "ok", False: "NOT CONVERGED"}.get(v.get("converged"), "not checked")
        lines.append(f"  {m['name']:<28}{m['d_dict']:>8}{cells}  {state}")
    lines.append(
        "  (held-out sample; dense: features firing on > 10% of inputs; dead: no firing in the last "
        f"{run.get('dead_window', '?')} training inputs)"
    )
    for name, v in verdicts.items():
        if v.get("converged") is False:
            lines.append(f"warning: {name} is {convergence.describe(v)}; {convergence.advice(v)}.")
    return "\n".join(lines)
