"""Atomic training checkpoints: parameters, Adam state, dead-feature counters and the data position.

``checkpoint/state-<step>.safetensors`` holds every tensor; ``checkpoint/state.json`` (written after it,
atomically) names the current one and holds the scalars. A kill between the two leaves the previous
state.json pointing at the previous, complete tensors file. No pickle.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file

from saex.files import write_json_atomic, write_safetensors_atomic

FOLDER = "checkpoint"


def save(out: Path, step: int, tensors: dict[str, torch.Tensor], scalars: dict) -> None:
    folder = out / FOLDER
    name = f"state-{step:09d}.safetensors"
    write_safetensors_atomic(
        folder / name, {k: v.detach().cpu().contiguous() for k, v in tensors.items()}, {"step": str(step)}
    )
    write_json_atomic(folder / "state.json", {**scalars, "step": step, "tensors": name})
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def load(out: Path) -> tuple[dict, dict[str, torch.Tensor]] | None:
    path = out / FOLDER / "state.json"
    if not path.is_file():
        return None
    scalars = json.loads(path.read_text())
    return scalars, load_file(str(out / FOLDER / scalars["tensors"]))


def optimizer_tensors(opt: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    out = {}
    for name, p in params.items():
        for key, value in opt.state.get(p, {}).items():
            out[f"adam.{name}.{key}"] = value if torch.is_tensor(value) else torch.tensor(value)
    return out


def restore_optimizer(
    opt: torch.optim.Optimizer, params: dict[str, torch.nn.Parameter], tensors: dict[str, torch.Tensor]
) -> None:
    for name, p in params.items():
        # on the parameter's device: a fused Adam on a GPU keeps its state (its step count included) there
        state = {
            key.rsplit(".", 1)[1]: v.to(p.device)
            for key, v in tensors.items()
            if key.rsplit(".", 1)[0] == f"adam.{name}"
        }
        if state:
            opt.state[p] = state
