"""Finding dictionary folders (and other per-dictionary folders) named on the command line."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from saex.dictionaries import formats
from saex.dictionaries.sae import SAE
from saex.errors import SaexError


def find_folders(
    spec: list[str] | str, marker: str, what: str, option: str, found: Callable[[Path], bool] | None = None
) -> dict[str, Path]:
    """Name -> folder for every folder named by ``spec`` (a list, or comma-separated text) that holds
    ``marker`` (or passes ``found``), or whose entries do. Names are ``formats.name_of`` theirs, made
    unique with their parent (``parent/name``) on a clash."""
    is_one = found or (lambda p: (p / marker).is_file())
    folders: list[Path] = []
    parts = spec.split(",") if isinstance(spec, str) else spec
    for part in [str(p).strip() for p in parts if str(p).strip()]:
        path = formats.from_hub(part) if part.startswith(formats.HUB) else Path(part)
        if is_one(path):
            folders.append(path)
        elif path.is_dir():
            inside = sorted(p for p in path.iterdir() if is_one(p))
            if not inside:
                raise SaexError(f"{path} holds no {what} ({marker})")
            folders += inside
        else:
            raise SaexError(f"{option} path {path} does not exist")
    if not folders:
        raise SaexError(f"{option} names no {what}")

    names = [formats.name_of(f) for f in folders]
    return {(f"{f.parent.name}/{n}" if names.count(n) > 1 else n): f for f, n in zip(folders, names, strict=True)}


def find_dictionaries(spec: list[str] | str) -> dict[str, Path]:
    """Name -> path of every dictionary named by ``spec``, in any format ``saex.dictionaries.formats`` reads."""
    return find_folders(
        spec,
        "saex / SAELens, sparsify, dictionary_learning, Gemma Scope or OpenAI files",
        "dictionary folders",
        "--dicts",
        found=formats.is_dictionary,
    )


def hook_of(d: SAE, name: str, hook: str | None) -> str:
    """The hook point a dictionary reads: ``hook`` when given, else the one it records (one clear error when it
    records none, or one from another library that saex cannot map)."""
    h = hook or d.metadata.get("hook_name")
    if h:
        return h
    if d.metadata.get("hook_error"):
        raise SaexError(f"dictionary {name}: {d.metadata['hook_error']}")
    raise SaexError(f"dictionary {name} records no hook point; name one with --hook")


def open_for_store(spec: list[str] | str, store, hook: str | None) -> dict[str, tuple[Path, SAE, str]]:
    """Name -> (folder, dictionary, hook point) for the dictionaries named by ``spec``, each checked against
    the activation store: its hook (``hook``, else its own metadata's) must be there, with its width, and so
    must a transcoder's target hook (its metadata's ``target_hook``), with the width of its output."""
    out = {}
    for name, folder in find_dictionaries(spec).items():
        d = formats.load(folder)
        h = hook_of(d, str(folder), hook)
        if h not in store.hooks:
            raise SaexError(
                f"dictionary {folder} is for hook {h!r}, which the store {store.path} lacks; it has {store.hooks}"
            )
        if d.d_in != store.width(h):
            raise SaexError(f"dictionary {folder} has d_in {d.d_in}, but {h} in the store has width {store.width(h)}")
        if d.transcoder:
            target = d.metadata.get("target_hook")
            if not target:
                raise SaexError(
                    d.metadata.get("hook_error") or f"transcoder {name} records no target hook (metadata target_hook)"
                )
            if target not in store.hooks:
                raise SaexError(
                    f"transcoder {name} reconstructs {target!r}, which the store {store.path} lacks; "
                    f"it has {store.hooks}"
                )
            if d.d_out != store.width(target):
                raise SaexError(
                    f"transcoder {name} has d_out {d.d_out}, but {target} in the store has width {store.width(target)}"
                )
        out[name] = (folder, d, h)
    return out


def refuse_transcoder(d: SAE, folder: Path, command: str) -> None:
    """Stages whose method edits the activation a dictionary reads (feature patching and ablation) cannot
    take a transcoder, whose features write to another hook point."""
    if d.transcoder:
        raise SaexError(
            f"{folder} is a transcoder (it reads {d.metadata.get('hook_name')} and writes "
            f"{d.metadata.get('target_hook')}); saex {command} patches and ablates features at the hook point a "
            "dictionary reconstructs, so it takes autoencoders only"
        )
