"""``saex eval``: every metric for a set of dictionaries (SAEs and baselines alike) on a store's held-out split.

Writes, under ``--out``:

* ``results/<name>.json``: one per dictionary: the reconstruction and sparsity metrics
  (``evaluate/metrics.py``), the spliced CE / perplexity / KL (``evaluate/spliced.py``), MMCS against
  ``--reference`` (``evaluate/mmcs.py``), and where the dictionary came from
* ``comparison.json`` and ``comparison.md``: one row per dictionary
* ``plots/``: FVU against L0 per R (paper Fig. 6/7), alive fraction against α per R (Fig. 16), and each
  dictionary's feature-density histogram, every PNG beside the JSON it was drawn from

A dictionary whose result file already matches its weights and these options is not evaluated again, so a
killed run resumes where it stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

import saex
from saex.config import opt
from saex.devices import PLACEMENT_FIELDS, LMOptions, Placement, placement
from saex.dictionaries import load_dictionary
from saex.dictionaries.folders import open_for_store
from saex.dictionaries.formats import weights_sha256
from saex.dictionaries.sae import SAE
from saex.errors import SaexError
from saex.evaluate.metrics import ReconstructionMetrics
from saex.evaluate.mmcs import mmcs
from saex.evaluate.spliced import spliced_losses
from saex.files import check_output_folder, locked_output, write_json_atomic
from saex.lm.hooks import HookedLM
from saex.lm.loading import load_store_model
from saex.naming import file_name
from saex.store.reader import ActivationStore, RowFilter, RowOptions, store_hash
from saex.viz.sweeps import plot_all

NAME = "eval"
HELP = "FVU, L0, dead features, spliced CE/KL and MMCS of dictionaries, with plots"
MARKER = "eval.json"


@dataclass
class EvalConfig(RowOptions, LMOptions):
    """What ``saex eval`` measures; saved in eval.json and in every result file."""

    acts: str = "runs/acts"
    """Activation store whose held-out split is evaluated on (the one the dictionaries were fitted on)."""
    dicts: list[str] = opt(["runs/dicts"], nonempty=True)
    """Dictionary folders, or folders of them (a training run, a set of baselines)."""
    out: str = "runs/eval"
    """Output folder: results/, comparison.json, comparison.md, plots/."""
    hook: str | None = None
    """Hook point to evaluate at; by default each dictionary's own (its metadata hook_name)."""
    tokens: int | None = opt(None, gt=0)
    """Held-out activations for the reconstruction metrics: FVU, MSE, L0, cosine (default: every held-out row).
    Alive, never fired and the density histogram count firings over every kept held-out row regardless (the
    encoder alone, so a 1M-token split costs little more than a 100k one)."""
    batch_size: int = opt(4096, gt=0)
    """Activations per batch for the reconstruction metrics."""
    contexts: int = opt(32, ge=0)
    """Held-out contexts run through the model for spliced CE / KL; 0 skips the model."""
    context_batch: int = opt(8, gt=0)
    """Contexts per forward pass for spliced CE / KL."""
    alive_threshold: int = opt(10, ge=0)
    """A feature is alive when non-zero on more than this many held-out activations (paper App. E: 10 in 10M);
    the result records it with the number of activations counted (``n_counted``: every kept held-out row),
    and the features that never fired."""
    reference: str | None = None
    """A dictionary folder to compute MMCS (plain and Hungarian-matched) against."""
    model: str | None = None
    """Model for spliced CE / KL (default: the store's; its weights must be the ones the store was harvested
    from)."""


CONFIG = EvalConfig


def summary(out: Path) -> str:
    return (out / "comparison.md").read_text() + f"results, comparison and plots in {out}"


def _describe(name: str, folder: Path, d: SAE) -> dict:
    meta = d.metadata
    return {
        "name": name,
        "path": str(folder),
        "kind": meta.get("baseline") or meta.get("arch") or d.architecture,
        "architecture": d.architecture,
        "d_in": d.d_in,
        "d_dict": d.d_dict,
        "ratio": d.d_dict / d.d_in,
        "alpha": meta.get("alpha"),
        "k": meta.get("k"),
        "weights_sha256": weights_sha256(folder),
    }


@locked_output("saex eval")
def run(cfg: EvalConfig, progress: bool = True) -> Path:
    where = placement(cfg)  # a device this machine lacks fails before any work
    store = ActivationStore(cfg.acts)
    n_held = store.n_rows("heldout")
    if n_held == 0:
        raise SaexError(f"the store {store.path} has no held-out rows to evaluate on")
    found = open_for_store(cfg.dicts, store, cfg.hook)
    dicts = {name: d.to(where.device) for name, (_, d, _) in found.items()}
    info = {
        # a transcoder's target hook, checked against the store by open_for_store
        name: _describe(name, folder, d)
        | {"hook": hook, "target": d.metadata.get("target_hook") if d.transcoder else None}
        for name, (folder, d, hook) in found.items()
    }
    reference = load_dictionary(cfg.reference).to(where.device) if cfg.reference else None

    out = Path(cfg.out)
    check_output_folder(out, MARKER, "saex evaluation")
    (out / "results").mkdir(parents=True, exist_ok=True)
    write_json_atomic(
        out / MARKER, {"saex_version": saex.__version__, "config": asdict(cfg), "placement": where.describe()}
    )
    hashes = {h: store_hash(store, h) for h in {i[k] for i in info.values() for k in ("hook", "target") if i[k]}}
    skip = ("out", "dicts", "acts", "batch_size", "context_batch", *PLACEMENT_FIELDS)
    options = {k: v for k, v in asdict(cfg).items() if k not in skip} | where.identity()
    results: dict[str, dict] = {}
    todo: dict[tuple[str, str | None], dict[str, SAE]] = {}
    reference_sha = weights_sha256(cfg.reference) if cfg.reference else None
    for name, i in info.items():
        ident = {
            "weights_sha256": i["weights_sha256"],
            "store_hash": hashes[i["hook"]] + (f"+{hashes[i['target']]}" if i["target"] else ""),
            "options": options,
            "reference_sha256": reference_sha,
        }
        i["identity"] = ident
        path = _result_path(out, name)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("identity") == ident:
                results[name] = saved
                continue
        todo.setdefault((i["hook"], i["target"]), {})[name] = dicts[name]

    rows = RowFilter.of(cfg)
    rows.check(store.context_length)
    hooked = _load_model(store, cfg.model, where) if cfg.contexts and todo else None  # fails before any long work
    for (hook, target), group in todo.items():
        metrics = _reconstruction(store, hook, group, cfg.tokens, rows, cfg, progress, target, where.device)
        spliced = {}
        if hooked is not None:
            tokens = store.tokens("heldout")[: cfg.contexts]
            at = target or hook
            bar = tqdm(total=len(tokens), desc=f"spliced CE at {at}", unit="ctx", disable=not progress)
            spliced = spliced_losses(hooked, hook, group, tokens, cfg.context_batch, bar.update, target)
            bar.close()
        for name, d in group.items():
            r = {**info[name], "saex_version": saex.__version__, "metrics": metrics[name], "spliced": spliced.get(name)}
            if reference is not None:
                r["mmcs_to_reference"] = mmcs(reference.W_dec_FD, d.W_dec_FD) | {"reference": cfg.reference}
            write_json_atomic(_result_path(out, name), r)
            results[name] = r
    table = [comparison_row(results[name]) for name in found]
    write_json_atomic(out / "comparison.json", table)
    (out / "comparison.md").write_text(comparison_table(table) + "\n")

    plot_all([results[name] for name in found], out / "plots")
    return out


def _result_path(out: Path, name: str) -> Path:
    return out / "results" / (file_name(name) + ".json")


def _reconstruction(
    store,
    hook,
    group,
    n_rows: int | None,
    rows: RowFilter,
    cfg,
    progress,
    target: str | None = None,
    device: torch.device | str = "cpu",
) -> dict[str, dict]:
    """Streaming metrics over the first ``n_rows`` (None: all) held-out rows that ``rows`` keeps; the firing
    counts (alive, never fired, density) go on over every kept row, with the encoder only. One read of each
    shard: the kept rows are not counted beforehand (at a hook with a norm limit that would read them all).
    Transcoders are scored on their prediction of ``target`` at the rows kept at both hook points. The rows
    are read on the CPU and computed on ``device`` (the dictionaries'), batch by batch."""
    accs = {name: ReconstructionMetrics(d.d_out, d.d_dict) for name, d in group.items()}
    budget = math.inf if n_rows is None else n_rows
    bar = tqdm(total=store.n_rows("heldout"), desc=f"metrics at {hook}", unit="row", disable=not progress)
    seen = 0
    for s in range(len(store.shards("heldout"))):
        if target is None:
            x_ND = y_ND = store.load_kept("heldout", s, hook, rows)
        else:
            keep = store.keep_mask("heldout", s, rows, hook) & store.keep_mask("heldout", s, rows, target)
            x_ND = store.load_shard("heldout", s, hook)[keep]
            y_ND = store.load_shard("heldout", s, target)[keep]
        for h, t in ((hook, x_ND), (target, y_ND)):
            if not torch.isfinite(t).all():
                raise SaexError(
                    f"the store {store.path} holds NaN or Inf activations at {h} in its held-out split; "
                    "re-harvest with --dtype float32"
                )
        for b in range(0, len(x_ND), cfg.batch_size):
            x_BD = x_ND[b : b + cfg.batch_size].to(device)
            y_BD = x_BD if y_ND is x_ND else y_ND[b : b + cfg.batch_size].to(device)
            k = int(max(0, min(len(x_BD), budget - seen)))  # rows of this batch within the metrics' budget
            with torch.inference_mode():
                for name, d in group.items():
                    c_BF = d.encode(x_BD)
                    if k:
                        accs[name].update(y_BD[:k], d.decode(c_BF[:k], x_BD[:k]) + d.skip(x_BD[:k]), c_BF[:k])
                    if k < len(x_BD):
                        accs[name].count(c_BF[k:])
            seen += len(x_BD)
        bar.update(store.shards("heldout")[s]["rows"])
    bar.close()
    return {name: acc.result(cfg.alive_threshold) | {"row_filter": asdict(rows)} for name, acc in accs.items()}


def _load_model(store: ActivationStore, name: str | None, where: Placement):
    loaded = load_store_model(store.manifest["model"], name)
    loaded.model.eval().to(device=where.lm_device, dtype=where.lm_dtype)
    return HookedLM(loaded.model)


COLUMNS = [
    ("name", "dictionary", "{}"),
    ("kind", "kind", "{}"),
    ("d_dict", "d_dict", "{}"),
    ("ratio", "R", "{:g}"),
    ("alpha", "α", "{:g}"),
    ("fvu", "FVU", "{:.4f}"),
    ("l0", "L0", "{:.1f}"),
    ("alive", "alive", "{}"),
    ("dead", "dead", "{}"),
    ("cosine", "cos", "{:.3f}"),
    ("ce_spliced", "CE spliced", "{:.3f}"),
    ("ce_recovered", "CE recovered", "{:.3f}"),
    ("kl", "KL", "{:.4f}"),
    ("mmcs", "MMCS", "{:.3f}"),
    ("hungarian_mmcs", "MMCS (Hungarian)", "{:.3f}"),
]


def comparison_row(r: dict) -> dict:
    m, s, c = r["metrics"], r.get("spliced") or {}, r.get("mmcs_to_reference") or {}
    row = {k: r[k] for k in ("name", "path", "kind", "architecture", "hook", "d_in", "d_dict", "ratio", "alpha", "k")}
    row["target"] = r.get("target")
    row |= {k: m[k] for k in ("fvu", "mse", "l0", "alive", "dead", "alive_fraction", "cosine", "norm_ratio")}
    row |= {
        k: s.get(k) for k in ("ce_clean", "ce_spliced", "ce_zero", "ppl_clean", "ppl_spliced", "ce_recovered", "kl")
    }
    row |= {"mmcs": c.get("mmcs"), "hungarian_mmcs": c.get("hungarian_mmcs")}
    return row


def comparison_table(rows: list[dict]) -> str:
    """A Markdown table; columns with no value in any row are left out."""
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    cell = lambda v, f: "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f.format(v)
    lines = ["| " + " | ".join(c[1] for c in cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(cell(r.get(k), f) for k, _, f in cols) + " |" for r in rows]
    zero = {r["hook"]: r for r in rows if r.get("ce_clean") is not None}
    for hook, r in zero.items():
        lines.append(
            f"\nAt {hook}: the model's own CE {r['ce_clean']:.3f} (perplexity {r['ppl_clean']:.2f}); "
            f"with the activation zero-ablated, CE {r['ce_zero']:.3f}."
        )
    return "\n".join(lines)
