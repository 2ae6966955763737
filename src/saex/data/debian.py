"""Offline English text corpora shipped as Debian packages.

Each source is read from the files its package installs; nothing is downloaded at run time.
``get_source(name)`` returns a `DebianSource`, or tells the user which ``apt-get install`` is missing.

Source (``name``): Debian package; licence; attribution.

- ``kjv``: bible-kjv; public domain; King James Version (1611), decoded by Chip Chapin's ``bible``.
- ``gcide``: dict-gcide; GPL-2+; GNU Collaborative International Dictionary of English 0.48
  (Webster's Revised Unabridged 1913 + WordNet), ed. Patrick Cassidy.
- ``linux-doc``: linux-doc-6.1; GPL-2; Linux kernel documentation, Linus Torvalds and others.
- ``python-doc``: python3.11-doc; PSF licence; Python 3.11 documentation, Python Software Foundation.
- ``wordnet``: wordnet-base; WordNet 3.0 licence (permissive); WordNet 3.0, (c) 2006 Princeton University.
- ``fortunes``: fortunes; BSD / mixed; BSD fortune(6) data, Ken Arnold and many contributors.
- ``jargon``: jargon-text; public domain; The Jargon File 4.4.7, ed. Eric S. Raymond.

Document units: one Bible chapter (verses one per line), one GCIDE entry, one reST source file, 50
consecutive WordNet synsets of one part of speech (one ``lemma, lemma: gloss`` line each, because a
single gloss is only a dozen words), one fortune, one Jargon File entry or front/back-matter section.
Left out as not English text: Linux's ``translations/`` and the ``ascii-art`` fortune file.
Keys depend only on the source files, never on iteration order; a name that repeats (GCIDE has two
entries "Bank") gets ``#2``, ``#3`` in file order.
"""

import gzip
import hashlib
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import cast

from saex.data.documents import Document
from saex.errors import SaexError


@dataclass(frozen=True)
class DebianSource:
    """One corpus: where its package puts the text, and how to turn that into documents."""

    name: str
    package: str
    licence: str
    root: Path
    """The file or folder the package installs the text under; tests point it elsewhere."""
    list_files: Callable[[Path], list[Path]] = field(repr=False)
    read: Callable[[Path], Iterator[Document]] = field(repr=False)
    programs: tuple[str, ...] = ()
    """Executables the reader runs (``bible`` for the KJV)."""

    def files(self) -> list[Path]:
        return sorted(self.list_files(self.root))

    def is_installed(self) -> bool:
        return bool(self.files()) and all(shutil.which(p) for p in self.programs)

    def check_installed(self) -> None:
        if not self.is_installed():
            raise SaexError(
                f"corpus {self.name!r} needs the Debian package {self.package!r} "
                f"(nothing usable at {self.root}); install it with: apt-get install {self.package}"
            )

    def documents(self) -> Iterator[Document]:
        self.check_installed()
        return (doc for doc in self.read(self.root) if doc.text.strip())

    def fingerprint(self) -> str:
        """sha256 over the name and every source file (relative path and bytes), in sorted order."""
        self.check_installed()
        digest = hashlib.sha256(self.name.encode() + b"\0")
        base = self.root if self.root.is_dir() else self.root.parent
        for path in self.files():
            digest.update(path.relative_to(base).as_posix().encode() + b"\0")
            with path.open("rb") as f:
                while chunk := f.read(1 << 20):
                    digest.update(chunk)
        return digest.hexdigest()


# --- shared helpers ---------------------------------------------------------------------------


class _Keys:
    """Makes keys unique by numbering repeats in file order, so they never depend on who iterates."""

    def __init__(self, prefix: str) -> None:
        self.prefix, self.seen = prefix, Counter[str]()

    def __call__(self, name: str) -> str:
        key = f"{self.prefix}:{name}"
        self.seen[key] += 1
        return key if self.seen[key] == 1 else f"{key}#{self.seen[key]}"


def _squeeze(text: str) -> str:
    """Drop trailing spaces and blank runs, keeping line structure (code, verse) intact."""
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


def _unwrap(lines: Iterable[str]) -> str:
    """Join a hard-wrapped paragraph into one line with single spaces."""
    return " ".join(" ".join(lines).split())


def _paragraphs(lines: Iterable[str]) -> Iterator[list[str]]:
    para: list[str] = []
    for line in lines:
        if line.strip():
            para.append(line.rstrip())
        elif para:
            yield para
            para = []
    if para:
        yield para


def _existing(*paths: Path) -> list[Path]:
    return list(paths) if all(p.is_file() for p in paths) else []


# --- King James Bible -------------------------------------------------------------------------

_VERSE = re.compile(r"^(\d?[A-Za-z]+)(\d+):(\d+) (.*)$")  # "1Cor13:4 Charity suffereth long..."


def parse_kjv(lines: Iterable[str]) -> Iterator[Document]:
    """``bible -f`` output (one "Ge1:1 text" verse per line) to one document per chapter."""
    chapter, verses = "", cast(list[str], [])
    for line in lines:
        match = _VERSE.match(line.strip())
        if match is None:  # a wrapped verse, should ``bible`` ever wrap: belongs to the last verse
            if line.strip() and verses:
                verses[-1] += " " + " ".join(line.split())
            continue
        if match[1] + match[2] != chapter:
            if verses:
                yield Document(f"kjv:{chapter}", "\n".join(verses))
            chapter, verses = match[1] + match[2], []
        verses.append(" ".join(match[4].split()))
    if verses:
        yield Document(f"kjv:{chapter}", "\n".join(verses))


def read_kjv(data_file: Path) -> Iterator[Document]:
    # bible.data is a custom compressed format; only the ``bible`` program decodes it. ``-d`` takes
    # a name relative to the search path ``-p``, not a full path.
    cmd = ["bible", "-p", str(data_file.parent), "-d", data_file.name, "-f", "gen1:1-rev22:21"]
    with subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8", errors="replace"
    ) as proc:
        assert proc.stdout is not None
        yield from parse_kjv(proc.stdout)
        error = proc.stderr.read().strip() if proc.stderr else ""
    if proc.returncode != 0:
        raise SaexError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {error}")


# --- GCIDE ------------------------------------------------------------------------------------

_B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
# "\Spurt\ (sp[^u]rt)": the pronunciation (sometimes wrapped onto a second line), plus a
# parenthesised respelling right after it; "(Bot.)" is capitalised and has no respelling characters.
_PRON = re.compile(r"[ \t]*\\[^\\\n]*\n?[^\\\n]*\\(?:[ \t]*\((?![A-Z])[^()\n]*[\[\"`*?][^()\n]*\))?")
_SOURCE_TAG = (
    r"(?:1913 Webster|Webster 1913 Suppl\.|WordNet(?: 1\.[56]| sense [\d+& ]+)?"
    r"|Century Dict(?:\.|ionary),? 1906\.?|Century Dict\.|PJC\.?|RDH|AS|CV|RP|GG|JG|CM|MW10|PC|#here)"
)
# "[1913 Webster]", "[WordNet 1.5 +PJC]": who supplied the text, not part of it. Tags may wrap, and a
# few lack the "[". Separators are written so that no two \s* meet (that backtracks badly on indents).
_SOURCE = re.compile(rf"(?:\[\s*(?:\+\s*)?)?{_SOURCE_TAG}(?:(?:\s*\+\s*|\s+){_SOURCE_TAG})*\s*\]".replace(" ", r"\s+"))


def _b64(text: str) -> int:
    value = 0
    for char in text:
        value = value * 64 + _B64.index(char)
    return value


def gcide_entries(index_file: Path) -> list[tuple[int, int, str]]:
    """(offset, length, first headword) of each entry, in file order, from the dictd index.

    Entries are not blank-line separated (senses are), so the index is the reliable boundary. Many
    headwords share one entry; the "00-database-*" entries are metadata and licence text."""
    entries: dict[tuple[int, int], str] = {}
    with index_file.open(encoding="utf-8", errors="replace") as f:
        for line in f:
            headword, offset, length = line.rstrip("\n").split("\t")[:3]
            entries.setdefault((_b64(offset), _b64(length)), headword)
    skip = {span for span, head in entries.items() if head.startswith("00-")}
    return sorted((o, n, head) for (o, n), head in entries.items() if (o, n) not in skip)


def clean_gcide(raw: str) -> str:
    lines = raw.rstrip().split("\n")
    if tag := _SOURCE.search(lines[-1]):  # after the entry's last tag, only the next headword leaks
        lines[-1] = lines[-1][: tag.start()]  # in: "[1913 Webster] Abatis"
    text = _SOURCE.sub("", "\n".join(lines))  # a tag alone on its line leaves a paragraph break
    text = _PRON.sub("", text).replace("{", "").replace("}", "")
    return "\n\n".join(_unwrap(p) for p in _paragraphs(text.split("\n")))


def read_gcide(root: Path) -> Iterator[Document]:
    keys = _Keys("gcide")
    with gzip.open(root / "gcide.dict.dz", "rb") as f:  # dictzip is gzip-compatible
        for offset, length, headword in gcide_entries(root / "gcide.index"):
            f.seek(offset)  # forward seeks only: entries are sorted, so this streams
            data = f.read(length)
            try:
                raw = data.decode("utf-8")
            except UnicodeDecodeError:  # three stray cp1252 bytes in 0.48
                raw = data.decode("cp1252", errors="replace")
            name = raw.split("\\", 1)[0].strip() if "\\" in raw.split("\n", 1)[0] else headword
            yield Document(keys(name or headword), clean_gcide(raw))


# --- reST documentation trees (Linux, Python) -------------------------------------------------


def _rst_files(root: Path, skip: tuple[str, ...] = ()) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.rglob("*.rst.txt") if p.is_file() and p.relative_to(root).parts[0] not in skip]


def read_rst_tree(root: Path, name: str, skip: tuple[str, ...] = ()) -> Iterator[Document]:
    """One document per reST source, kept as written: code blocks need their line breaks."""
    for path in sorted(_rst_files(root, skip)):
        key = path.relative_to(root).as_posix().removesuffix(".rst.txt")
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # some start with a BOM
        yield Document(f"{name}:{key}", _squeeze(text))


# Linux's translations/ (zh_CN, zh_TW, it_IT, ja_JP, ko_KR: 342 files, 3.7 MB) are not English.
_LINUX_SKIP = ("translations",)


def _linux_doc_root() -> Path:
    # The package name carries the kernel series (linux-doc-6.1 in bookworm); take the newest.
    found = Path("/usr/share/doc").glob("linux-doc-*/html/_sources")
    version = lambda p: [int(n) for n in re.findall(r"\d+", p.parts[-3])]
    return max(found, key=version, default=Path("/usr/share/doc/linux-doc-6.1/html/_sources"))


# --- WordNet ----------------------------------------------------------------------------------

WORDNET_GROUP = 50
_WORDNET_POS = ("noun", "verb", "adj", "adv")


def wordnet_line(line: str) -> tuple[str, str] | None:
    """(synset offset, "lemma, lemma: gloss") of one data-file line; None for the licence header."""
    if line.startswith("  ") or " | " not in line:
        return None
    head, gloss = line.split(" | ", 1)
    fields = head.split()
    count = int(fields[3], 16)
    # "beautiful(a)": adjective position markers are annotation, not words.
    words = [re.sub(r"\(\w+\)$", "", w).replace("_", " ") for w in fields[4 : 4 + 2 * count : 2]]
    return fields[0], f"{', '.join(words)}: {' '.join(gloss.split())}"


def read_wordnet(root: Path) -> Iterator[Document]:
    for pos in _WORDNET_POS:
        group: list[tuple[str, str]] = []
        with (root / f"data.{pos}").open(encoding="utf-8", errors="replace") as f:
            for line in f:
                if (parsed := wordnet_line(line)) is not None:
                    group.append(parsed)
                if len(group) == WORDNET_GROUP:
                    yield Document(f"wordnet:{pos}:{group[0][0]}", "\n".join(t for _, t in group))
                    group = []
        if group:
            yield Document(f"wordnet:{pos}:{group[0][0]}", "\n".join(t for _, t in group))


# --- fortunes ---------------------------------------------------------------------------------

_FORTUNE_SKIP = {"ascii-art"}  # pictures, not text


def _fortune_files(root: Path) -> list[Path]:
    # Text files have no suffix; *.dat are strfile indexes and *.u8 symlinks to the same text.
    if not root.is_dir():
        return []
    return [
        p
        for p in root.iterdir()
        if p.is_file() and not p.is_symlink() and "." not in p.name and p.name not in _FORTUNE_SKIP
    ]


def parse_fortunes(text: str, name: str) -> Iterator[Document]:
    """A fortune file: fortunes separated by lines holding only "%"; layout (verse, art) kept."""
    number = 0
    for chunk in re.split(r"^%[ \t]*$", text, flags=re.MULTILINE):
        if body := _squeeze(chunk):
            number += 1
            yield Document(f"fortunes:{name}:{number}", body)


def read_fortunes(root: Path) -> Iterator[Document]:
    for path in sorted(_fortune_files(root)):
        yield from parse_fortunes(path.read_text(encoding="utf-8", errors="replace"), path.name)


# --- Jargon File ------------------------------------------------------------------------------

_ENTRY = re.compile(r"^   :(.+?):(?=\s|$)\s*(.*)$")  # "   :heisenbug: /hi:'zen·buhg/, n."
_LETTER = re.compile(r"^  [0-9A-Z]$")  # "  B": a letter of the lexicon, followed by its word list


def _is_heading(para: list[str]) -> bool:
    # Chapter and appendix titles start in column 0; part titles are centred (deeply indented).
    line = para[0]
    return len(para) == 1 and (line[:1].isalnum() or (line.startswith(" " * 20) and line.strip()[:1].isalnum()))


def parse_jargon(lines: Iterable[str]) -> Iterator[Document]:
    """The plain-text Jargon File: lexicon entries open with "   :headword:"; other sections with a
    title line. Tables of contents (a title, "Table of Contents" or a letter, then one-line items)
    are skipped. Prose is unwrapped; indented paragraphs (code, art, quotes) keep their lines."""
    keys = _Keys("jargon")
    name, parts, toc = "", cast(list[str], []), False
    for para in _paragraphs(lines):
        entry = _ENTRY.match(para[0])
        if entry is not None or _is_heading(para):
            if len(parts) > 1:  # a title alone (its section only lists contents) is dropped
                yield Document(keys(name), "\n\n".join(parts))
            if entry is None:
                name, toc = " ".join(para[0].split()), True  # titles use no-break spaces
                parts = [name]
                continue
            name, toc = entry[1], False
            rest = entry[2].replace("//", "").strip(" ,")  # "//": an empty pronunciation
            parts = [f"{name}: {rest}" if rest else name]
            para = para[1:]
            if not para:
                continue
        elif para[0].strip() == "Table of Contents" or _LETTER.match(para[0]):
            toc = True
            continue
        elif toc and len(para) == 1:
            continue
        toc = False
        if all(line.startswith("   ") and not line.startswith("    ") for line in para):
            text = _unwrap(para)
        else:
            text = "\n".join(line[3:] if line.startswith("   ") else line for line in para)
        if text.replace("═", "").strip():
            parts.append(text.replace("{", "").replace("}", ""))  # {word}: a cross-reference
    if len(parts) > 1:
        yield Document(keys(name), "\n\n".join(parts))


def read_jargon(root: Path) -> Iterator[Document]:
    with gzip.open(root / "jargon.txt.gz", "rt", encoding="utf-8", errors="replace") as f:
        yield from parse_jargon(line.rstrip("\n") for line in f)


# --- registry ---------------------------------------------------------------------------------

_LINUX_ROOT = _linux_doc_root()
_SOURCES = [
    DebianSource(
        "kjv", "bible-kjv", "public domain", Path("/usr/lib/bible.data"), _existing, read_kjv, programs=("bible",)
    ),
    DebianSource(
        "gcide",
        "dict-gcide",
        "GPL-2+",
        Path("/usr/share/dictd"),
        lambda p: _existing(p / "gcide.dict.dz", p / "gcide.index"),
        read_gcide,
    ),
    DebianSource(
        "linux-doc",
        _LINUX_ROOT.parts[-3],
        "GPL-2",
        _LINUX_ROOT,
        partial(_rst_files, skip=_LINUX_SKIP),
        partial(read_rst_tree, name="linux-doc", skip=_LINUX_SKIP),
    ),
    DebianSource(
        "python-doc",
        "python3.11-doc",
        "PSF licence",
        Path("/usr/share/doc/python3.11/html/_sources"),
        _rst_files,
        partial(read_rst_tree, name="python-doc"),
    ),
    DebianSource(
        "wordnet",
        "wordnet-base",
        "WordNet 3.0 licence (permissive)",
        Path("/usr/share/wordnet"),
        lambda p: _existing(*(p / f"data.{pos}" for pos in _WORDNET_POS)),
        read_wordnet,
    ),
    DebianSource(
        "fortunes", "fortunes", "BSD / mixed", Path("/usr/share/games/fortunes"), _fortune_files, read_fortunes
    ),
    DebianSource(
        "jargon",
        "jargon-text",
        "public domain",
        Path("/usr/share/doc/jargon-text"),
        lambda p: _existing(p / "jargon.txt.gz"),
        read_jargon,
    ),
]
DEBIAN_SOURCES: dict[str, DebianSource] = {source.name: source for source in _SOURCES}


def get_source(name: str, sources: Mapping[str, DebianSource] | None = None) -> DebianSource:
    """The installed source called ``name``; a `SaexError` says what to install or which names exist."""
    sources = DEBIAN_SOURCES if sources is None else sources
    if name not in sources:
        raise SaexError(f"unknown Debian corpus {name!r}; choose one of: {', '.join(sorted(sources))}")
    source = sources[name]
    source.check_installed()
    return source
