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

import contextlib
import json
import math
import time
from collections.abc import Callable, Iterator
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
from saex.devices import placement
from saex.dictionaries.ensemble import Ensemble, Member, architectures
from saex.errors import SaexError
from saex.evaluate.metrics import ReconstructionMetrics
from saex.files import (
    check_output_folder,
    locked_output,
    open_output_folder,
    read_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from saex.store.reader import ActivationStore, RowFilter, store_hash
from saex.train import checkpoint, convergence, online
from saex.train.config import TrainConfig, check_arch_options, dead_window, eval_every, validate

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
        # Built on the CPU whatever torch's default device (the seeded initialisation draws from CPU generators),
        # then moved to the run's device.
        with torch.device("cpu"):
            model = arch.build(cfg, d_in, ms[0].d_dict, ms, d_out)
            coef_K, since_fired_KF = (
                torch.tensor([m.alpha for m in ms]),
                torch.zeros(len(ms), ms[0].d_dict, dtype=torch.long),
            )
        groups.append(Group(ms, model, coef_K, since_fired_KF))
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


@dataclass
class Sweep:
    """The dictionaries of one trained hook point: its groups, where its columns sit in a batch, its scales,
    held-out sample and output folder."""

    hook: str
    out: Path
    members: list[Member]
    groups: list[Group]
    cols: slice
    """Its input's columns in a batch (several hooks, or a transcoder's input and target, sit side by side)."""
    y_cols: slice | None
    scale: float
    out_scale: float
    s_hash: str
    prefix: str
    """Prefix of its tensors in the checkpoint (empty for a single sweep: checkpoints stay as they were)."""
    run: dict
    held: tuple[torch.Tensor, torch.Tensor | None] | None = None
    metrics: Any = None


# Options that only --model reads, with their defaults: given without --model they would be ignored.
_ONLINE_ONLY = (
    "hooks", "lm_batch_size", "buffer_tokens", "calibration_tokens", "heldout_acts", "lm_device", "lm_dtype",
    "corpus", "context_length", "bos_policy", "separator", "heldout_fraction", "text_field", "hub_split", "hub_config",
)  # fmt: skip


def check_mode(cfg: TrainConfig) -> list[str]:
    """The hooks the run trains, after refusing options that do not apply to its mode."""
    defaults = TrainConfig()
    if cfg.model and cfg.shards_in_buffer != defaults.shards_in_buffer:
        raise SaexError("--shards-in-buffer applies to a store; with --model the shuffle buffer is --buffer-tokens")
    if not cfg.model:
        given = [f for f in _ONLINE_ONLY if getattr(cfg, f) != getattr(defaults, f)]
        if given:
            raise SaexError(
                f"--{given[0].replace('_', '-')} applies only when training from a model (--model); this run reads "
                f"the store {cfg.acts}"
            )
        if not cfg.hook:
            return []
        return [cfg.hook]
    hooks = list(cfg.hooks) or ([cfg.hook] if cfg.hook else [])
    if cfg.hooks and cfg.hook and cfg.hook not in cfg.hooks:
        raise SaexError(f"give the hook points with --hooks alone (--hook {cfg.hook} is not among them)")
    if not hooks:
        raise SaexError("name the hook points to train on with --hooks, e.g. --hooks blocks.6.hook_resid_post")
    if len(set(hooks)) != len(hooks):
        raise SaexError(f"--hooks names a hook point twice: {hooks}")
    if cfg.target and len(hooks) > 1:
        raise SaexError("--target trains transcoders from one --hook; give one hook point")
    if cfg.target in hooks:
        raise SaexError(f"--target {cfg.target} is the --hook itself: leave --target out to train autoencoders")
    if cfg.batch_size > cfg.buffer_tokens:
        raise SaexError(
            f"--buffer-tokens {cfg.buffer_tokens} holds less than one batch (--batch-size {cfg.batch_size})"
        )
    return hooks


@locked_output("saex train")
def train(cfg: TrainConfig, progress: bool = True) -> Path:
    """Train every dictionary of the sweep(s); resumes from ``cfg.out/checkpoint`` after an interruption."""
    hooks = check_mode(cfg)
    check_arch_options(cfg)  # before any input is opened
    place = placement(cfg)
    ranks = distributed.setup(cfg.batch_size)
    place = distributed.local_placement(place, ranks)
    out = Path(cfg.out)
    store = source = None
    if cfg.model:
        check_output_folder(out, RUN, "saex training run")  # a wrong --out fails before the model loads
        capture = hooks + ([cfg.target] if cfg.target else [])
        source = online.Source(cfg, capture, place, ranks)
        widths = dict(zip(capture, source.widths, strict=True))
        d_out = widths[cfg.target] if cfg.target else None
        if cfg.target and not architectures()[cfg.arch].can_transcode:
            raise SaexError(f"--arch {cfg.arch} cannot be a transcoder (its encoder is its decoder); choose another")
        if cfg.skip and not cfg.target:
            raise SaexError("--skip adds a linear skip connection to a transcoder: name its --target hook")
        hashes = {h: source.source_hash([h] + ([cfg.target] if cfg.target else [])) for h in hooks}
        identity_extra: dict[str, Any] = {"source_hash": source.source_hash(capture), "widths": widths}
    else:
        store = ActivationStore(cfg.acts)
        if not hooks:
            raise SaexError(f"name the hook point to train on with --hook; the store has {store.hooks}")
        widths = {cfg.hook: store.width(cfg.hook)}
        d_out = check_target(cfg, store)
        if d_out is not None:
            widths[cfg.target] = d_out
        # What the run reads: the input hook's activations, and a transcoder's target's.
        read = [cfg.hook] + ([cfg.target] if cfg.target else [])
        hashes = {cfg.hook: "+".join(store_hash(store, h) for h in read)}
        identity_extra = {"store_hash": hashes[cfg.hook], "d_in": widths[cfg.hook]}
    members = {h: validate(cfg, widths[h]) for h in hooks}
    skip_identity = {"out", "acts", "checkpoint_every", "device", "lm_device"}
    identity = {k: v for k, v in asdict(cfg).items() if k not in skip_identity} | identity_extra
    saved = open_output_folder(
        out,
        RUN,
        "saex training run",
        identity,
        differs="training run",
        typed=partial(recorded_identity, TrainConfig, asked=identity),
    )
    if saved is not None and saved.get("status") == "complete":
        if source is not None:
            source.close()
        return out
    try:
        return _train(cfg, hooks, members, widths, d_out, hashes, identity, store, source, place, ranks, progress)
    finally:
        if source is not None:
            source.close()


def _train(cfg, hooks, members, widths, d_out, hashes, identity, store, source, place, ranks, progress) -> Path:
    out, device = Path(cfg.out), place.device
    rfilter = RowFilter.of(cfg)
    if store is not None:
        rfilter.check(store.context_length)
        scale = input_scale(store, cfg.hook, cfg.normalize, rfilter)
        scales = (
            {cfg.hook: scale, cfg.target: input_scale(store, cfg.target, cfg.normalize, rfilter)}
            if cfg.target
            else {cfg.hook: scale}
        )
    else:
        source.calibrate()
        scales = dict(zip(source.hooks, source.scales, strict=True))
    several = len(hooks) > 1
    sweeps, col = [], 0
    for h in hooks:
        groups = _build_groups(cfg, members[h], widths[h], d_out)
        for grp in groups:
            grp.model.to(device)
            grp.coef_K, grp.since_fired_KF = grp.coef_K.to(device), grp.since_fired_KF.to(device)
        y_cols = slice(widths[h], widths[h] + d_out) if cfg.target else None
        sweeps.append(
            Sweep(
                h,
                out / h if several else out,  # a hook name is a valid folder name
                members[h],
                groups,
                slice(col, col + widths[h]),
                y_cols,
                scales[h],
                scales[cfg.target] if cfg.target else scales[h],
                hashes[h],
                f"{h}/" if several else "",
                {},
            )  # fmt: skip
        )
        col += widths[h]
    params = {
        f"{sw.prefix}g{g}.{n}": p
        for sw in sweeps
        for g, grp in enumerate(sw.groups)
        for n, p in grp.model.named_parameters()
        if p.requires_grad
    }
    # fused: one pass over each parameter and its two moments instead of several (CPU kernel since torch 2.4).
    opt = torch.optim.Adam(params.values(), lr=cfg.lr, fused=True)
    total, step = cfg.steps, 0
    local_batch = cfg.batch_size // ranks.world
    position: Any = {"epoch": 0, "in_epoch": 0} if store is not None else online.Position()
    state = checkpoint.load(out)  # stale temporaries went when the folder lock was taken (locked_output)
    if state is not None:
        scalars, tensors = state
        recorded = scalars.get("store_hash", scalars.get("source_hash"))
        if recorded != identity.get("store_hash", identity.get("source_hash")):
            raise SaexError(
                f"the checkpoint in {out} was made on different activations; delete it or use another --out"
            )
        step = scalars["step"]
        if store is not None:
            position = {"epoch": scalars["epoch"], "in_epoch": scalars["in_epoch"]}
            sweeps[0].scale = scalars["scale"]
            sweeps[0].out_scale = scalars.get("out_scale", scalars["scale"]) if cfg.target else scalars["scale"]
        else:
            position = online.positions_of(scalars, ranks.world)[ranks.rank]
        for sw in sweeps:
            for g, grp in enumerate(sw.groups):
                grp.model.load_state_dict(
                    {n: tensors[f"{sw.prefix}g{g}.{n}"].to(device) for n, _ in grp.model.named_parameters()}
                )
                grp.since_fired_KF.copy_(tensors[f"{sw.prefix}g{g}.since_fired"])
        checkpoint.restore_optimizer(opt, params, tensors)
        if ranks.main:
            for sw in sweeps:
                _truncate_metrics(sw.out / METRICS, step)
    for sw in sweeps:
        for grp in sw.groups:  # after loading weights: DDP broadcasts rank 0's parameters when it wraps
            grp.step_fn = distributed.wrap(grp.model, ranks)
    every = eval_every(cfg)
    for sw in sweeps:
        sw.run = _run_record(cfg, identity, sw, widths, store, source, place, total)
        if ranks.main:
            sw.out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(sw.out / RUN, sw.run)
    if several and ranks.main:
        write_json_atomic(out / RUN, _parent_record(cfg, identity, sweeps, source, place))
    if every and ranks.main:
        held = _held_out(cfg, hooks, store, source, rfilter)
        for sw in sweeps:
            x = held[:, sw.cols].to(device)
            sw.held = (x, held[:, sw.y_cols].to(device) if sw.y_cols is not None else None)

    def save_checkpoint():
        tensors = {
            f"{sw.prefix}g{g}.{n}": p
            for sw in sweeps
            for g, grp in enumerate(sw.groups)
            for n, p in grp.model.named_parameters()
        }
        tensors |= {
            f"{sw.prefix}g{g}.since_fired": grp.since_fired_KF for sw in sweeps for g, grp in enumerate(sw.groups)
        }
        tensors |= checkpoint.optimizer_tensors(opt, params)
        if store is not None:
            scalars = {
                **position,
                "scale": sweeps[0].scale,
                "out_scale": sweeps[0].out_scale,
                "store_hash": identity["store_hash"],
            }
        else:
            scalars = {"positions": online.position_dicts(all_positions), "source_hash": identity["source_hash"]}
        checkpoint.save(out, step, tensors, scalars)

    bar = tqdm(
        total=total, initial=step, unit="step", disable=not (progress and ranks.main), desc="train", dynamic_ncols=True
    )
    for sw in sweeps:
        sw.metrics = open(sw.out / METRICS, "a") if ranks.main else None  # noqa: SIM115 (closed in the finally below)
    stream = (
        _store_batches(cfg, store, position, rfilter, ranks, device)
        if store is not None
        else source.batches(position, local_batch)
    )
    all_positions: list = []
    try:
        while step < total:
            x_BD, position = next(stream)
            if store is not None and not torch.isfinite(x_BD).all():
                raise SaexError(
                    f"the store {store.path} holds NaN or Inf activations at {' or '.join([cfg.hook, cfg.target] if cfg.target else [cfg.hook])} "
                    f"(found in the batch of step {step}); re-harvest with --dtype float32"
                )
            parts = [
                (
                    sw.groups,
                    _scaled(x_BD[:, sw.cols], sw.scale),
                    None if sw.y_cols is None else _scaled(x_BD[:, sw.y_cols], sw.out_scale),
                )
                for sw in sweeps
            ]
            _train_step(cfg, parts, opt, step, total, ranks, place.device.type)
            step += 1
            bar.update(1)
            if ranks.main and every and (step % every == 0 or step == total):
                rows = [r for sw in sweeps for r in _log_eval(sw, step, cfg)]
                bar.set_postfix_str(
                    f"fvu {np.mean([r['fvu'] for r in rows]):.3f} l0 {np.mean([r['l0'] for r in rows]):.1f}"
                )
            if step == total or (cfg.checkpoint_every and step % cfg.checkpoint_every == 0):
                if source is not None:
                    all_positions = ranks.gather(position)
                if ranks.main:
                    save_checkpoint()
    finally:
        for sw in sweeps:
            if sw.metrics is not None:
                sw.metrics.close()
        bar.close()
    if not ranks.main:
        ranks.barrier()
        return out
    for sw in sweeps:  # the last update could have made the weights non-finite after a finite loss
        for grp in sw.groups:
            if not all(bool(torch.isfinite(p).all()) for p in grp.model.parameters()):
                raise Diverged(step - 1, [m.name for m in grp.members], "the weights hold NaN or Inf")
    model_name = store.manifest["model"]["name"] if store is not None else source.lm.name
    for sw in sweeps:
        sw.run["convergence"] = verdicts = _convergence(sw.out, cfg, sw.members, total)
        for grp in sw.groups:
            for i, m in enumerate(grp.members):
                meta = {
                    "saex_version": saex.__version__,
                    "arch": cfg.arch,
                    "alpha": m.alpha,
                    "ratio": m.ratio,
                    "k": m.k,
                    "seed": m.seed,
                    "hook_name": sw.hook,
                    **({"target_hook": cfg.target} if cfg.target else {}),
                    "model_name": model_name,
                    "tokens_seen": step * cfg.batch_size,
                    "steps": step,
                    "store_hash": sw.s_hash,
                    **({"source": "model"} if source is not None else {}),
                    "input_scale": sw.scale,
                    **({"target_scale": sw.out_scale} if cfg.target else {}),
                    "train_config": asdict(cfg),
                    "row_filter": asdict(rfilter),
                    "convergence": verdicts[m.name],
                }
                grp.model.export(i, sw.scale, meta, sw.out_scale).to("cpu").save(sw.out / m.name)
        sw.run["status"] = "complete"
        sw.run["completed"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        write_json_atomic(sw.out / RUN, sw.run)
    if several:
        parent = _parent_record(cfg, identity, sweeps, source, place)
        write_json_atomic(out / RUN, parent | {"status": "complete", "completed": sweeps[-1].run["completed"]})
    ranks.barrier()
    return out


def _scaled(x: torch.Tensor, s: float) -> torch.Tensor:
    return x * s if s != 1.0 else x


def _store_batches(cfg, store, position, rfilter, ranks, device) -> Iterator[tuple[torch.Tensor, dict]]:
    """This rank's slice of each batch of the store, with the position to record after it: endless (a new
    shuffled pass at the end of each)."""
    hooks = [cfg.hook] + ([cfg.target] if cfg.target else [])
    epoch, in_epoch = position["epoch"], position["in_epoch"]
    while True:
        yielded = False
        for x_BD in store.batches(
            "train",
            hooks,
            cfg.batch_size,
            seed=cfg.seed,
            epoch=epoch,
            shards_in_buffer=cfg.shards_in_buffer,
            skip_batches=in_epoch,
            rows=rfilter,
            shuffle=cfg.shuffle,
        ):
            yielded = True
            in_epoch += 1
            yield ranks.local_slice(x_BD).to(device), {"epoch": epoch, "in_epoch": in_epoch}
        if not yielded and in_epoch == 0:
            raise SaexError(
                f"the train split of {store.path} has {store.n_rows('train')} rows: not one batch of "
                f"{cfg.batch_size} per buffer of {cfg.shards_in_buffer} shards; lower --batch-size "
                "or raise --shards-in-buffer"
            )
        epoch, in_epoch = epoch + 1, 0


def _held_out(cfg, hooks, store, source, rfilter) -> torch.Tensor:
    """The held-out rows every evaluation reads, side by side as in a batch (on the CPU)."""
    read = hooks + ([cfg.target] if cfg.target else [])
    if source is None or cfg.heldout_acts:
        held_store = store if source is None else ActivationStore(cfg.heldout_acts)
        if source is not None:
            for h, width in zip(read, source.widths, strict=True):
                if h not in held_store.hooks or held_store.width(h) != width:
                    raise SaexError(f"--heldout-acts {cfg.heldout_acts} has no hook {h} of width {width}")
        xs = _heldout_sample(held_store, read, cfg.eval_tokens, cfg.seed, rfilter)
        return xs[0] if len(xs) == 1 else torch.cat(xs, dim=1)
    return source.heldout(cfg.eval_tokens).cpu()


def _run_record(cfg, identity, sw, widths, store, source, place, total) -> dict:
    run: dict[str, Any] = {
        "saex_version": saex.__version__,
        "config": asdict(cfg),
        "identity": identity,
        "status": "running",
        "members": [asdict(m) for m in sw.members],
        "d_in": widths[sw.hook],
        "hook": sw.hook,
        "target": cfg.target or None,
        "scale": sw.scale,
        "out_scale": sw.out_scale,
        "steps": total,
        "dead_window": dead_window(cfg),
        "eval_every": eval_every(cfg),
        "placement": place.describe() | {"autocast": cfg.autocast},
    }
    if store is not None:
        rfilter = RowFilter.of(cfg)
        run["store"] = {"path": str(store.path), "hash": sw.s_hash, "model": store.manifest["model"]["name"]}
        run["rows"] = {
            **asdict(rfilter),
            "kept_train_rows": int(len(store.kept_rows("train", rfilter, cfg.hook))),
            "train_rows": store.n_rows("train"),
            "norm_limit": store.norm_limit(cfg.hook, rfilter),
        }
        run["passes"] = round(total * cfg.batch_size / max(1, run["rows"]["kept_train_rows"]), 2)
    else:
        run["store"] = {"path": None, "hash": sw.s_hash, "model": source.lm.name}
        run["source"] = source.describe()
        run["rows"] = {**asdict(RowFilter.of(cfg)), "norm_limit": source.limits[source.hooks.index(sw.hook)]}
    return run


def _parent_record(cfg, identity, sweeps, source, place) -> dict:
    """run.json of a run that trains several hooks: its identity and where each hook's sweep is."""
    return {
        "saex_version": saex.__version__,
        "config": asdict(cfg),
        "identity": identity,
        "status": "running",
        "hooks": {sw.hook: sw.out.name for sw in sweeps},
        "source": source.describe() if source is not None else None,
        "placement": place.describe() | {"autocast": cfg.autocast},
    }


def _convergence(out: Path, cfg: TrainConfig, members: list[Member], total: int) -> dict[str, dict]:
    """Each member's convergence verdict from the held-out evaluations in metrics.jsonl."""
    arch = architectures()[cfg.arch]
    by_member: dict[str, list[dict]] = {m.name: [] for m in members}
    for row in read_jsonl(out / METRICS):
        if row.get("dictionary") in by_member:
            by_member[row["dictionary"]].append(row)
    return {m.name: convergence.assess(by_member[m.name], total, sparse=arch.sparse(m)) for m in members}


def _train_step(cfg, parts, opt, step, total, ranks, device_type: str = "cpu") -> None:
    """One optimiser step of every sweep: ``parts`` holds each sweep's (groups, this rank's inputs, targets)."""
    lr = lr_at(cfg, step, total)
    for pg in opt.param_groups:
        pg["lr"] = lr
    opt.zero_grad(set_to_none=True)
    for groups, x_bD, y_bO in parts:
        for grp in groups:
            dead = grp.since_fired_KF >= dead_window(cfg) if grp.model.needs_dead_mask else None
            with (
                torch.autocast(device_type, dtype=torch.bfloat16)
                if cfg.autocast == "bfloat16"
                else contextlib.nullcontext()
            ):
                o = grp.step_fn(x_bD, grp.coef_K, dead, y_bO)
            if not bool(torch.isfinite(o.loss)):
                raise Diverged(step, [m.name for m in grp.members], f"the loss is {float(o.loss)}")
            o.loss.backward()
            grp.since_fired_KF += cfg.batch_size  # the global batch: every rank saw its share of it
            grp.since_fired_KF[ranks.any_fired(o.fired_KF)] = 0
    opt.step()
    if cfg.resample_every and (step + 1) % cfg.resample_every == 0:
        for groups, x_bD, y_bO in parts:
            # every rank resamples the same rows: the whole batch, gathered in rank order
            x_BD = ranks.all_rows(x_bD)
            y_BO = None if y_bO is None else ranks.all_rows(y_bO)
            for grp in groups:
                _resample(cfg, grp, opt, x_BD, y_BO, step)


class Diverged(SaexError):
    """Training produced a NaN / Inf loss: the run stops, and no dictionary is written."""

    def __init__(self, step: int, names: list[str], what: str):
        super().__init__(
            f"training diverged at step {step + 1} ({', '.join(names)}: {what}); no dictionary was written. "
            "Lower --lr (or raise --warmup-steps) and train into a new --out"
        )


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
        # drawn on the CPU (the generator's device) whatever the device, so every device draws the same rows
        pick = torch.multinomial(loss_B.pow(2).cpu() + 1e-12, len(dead), replacement=True, generator=gen)
        pick = pick.to(x_BD.device)
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
        write_text_atomic(path, "".join(line + "\n" for line in keep))


def _log_eval(sw: Sweep, step: int, cfg: TrainConfig) -> list[dict]:
    """Held-out numbers of every dictionary of a sweep, appended to its metrics.jsonl."""
    assert sw.held is not None
    x_eval, y_eval = sw.held
    arch = architectures()[cfg.arch]
    rows = []
    for grp in sw.groups:
        dead_frac = (grp.since_fired_KF >= dead_window(cfg)).float().mean(1)
        for i, m in enumerate(grp.members):
            sae = grp.model.export(i, sw.scale, out_scale=sw.out_scale)
            r = {
                "step": step,
                "tokens": step * cfg.batch_size,
                "dictionary": m.name,
                **evaluate(sae, x_eval, sw.out_scale, m.alpha, y_eval, partial(arch.held_out_penalty, m)),
                "dead_fraction": dead_frac[i].item(),
            }
            sw.metrics.write(json.dumps(r) + "\n")
            rows.append(r)
    sw.metrics.flush()
    return rows


def summary(out: str | Path) -> str:
    """A table of the run's dictionaries with their latest held-out metrics, then the convergence check."""
    out = Path(out)
    run = json.loads((out / RUN).read_text())
    if "hooks" in run:  # several hooks trained at once: one table per hook's sweep
        return "\n".join(summary(out / folder) for folder in run["hooks"].values())
    last = {row["dictionary"]: row for row in read_jsonl(out / METRICS) if "dictionary" in row}
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
