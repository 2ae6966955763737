"""Hostile input and faults in ``saex reproduce``: every option and ``--set`` value checked before any work (the
plan's own checks, then every stage's config built from it), a failed stage recorded as failed (never left
running), a folder that is not a reproduce run refused, and no credential in reproduce.json."""

from __future__ import annotations

import json

import pytest

from saex.errors import SaexError
from saex.reproduce.pipeline import STATE, Pipeline, Stage, check_configs, stage_key
from tests._cli import run_cli as _main
from tests.causal._helpers import save_ioi_model

PASSWORD = "pw-in-the-url-9f8e7d6c5b4a"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    save_ioi_model(root, docs=20)
    return root / "model"


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {err!r}"
    assert lines[0].startswith("saex reproduce: error: ") and "Traceback" not in err
    return lines[0]


def _state(out) -> dict:
    return json.loads((out / STATE).read_text())


def test_an_unknown_backend_fails_before_any_work(tmp_path):
    # the model does not exist: the backend is refused before anything loads
    rc, stdout, err = _main("reproduce", "--backend", "foo", "--model", tmp_path / "absent", "--out", tmp_path / "r")
    line = _one_error_line(err)
    assert rc == 2 and "unknown --backend 'foo'; allowed: offline, openai, hf" in line
    assert stdout == "" and not (tmp_path / "r").exists()


@pytest.mark.parametrize("value", ["sk-abc123def456", "AIzaSyD3fGh8jKlMnOpQrStUvWxYz012345678"])
def test_a_key_as_the_variable_name_is_refused_unshown(tmp_path, value):
    rc, stdout, err = _main(
        "reproduce", "--backend", "openai", "--api-key-env", value, "--model", tmp_path / "m", "--out", tmp_path / "r"
    )
    line = _one_error_line(err)
    assert rc == 2 and "--api-key-env takes the NAME" in line and value not in err and value not in stdout
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "bad, message",
    [
        # the plan accepts an empty list; the main layer's training does not
        ("ratios_resid=[]", "stage train:blocks.1.hook_resid_post: dictionary ratio R is empty"),
        ("tokens=-5", "--set tokens=-5: tokens must be positive, got -5"),
    ],
)
def test_set_values_are_checked_against_every_stage_before_the_plan(model, tmp_path, bad, message):
    out = tmp_path / "r"
    rc, stdout, err = _main("reproduce", "--model", model, "--out", out, "--set", bad, "--quiet")
    line = _one_error_line(err)
    assert rc == 2 and message in line
    assert stdout == ""  # no plan printed, nothing started
    assert not (out / STATE).exists() and not (out / "acts").exists()


def test_every_stage_config_of_the_default_plans_builds(model, tmp_path):
    """The preview placeholders make configs every stage accepts: a plan without --set passes the check."""
    for preset in ("quick", "standard", "paper"):
        rc, stdout, err = _main(
            "reproduce", "--preset", preset, "--model", model, "--out", tmp_path / preset, "--dry-run"
        )
        assert rc == 0, err
        assert "stages: harvest" in stdout


def test_a_failed_stage_is_recorded_and_no_credential_is(model, tmp_path, monkeypatch):
    monkeypatch.setenv("SAEX_FAULTS_KEY", "sk-from-the-environment-0123")
    out = tmp_path / "r"
    args = [
        "reproduce",
        "--model",
        model,
        "--corpus",
        tmp_path / "absent.jsonl",
        "--out",
        out,
        "--backend",
        "openai",
        "--llm-model",
        "m",
        "--base-url",
        f"http://user:{PASSWORD}@127.0.0.1:9/v1",
        "--api-key-env",
        "SAEX_FAULTS_KEY",
        "--set",
        "context_length=32",
        "--quiet",
    ]
    for _ in range(2):  # and again: a rerun of a failed stage fails the same way, and says so
        rc, stdout, err = _main(*args)
        assert rc == 2
        state = _state(out)
        assert state["status"] == "failed" and "corpus" in state["error"]  # the harvest's error, as printed
        assert err.strip().splitlines()[-1] == f"saex reproduce: error: {state['error']}"
        assert state["stages"]["harvest"]["status"] == "failed"
        assert state["stages"]["harvest"]["reason"] == state["error"]
        assert state["reproduce_config"]["base_url"] == "http://127.0.0.1:9/v1"
        assert state["credentials_not_recorded"] == ["reproduce_config.base_url"]
    for path in out.rglob("*"):
        if path.is_file():
            text = path.read_text(errors="replace")
            assert PASSWORD not in text and "sk-from-the-environment" not in text, path
    assert PASSWORD not in stdout + err


@pytest.mark.parametrize("dry_run", [False, True])
def test_a_folder_that_is_not_a_run_is_refused(model, tmp_path, dry_run):
    out = tmp_path / "mine"
    (out / "report").mkdir(parents=True)
    (out / "report" / "report.html").write_text("my own report")
    rc, stdout, err = _main("reproduce", "--model", model, "--out", out, "--quiet", *(["--dry-run"] * dry_run))
    line = _one_error_line(err)
    assert rc == 2 and f"output folder {out} is not empty and holds no saex reproduce run" in line
    assert stdout == "" and (out / "report" / "report.html").read_text() == "my own report"
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["report"]


# ---- the pipeline ---------------------------------------------------------------------------------------------


def _fail(e: BaseException):
    def run(cfg):
        raise e

    return run


@pytest.mark.parametrize(
    "error, reason", [(SaexError("bad corpus"), "bad corpus"), (ValueError("a bug"), "ValueError: a bug")]
)
def test_a_stage_that_raises_is_recorded_as_failed(tmp_path, error, reason):
    stages = [
        Stage("a", "a", (), lambda: {"v": 1}, lambda cfg: (tmp_path / "a").mkdir()),
        Stage("b", "b", (), dict, _fail(error)),
    ]
    with pytest.raises(type(error)):
        Pipeline(tmp_path, {"h": 1}, stages, log=lambda m: None).run()
    state = _state(tmp_path)
    assert (state["status"], state["error"]) == ("failed", reason)
    assert state["stages"]["a"]["status"] == "done"
    assert state["stages"]["b"]["status"] == "failed" and state["stages"]["b"]["reason"] == reason
    # a config that cannot be built is a failure too, recorded before it is raised
    with pytest.raises(SaexError):
        Pipeline(
            tmp_path, {}, [Stage("c", "c", (), lambda: _fail(SaexError("no calibration"))({}), dict)], log=print
        ).run()
    assert _state(tmp_path)["stages"]["c"] == {"status": "failed", "reason": "no calibration", "folder": "c"}


def test_a_kill_leaves_the_stage_running_and_a_finished_run_says_done(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        Pipeline(tmp_path, {}, [Stage("a", "a", (), dict, _fail(KeyboardInterrupt()))], log=lambda m: None).run()
    state = _state(tmp_path)
    assert state["status"] == "interrupted" and state["stages"]["a"]["status"] == "running"
    done = Pipeline(tmp_path, {}, [Stage("a", "a", (), dict, lambda cfg: None)], log=lambda m: None).run()
    assert done["status"] == "done" and "error" not in _state(tmp_path)


def test_credentials_reach_the_stage_but_not_the_state_file(tmp_path):
    url = f"http://user:{PASSWORD}@host:8080/v1"
    seen = []
    stage = Stage("llm", "llm", (), lambda: {"base_url": url, "n": 1}, seen.append)
    Pipeline(tmp_path, {"reproduce_config": {"base_url": url}}, [stage], log=lambda m: None).run()
    assert seen == [{"base_url": url, "n": 1}]  # the stage runs with what it was given
    text = (tmp_path / STATE).read_text()
    assert PASSWORD not in text
    state = json.loads(text)
    assert state["stages"]["llm"]["config"]["base_url"] == "http://host:8080/v1"
    assert state["credentials_not_recorded"] == ["reproduce_config.base_url", "stages.llm.config.base_url"]
    # the key is the one of the config as recorded: a changed password does not rerun the stage
    assert state["stages"]["llm"]["key"] == stage_key("llm", {"base_url": "http://host:8080/v1", "n": 1}, {})


def test_check_configs_names_the_stage():
    def bad():
        raise SaexError("--steps must be positive, got 0")

    stages = [
        Stage("ok", "ok", (), dict, dict),
        Stage("train:x", "t", (), bad, dict),
        Stage("given", "g", (), bad, dict, checked=False),
    ]
    with pytest.raises(SaexError, match=r"^stage train:x: --steps must be positive, got 0$"):
        check_configs(stages)
    check_configs([stages[0], stages[2]])  # a stage whose config reads its sources is not built early
