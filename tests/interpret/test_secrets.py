"""``saex.interpret.secrets``: URLs without credentials, API keys refused where a variable's name is asked for, and
the OpenAI backend's messages and last error free of both."""

from __future__ import annotations

import pytest

from saex.errors import SaexError
from saex.interpret.secrets import check_key_env_name, looks_like_key, redact, redact_text
from saex.stages.interpret import InterpretConfig
from saex.stages.reproduce import ReproduceConfig


@pytest.mark.parametrize(
    "url, clean",
    [
        ("http://user:KEY@host:8080/v1", "http://host:8080/v1"),
        ("https://KEY@api.example.com/v1/", "https://api.example.com/v1/"),
        ("http://host/v1", "http://host/v1"),
        ("http://host/v1?api_key=KEY&x=1", "http://host/v1?api_key=REDACTED&x=1"),
        ("http://host/v1?x=1&access_token=KEY", "http://host/v1?x=1&access_token=REDACTED"),
        # inside a message, and in a comma-separated list of folders
        ("cannot reach http://u:KEY@h/v1 (HTTP 500)", "cannot reach http://h/v1 (HTTP 500)"),
        ("/runs/a,hf://org/repo,http://u:KEY@h/x", "/runs/a,hf://org/repo,http://h/x"),
        ("user@example.com wrote no URL", "user@example.com wrote no URL"),
    ],
)
def test_redact_text(url, clean):
    assert redact_text(url) == clean


def test_redact_names_what_it_changed():
    cfg = {"base_url": "http://u:p@h/v1", "model": "m", "dicts": ["a", "http://x:y@z/w"], "n": 3, "none": None}
    clean, found = redact(cfg)
    assert clean == {"base_url": "http://h/v1", "model": "m", "dicts": ["a", "http://z/w"], "n": 3, "none": None}
    assert found == ["base_url", "dicts[1]"]
    assert redact({"a": {"b": "http://h/v1"}}) == ({"a": {"b": "http://h/v1"}}, [])


@pytest.mark.parametrize(
    "name", ["OPENAI_API_KEY", "SAEX_TEST_KEY", "AZURE_OPENAI_API_KEY_2024", "OPENAI_KEY_20240101_PROJECT", "_x"]
)
def test_variable_names_are_names(name):
    assert not looks_like_key(name)
    check_key_env_name(name)


@pytest.mark.parametrize(
    "value",
    [
        "sk-abc123",
        "sk_live_abcdef",
        "sk-proj-AbCdEf0123456789AbCdEf0123456789",
        "AIzaSyD3fGh8jKlMnOpQrStUvWxYz012345678",
        "0123456789abcdef0123456789abcdef01234567",
        "has space",
        "1STARTS_WITH_A_DIGIT",
    ],
)
def test_keys_are_refused_without_being_shown(value):
    assert looks_like_key(value)
    with pytest.raises(SaexError) as e:
        check_key_env_name(value)
    assert value not in str(e.value) and "--api-key-env takes the NAME" in str(e.value)


def test_configs_refuse_a_key_as_the_variable_name():
    for cls in (InterpretConfig, ReproduceConfig):
        with pytest.raises(SaexError) as e:
            cls(api_key_env="sk-abc123def456")
        assert "sk-abc123def456" not in str(e.value)
        with pytest.raises(SaexError, match="is empty"):
            cls(api_key_env="")


def test_openai_backend_messages_hold_no_credential(tmp_path, monkeypatch):
    """The key is never part of the backend's repr or messages, nor is the URL's userinfo; a key pasted as the
    variable's name is refused before anything else."""
    pytest.importorskip("openai")
    from saex.interpret.llm.openai_backend import OpenAIBackend
    from tests.interpret._stub_server import StubReply, StubServer

    monkeypatch.setenv("SAEX_K", "sk-the-real-key-0123")
    with pytest.raises(SaexError) as e:
        OpenAIBackend("m", "http://127.0.0.1:9/v1", api_key_env="sk-the-real-key-0123")
    assert "sk-the-real-key" not in str(e.value)
    with StubServer(handler=lambda path, body: StubReply(status=500, body={"error": {"message": "down"}})) as stub:
        url = stub.url.replace("http://", "http://u:PASSWORD@")
        b = OpenAIBackend("m", url, api_key_env="SAEX_K", cache_dir=tmp_path / "cache", max_retries=1, backoff_s=0.0)
        assert "PASSWORD" not in repr(b) and "sk-the-real-key" not in repr(b)
        got = b.chat([{"role": "user", "content": "hi"}], max_tokens=1, parse=lambda r: r.text)
        assert got is None and b.stats["failures"] == 1
        assert b.last_error is not None and b.last_error.startswith("HTTP 500") and "down" in b.last_error
        assert "PASSWORD" not in b.last_error
        with pytest.raises(SaexError) as e:
            b.probe()
        assert "PASSWORD" not in str(e.value) and stub.url in str(e.value) and "last error: HTTP 500" in str(e.value)
