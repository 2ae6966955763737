"""The resumable pipeline of ``saex reproduce``: the paper's whole study (Cunningham et al. 2023, §3-5, App. B-G).

harvest (residual + MLP hooks, one pass) → SAE sweeps over α and R (tied on the residual stream, untied on
the MLP, as the paper) → baselines → evaluation → feature index → autointerp → IOI → case studies →
dashboard → report. Every stage writes under one run folder (layout in ``docs/report.md``) and is recorded in
``reproduce.json`` with a key: the hash of its configuration and of the content hashes of what its inputs
wrote. A stage whose key and outputs are unchanged is skipped; one killed half-way is run again with the
same key, and the stage itself resumes (each saex command does); a stage whose key changed has its old
outputs removed first, so that nothing stale is mixed in.

``reproduce.json`` says how the run ended (``status``: running, done, failed with its ``error``, or interrupted)
and each stage's record how that stage did: a stage that raised is recorded as failed with the reason, never
left as running (only a kill leaves that, and the next run resumes it). ``check_configs`` builds every stage's
config, with its range checks, before anything runs. Nothing recorded holds a credential: URLs lose their
``user:key@`` (``saex.interpret.secrets``; ``credentials_not_recorded`` lists where) and keys are computed from
the configs as recorded.
"""

from __future__ import annotations

import ast
import dataclasses
import datetime
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from saex.config import config_dict, flag
from saex.errors import SaexError
from saex.files import tree_hash, write_json_atomic
from saex.interpret.secrets import redact, redact_text
from saex.reproduce.plan import Plan

STATE = "reproduce.json"


@dataclass
class Stage:
    name: str
    folder: str
    """Sub-folder of the run folder this stage owns (removed when its key changes)."""
    inputs: tuple[str, ...]
    config: Callable[[], dict]
    """The stage's configuration, built when it is reached (it may name folders its inputs wrote)."""
    run: Callable[[dict], object]
    optional: bool = False
    """A SaexError here (e.g. IOI on a tokenizer without single-token names) is recorded, not fatal."""
    soft: tuple[str, ...] = ()
    """Stages read when they ran (their hashes enter the key) but not required (the report)."""
    checked: bool = True
    """Whether ``check_configs`` builds its config before the run (not for a config that reads its sources)."""


UNKEYED = ("device", "lm_device")
"""Config fields left out of a stage's key: where it ran (a finished stage is not redone on another device)."""


def stage_key(name: str, config: dict, input_hashes: dict[str, str]) -> str:
    config = {k: v for k, v in config.items() if k not in UNKEYED}
    config = redact(config)[0]  # the config as recorded: a credential neither enters nor changes a key
    blob = json.dumps({"stage": name, "config": config, "inputs": input_hashes}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def parse_overrides(text: str, plan: Plan) -> Plan:
    """The plan with ``key=value,key=[1,2]`` applied: keys are plan fields; values are Python literals (or
    text), converted and checked as the plan's fields declare."""
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    parts.append(cur)
    names = [f.name for f in dataclasses.fields(plan)]
    for part in (p.strip() for p in parts):
        if not part:
            continue
        if "=" not in part:
            raise SaexError(f"--set item {part!r} is not key=value")
        key, value = (s.strip() for s in part.split("=", 1))
        if key not in names:
            raise SaexError(f"--set key {key!r} is not in the plan; allowed: {', '.join(sorted(names))}")
        try:
            parsed = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            parsed = value
        old = getattr(plan, key)
        if isinstance(old, list) and isinstance(parsed, str):
            parsed = [parsed]  # one item: a list of text is written without brackets
        try:
            plan = dataclasses.replace(plan, **{key: parsed})
        except SaexError as e:  # the message names the plan key, not an option
            message = str(e).replace(flag(key), key)
            raise SaexError(f"--set {key}={value}: {message} (the plan has {old!r})") from None
    return plan


def check_configs(stages: list[Stage]) -> None:
    """Build the config of every stage that can be built before the run (``Stage.checked``): each runs its range
    checks, so that a value no stage accepts fails before any work, naming the stage."""
    for st in stages:
        if not st.checked:
            continue
        try:
            st.config()
        except SaexError as e:
            raise SaexError(f"stage {st.name}: {e}") from None


def _reason(e: BaseException) -> str:
    """A failure as reproduce.json records it: the message of a SaexError, the type and message of anything else."""
    return redact_text(str(e) if isinstance(e, SaexError) else f"{type(e).__name__}: {e}")


class Pipeline:
    """Runs stages in order against the state file; skip, resume and invalidate as the module docstring says."""

    def __init__(self, root: Path, header: dict, stages: list[Stage], log=print):
        self.root, self.stages, self.log = root, stages, log
        self.path = root / STATE
        self.state = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.state.update(header)
        self.state.setdefault("stages", {})

    def save(self) -> None:
        """Write the state, every URL in it without credentials (the ones in memory keep them: stages use them)."""
        self.root.mkdir(parents=True, exist_ok=True)
        state, removed = redact({k: v for k, v in self.state.items() if k != "credentials_not_recorded"})
        if removed:
            state["credentials_not_recorded"] = removed
        write_json_atomic(self.path, state)

    def _drop(self, folder: str | None) -> None:
        """Remove a stage's folder (always one inside the run folder) so the report cannot read stale outputs."""
        if folder and (self.root / folder).resolve().is_relative_to(self.root.resolve()):
            shutil.rmtree(self.root / folder, ignore_errors=True)

    def run(self) -> dict:
        """Run every stage; the state. A stage that fails (not an optional one) stops the run: recorded as failed,
        the run too, and the error raised."""
        self.state["status"] = "running"
        self.state.pop("error", None)
        try:
            self._run()
        except KeyboardInterrupt:
            self.state["status"] = "interrupted"
            self.save()
            raise
        except Exception as e:
            self.state |= {"status": "failed", "error": _reason(e)}
            self.save()
            raise
        self.state["status"] = "done"
        self.save()
        return self.state

    def _fail(self, st: Stage, record: dict, e: Exception) -> None:
        """Record a stage that raised: failed, with the reason (an optional stage's folder removed); the caller
        re-raises unless the stage is optional."""
        self.state["stages"][st.name] = record | {"status": "failed", "reason": _reason(e), "folder": st.folder}
        if st.optional and isinstance(e, SaexError):
            self._drop(st.folder)
        self.save()

    def _run(self) -> None:
        records = self.state["stages"]
        names = {st.name for st in self.stages}
        for name in [n for n in records if n not in names]:  # stages of an earlier plan (e.g. other layers)
            self.log(f"{name}: not in this plan any more; removing its outputs")
            self._drop(records.pop(name).get("folder"))
        for i, st in enumerate(self.stages, 1):
            tag = f"[{i}/{len(self.stages)}] {st.name}"
            missing = [n for n in st.inputs if records.get(n, {}).get("status") != "done"]
            if missing:
                self._drop(st.folder)
                records[st.name] = {"status": "not run", "reason": f"needs {', '.join(missing)}", "folder": st.folder}
                self.log(f"{tag}: not run (needs {', '.join(missing)})")
                self.save()
                continue
            try:
                cfg = st.config()
            except Exception as e:
                self._fail(st, {}, e)
                if not (st.optional and isinstance(e, SaexError)):
                    raise
                self.log(f"{tag}: failed, continuing without it: {e}")
                continue
            done = [n for n in st.inputs + st.soft if records.get(n, {}).get("status") == "done"]
            key = stage_key(st.name, cfg, {n: records[n]["outputs"] for n in done})
            rec = records.get(st.name, {})
            folder = self.root / st.folder
            if rec.get("status") == "done" and rec.get("key") == key:
                if folder.exists() and tree_hash(folder) == rec.get("outputs"):
                    self.log(f"{tag}: unchanged, skipped")
                    continue
                self.log(f"{tag}: its outputs changed on disk since it ran; running it again")
                shutil.rmtree(folder, ignore_errors=True)
            elif rec.get("key") not in (None, key) and folder.exists():
                self.log(f"{tag}: configuration or inputs changed; removing its old outputs")
                shutil.rmtree(folder)
            elif rec.get("status") == "running":
                self.log(f"{tag}: resuming an interrupted run")
            records[st.name] = {"key": key, "status": "running", "config": cfg, "folder": st.folder}
            self.save()
            self.log(f"{tag}: running")
            t0 = time.perf_counter()
            try:
                st.run(cfg)
            except Exception as e:  # a kill (KeyboardInterrupt) leaves it running: the next run resumes it
                self._fail(st, {"key": key, "status": "failed", "reason": "", "config": cfg}, e)
                if not (st.optional and isinstance(e, SaexError)):
                    raise
                self.log(f"{tag}: failed, continuing without it: {e}")
                continue
            records[st.name] = {
                "key": key,
                "status": "done",
                "config": cfg,
                "folder": st.folder,
                "outputs": tree_hash(folder),
                "seconds": round(time.perf_counter() - t0, 1),
                "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            }
            self.save()
            self.log(f"{tag}: done in {records[st.name]['seconds']:.0f} s")


def relative_to_run(obj, root: Path):
    """Configs name folders inside the run folder relative to it, so a moved run folder keeps its keys (each
    item of a list, and of a comma-separated text, too: eval's --dicts names the trained and the baseline
    folders)."""
    if isinstance(obj, dict):
        return {k: relative_to_run(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [relative_to_run(v, root) for v in obj]
    if isinstance(obj, str):
        r = str(root)
        return ",".join("$OUT" + s[len(r) :] if s == r or s.startswith(r + "/") else s for s in obj.split(","))
    return obj


def absolute_in_run(obj, root: Path):
    """The inverse of ``relative_to_run``: ``$OUT`` back to the run folder."""
    if isinstance(obj, dict):
        return {k: absolute_in_run(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [absolute_in_run(v, root) for v in obj]
    if isinstance(obj, str) and "$OUT" in obj:
        return ",".join(str(root) + s[4:] if s.startswith("$OUT") else s for s in obj.split(","))
    return obj


def stage_config(obj) -> dict:
    """A stage's config as the JSON dict its key is computed from: a stage module's config dataclass, or the
    plain dict of a stage that is no saex command (``saex compare``'s summary)."""
    return obj if isinstance(obj, dict) else config_dict(obj)


def module_stage(
    name: str,
    folder: str,
    inputs: tuple[str, ...] | list[str],
    make: Callable[[], object],
    module,
    root: Path,
    progress: bool,
    optional: bool = False,
    soft: tuple[str, ...] = (),
) -> Stage:
    """A stage that runs a saex command's module (``saex.stages``) in-process: ``make()`` builds its config
    dataclass, the key sees it with run-folder paths made relative, the module's ``run`` runs it."""
    return Stage(
        name,
        folder,
        tuple(inputs),
        lambda: relative_to_run(stage_config(make()), root),
        lambda c: module.run(module.CONFIG(**absolute_in_run(c, root)), progress=progress),
        optional,
        tuple(soft),
    )
