"""The convergence check: is a trained dictionary finished, or still moving when its budget ran out?

An SAE stopped early looks like a finding and is not one: its biases have not moved far enough from their
initial zeros, so features fire on half-spaces, L0 is in the hundreds and the "features" are dense token
soups. The check reads the held-out evaluations that ``saex train`` logs over the run (``metrics.jsonl``:
the training objective, L0 and the share of dense features, on the same held-out sample each time) and
calls a dictionary *not converged* when, at the end of its run,

* its L0 fell by more than ``MAX_L0_DROP`` (relative) over the last ``TAIL`` of the run, or
* its training objective (MSE + α·L1 on the scaled inputs) fell by more than ``MAX_LOSS_DROP``, or
* more than ``MAX_DENSE_SHARE`` of its features fire on over ``DENSE_DENSITY`` of held-out inputs (a
  sparse dictionary does not need that; the criterion is skipped for α = 0, which asks for no sparsity).

The last fifth of a run is also where the learning rate decays, which lowers the loss a little even on
a converged run; the thresholds sit above that. They were set from measured runs on SmolLM2-135M layer 6
(``docs/training.md``, "Convergence"): the quick preset's old budget (146 steps) exceeds them several
times over, converged runs stay well inside.
"""

from __future__ import annotations

TAIL = 0.2
"""The last part of the run the drops are measured over."""
MAX_L0_DROP = 0.05
MAX_LOSS_DROP = 0.05
DENSE_DENSITY = 0.10
MAX_DENSE_SHARE = 0.05


def assess(rows: list[dict], total_steps: int, sparse: bool = True) -> dict:
    """The verdict for one dictionary from its held-out evaluations ``rows`` (dicts with ``step``, ``loss``,
    ``l0``, ``dense_fraction``), for a run of ``total_steps``. ``sparse``: whether the method asks for
    sparsity (α > 0, TopK), which the dense-feature criterion needs."""
    rows = sorted((r for r in rows if r.get("step") is not None), key=lambda r: r["step"])
    if not rows or rows[-1]["step"] != total_steps:
        return {"converged": None, "reasons": ["not checked: no held-out evaluation at the end of the run"]}
    end = rows[-1]
    before = [r for r in rows if r["step"] <= (1 - TAIL) * total_steps]
    out = {
        "tail_fraction": TAIL,
        "l0_end": end["l0"],
        "loss_end": end.get("loss"),
        "dense_fraction": end.get("dense_fraction"),
        "thresholds": {
            "l0_drop": MAX_L0_DROP,
            "loss_drop": MAX_LOSS_DROP,
            "dense_density": DENSE_DENSITY,
            "dense_fraction": MAX_DENSE_SHARE,
        },
    }
    reasons = []
    if not before:
        reasons.append(
            f"not checked over the last {TAIL:.0%}: no evaluation before step "
            f"{(1 - TAIL) * total_steps:.0f} (raise the number of evaluations)"
        )
    else:
        start = before[-1]
        out["tail_start_step"] = start["step"]
        out["l0_start"] = start["l0"]
        out["l0_drop"] = (start["l0"] - end["l0"]) / max(end["l0"], 1e-9)
        if out["l0_drop"] > MAX_L0_DROP:
            reasons.append(
                f"L0 still falling: {start['l0']:.1f} → {end['l0']:.1f} ({out['l0_drop']:.0%}) over the "
                f"last {TAIL:.0%} of the run (limit {MAX_L0_DROP:.0%})"
            )
        if start.get("loss") is not None and end.get("loss"):
            out["loss_start"] = start["loss"]
            out["loss_drop"] = (start["loss"] - end["loss"]) / end["loss"]
            if out["loss_drop"] > MAX_LOSS_DROP:
                reasons.append(
                    f"loss still falling: {start['loss']:.4g} → {end['loss']:.4g} ({out['loss_drop']:.0%}) "
                    f"over the last {TAIL:.0%} of the run (limit {MAX_LOSS_DROP:.0%})"
                )
    out["still_changing"] = any(r.startswith(("L0 still", "loss still")) for r in reasons)
    dense = end.get("dense_fraction")
    out["dense"] = bool(sparse and dense is not None and dense > MAX_DENSE_SHARE)
    if out["dense"]:
        reasons.append(
            f"{dense:.1%} of features fire on more than {DENSE_DENSITY:.0%} of held-out inputs "
            f"(limit {MAX_DENSE_SHARE:.0%} of features)"
        )
    checked = bool(before)
    out["converged"] = (not reasons) if checked else (False if out["dense"] else None)
    out["reasons"] = reasons
    return out


def describe(verdict: dict) -> str:
    """One line: 'converged', 'NOT converged: …' or 'not checked: …'."""
    if verdict.get("converged") is True:
        return "converged"
    if verdict.get("converged") is False:
        return "NOT converged: " + "; ".join(r for r in verdict["reasons"] if not r.startswith("not checked"))
    return "; ".join(verdict.get("reasons") or ["not checked"])


def advice(verdict: dict) -> str:
    """What to do about a dictionary that is not converged: more steps while it is still changing; when only
    its density is the matter, a larger α (more steps make an L1 code sparser too, but slowly)."""
    if verdict.get("still_changing"):
        return "train longer (--steps) before reading its features as findings"
    return "its features are not a sparse code yet: a larger α (or more steps) makes it sparser"
