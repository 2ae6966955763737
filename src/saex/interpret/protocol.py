"""Which fragments a feature is explained on and scored on: the protocol presets.

``cunningham2023`` (Cunningham et al. 2023 App. A, as ``interpret.py`` ran Bills et al.'s code): the 20
fragments with the highest max activation and 20 random fragments *with non-zero activation*; the
explainer sees top #0, 4, 8, 12, 16, the simulator predicts top #2, 6, 10, 14, 18 and random #1, 4, 7, 10,
13 (Bills' interleaved splits, ``ActivationRecordSliceParams(n_examples_per_split=5)``). Features with
fewer than 20 activating fragments are skipped (and counted).

``bills2023``: the same, but the random fragments are uniform over all fragments, activating or not, as in
Bills et al.'s own ``random_sample``. They are drawn from the index's samples of activating and of
non-activating fragments, each slot activating with probability (activating fragments / fragments).

``delphi`` (Paulo et al. 2024 detection): activating fragments ranked into 10 equal-count activation
deciles; 2 per decile are explained on, up to 5 per decile are scored against up to 50 non-activating
fragments (window detection: AUROC and balanced accuracy, and recall per decile).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from saex.errors import SaexError
from saex.features.index import FeatureIndex
from saex.features.records import ActivationRecord

PRESETS = ("cunningham2023", "bills2023", "delphi")
MIN_FRAGMENTS = 20


@dataclass
class FeatureSample:
    feature: int
    explain: list[ActivationRecord]
    score_top: list[ActivationRecord] = field(default_factory=list)
    score_random: list[ActivationRecord] = field(default_factory=list)
    activating: list[ActivationRecord] = field(default_factory=list)
    decile: list[int] = field(default_factory=list)
    """Activation decile (0 lowest .. 9 highest) of each ``activating`` record (delphi)."""
    non_activating: list[ActivationRecord] = field(default_factory=list)


def check_preset(preset: str) -> None:
    if preset not in PRESETS:
        raise SaexError(f"unknown preset {preset!r}; allowed: {', '.join(PRESETS)}")


def sample_feature(index: FeatureIndex, f: int, preset: str, seed: int) -> FeatureSample | str:
    """The records one feature is explained and scored on, or the reason it is skipped."""
    check_preset(preset)
    active = int(index.t["active_fragments"][f])
    if active < MIN_FRAGMENTS:
        return f"fewer than {MIN_FRAGMENTS} activating fragments ({active})"
    top = index.records(f, "top")
    if len(top) < MIN_FRAGMENTS:
        raise SaexError(
            f"the index {index.path} keeps {len(top)} top fragments per feature; the protocol needs "
            f"{MIN_FRAGMENTS} (rebuild it with --top >= {MIN_FRAGMENTS})"
        )
    rand = index.records(f, "random")
    if preset == "delphi":
        return _delphi(index, f, rand)
    top = top[:MIN_FRAGMENTS]
    if preset == "cunningham2023":
        random20 = rand[:MIN_FRAGMENTS]
        if len(random20) < MIN_FRAGMENTS:
            raise SaexError(
                f"the index {index.path} keeps {len(rand)} random activating fragments per feature; "
                f"the protocol needs {MIN_FRAGMENTS} (rebuild it with --random >= {MIN_FRAGMENTS})"
            )
    else:
        zero = index.records(f, "zero")
        if len(rand) + len(zero) < MIN_FRAGMENTS:
            raise SaexError(
                f"the index {index.path} keeps {len(rand)} random activating and {len(zero)} "
                f"non-activating fragments for feature {f}; bills2023 draws {MIN_FRAGMENTS} from them "
                f"(rebuild it with larger --random and --zero)"
            )
        p_active = active / index.meta["n_fragments"]
        rng = np.random.default_rng([seed, 7, f])
        random20, ia, iz = [], 0, 0
        for _ in range(MIN_FRAGMENTS):
            take_active = rng.random() < p_active
            if (take_active and ia < len(rand)) or iz >= len(zero):
                random20.append(rand[ia])
                ia += 1
            else:
                random20.append(zero[iz])
                iz += 1
    return FeatureSample(f, explain=top[0::4], score_top=top[2::4], score_random=random20[1::3][:5])


def _delphi(index: FeatureIndex, f: int, rand: list[ActivationRecord]) -> FeatureSample:
    maxes = np.array([float(np.max(r.activations)) for r in rand])
    order = np.argsort(maxes, kind="stable")
    decile_of = np.empty(len(rand), dtype=np.int64)
    decile_of[order] = np.arange(len(rand)) * 10 // len(rand)
    explain, test, deciles = [], [], []
    for d in range(10):
        members = [i for i in range(len(rand)) if decile_of[i] == d]  # in the sample's random order
        explain += [rand[i] for i in members[:2]]
        test += [rand[i] for i in members[2:7]]
        deciles += [d] * len(members[2:7])
    return FeatureSample(f, explain=explain, activating=test, decile=deciles, non_activating=index.records(f, "zero"))
