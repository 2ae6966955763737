"""Debian text sources: parsing on hand-written samples (always run), real packages when installed."""

import dataclasses
import gzip
import itertools
import re

import pytest

from saex.data import debian
from saex.data.debian import DEBIAN_SOURCES, DebianSource, get_source
from saex.errors import SaexError

ALL = sorted(DEBIAN_SOURCES)


def installed(name: str):
    return pytest.mark.skipif(
        not DEBIAN_SOURCES[name].is_installed(),
        reason=f"Debian package {DEBIAN_SOURCES[name].package} is not installed",
    )


def take(source: DebianSource, n: int | None) -> list:
    return list(itertools.islice(source.documents(), n))


def check_basic(docs, prefix: str) -> None:
    keys = [d.key for d in docs]
    assert docs and len(set(keys)) == len(keys)
    assert all(k.startswith(prefix + ":") for k in keys)
    # Leading indentation may stay (a fortune's verse); blank edges, trailing spaces and blank runs may not.
    assert all(d.text.strip() and d.text == d.text.strip("\n").rstrip() and "\n\n\n" not in d.text for d in docs)


# --- registry and errors -----------------------------------------------------------------------


def test_registry_names_and_licences():
    assert set(ALL) == {"kjv", "gcide", "linux-doc", "python-doc", "wordnet", "fortunes", "jargon"}
    for name, source in DEBIAN_SOURCES.items():
        assert source.name == name and source.package and source.licence


def test_unknown_source_lists_valid_names():
    with pytest.raises(SaexError, match="'nope'") as err:
        get_source("nope")
    assert all(name in str(err.value) for name in ALL)


@pytest.mark.parametrize("name", ALL)
def test_uninstalled_source_gives_apt_hint(name, tmp_path):
    source = dataclasses.replace(DEBIAN_SOURCES[name], root=tmp_path / "missing")
    assert not source.is_installed() and source.files() == []
    hint = f"apt-get install {source.package}"
    with pytest.raises(SaexError, match=re.escape(hint)):
        get_source(name, {name: source})
    with pytest.raises(SaexError, match=re.escape(hint)):
        source.documents()
    with pytest.raises(SaexError, match=re.escape(hint)):
        source.fingerprint()


def test_missing_program_counts_as_uninstalled(tmp_path):
    (tmp_path / "bible.data").write_bytes(b"x")
    source = dataclasses.replace(DEBIAN_SOURCES["kjv"], root=tmp_path / "bible.data", programs=("no-such-prog-x",))
    assert source.files() == [tmp_path / "bible.data"] and not source.is_installed()


# --- parsers on hand-written samples ------------------------------------------------------------


def test_parse_kjv_groups_chapters_and_strips_prefixes():
    lines = [
        "Ge1:1 In the beginning God created the heaven and the earth.\n",
        "Ge1:2 And the earth was without form,  and void.\n",
        "Ge2:1 Thus the heavens and the earth were finished,\n",
        "   and all the host of them.\n",
        "1Cor13:4 Charity suffereth long, and is kind;\n",
    ]
    docs = list(debian.parse_kjv(lines))
    assert [d.key for d in docs] == ["kjv:Ge1", "kjv:Ge2", "kjv:1Cor13"]
    assert docs[0].text == (
        "In the beginning God created the heaven and the earth.\nAnd the earth was without form, and void."
    )
    assert docs[1].text == "Thus the heavens and the earth were finished, and all the host of them."
    assert docs[2].text == "Charity suffereth long, and is kind;"


def _b64(n: int) -> str:
    out = ""
    while True:
        out = debian._B64[n % 64] + out
        n //= 64
        if not n:
            return out


def write_gcide(root, entries: list[tuple[list[str], bytes]]) -> None:
    """A tiny dictd database: entries separated by a newline, indexed by every headword given."""
    data, index = b"", []
    for headwords, body in entries:
        index += [f"{h}\t{_b64(len(data))}\t{_b64(len(body))}" for h in headwords]
        data += body + b"\n"
    root.mkdir(exist_ok=True)
    with gzip.open(root / "gcide.dict.dz", "wb") as f:
        f.write(data)
    (root / "gcide.index").write_text("\n".join(sorted(index)) + "\n")


GCIDE_SAMPLE = [
    (["00-database-info"], b"00-database-info\n   This file was converted ... GNU General Public License\n"),
    (
        ["Bank"],
        b"Bank \\Bank\\, n. [F. banque.] {Bench}.\n   1. An establishment for the custody,\n"
        b"      loan, or issue, of money.\n      [1913 Webster]\n\n"
        b"            Let it be no bank or common stock.\n                          --Bacon.\n"
        b"      [1913 Webster]\n",
    ),
    (
        ["Bank", "Banked"],
        b"Bank \\Bank\\ (b[a^][ng]k), v. t. (Law) To raise a mound. [1913\n"
        b"   Webster + WordNet 1.5]\n\n   2. To heap up.\n   [1913 Webster] Banker\n",
    ),
    (
        ["Cascara buckthorn"],
        b'Cascara buckthorn \\Cas"ca*ra\n   buck"thorn`\\ (Bot.)\n'
        b"   The buckthorn ({Rhamnus Purshiana}); the fa\xe7ade.\n   [Webster 1913 Suppl.]\n",
    ),
]


def test_read_gcide_cleans_entries(tmp_path):
    write_gcide(tmp_path, GCIDE_SAMPLE)
    docs = list(debian.read_gcide(tmp_path))
    assert [d.key for d in docs] == ["gcide:Bank", "gcide:Bank#2", "gcide:Cascara buckthorn"]
    assert docs[0].text == (
        "Bank, n. [F. banque.] Bench. 1. An establishment for the custody, loan, or issue, "
        "of money.\n\nLet it be no bank or common stock. --Bacon."
    )
    assert docs[1].text == "Bank, v. t. (Law) To raise a mound.\n\n2. To heap up."  # no "Banker" leaking in
    assert docs[2].text == "Cascara buckthorn (Bot.) The buckthorn (Rhamnus Purshiana); the façade."
    for d in docs:
        assert not re.search(r"Webster|WordNet|[{}\\]|General Public", d.text)


def test_read_rst_tree_keys_bom_and_skip(tmp_path):
    (tmp_path / "core" / "sub").mkdir(parents=True)
    (tmp_path / "translations" / "zh_CN").mkdir(parents=True)
    (tmp_path / "core" / "sub" / "mm.rst.txt").write_text("\ufeffTitle\n=====\n\n\n\n  code  \n")
    (tmp_path / "intro.rst.txt").write_text("Intro\n")
    (tmp_path / "notes.txt").write_text("not reST\n")
    (tmp_path / "translations" / "zh_CN" / "x.rst.txt").write_text("中文\n")
    docs = list(debian.read_rst_tree(tmp_path, "linux-doc", skip=("translations",)))
    assert [(d.key, d.text) for d in docs] == [
        ("linux-doc:core/sub/mm", "Title\n=====\n\n  code"),
        ("linux-doc:intro", "Intro"),
    ]
    source = dataclasses.replace(DEBIAN_SOURCES["linux-doc"], root=tmp_path)
    assert [p.name for p in source.files()] == ["mm.rst.txt", "intro.rst.txt"]


WORDNET_HEADER = "  1 This software and database is being provided to you, the LICENSEE, by  \n  2   \n"


def test_read_wordnet_groups_synsets(tmp_path, monkeypatch):
    monkeypatch.setattr(debian, "WORDNET_GROUP", 2)
    noun = WORDNET_HEADER + "".join(
        f'0000{i}740 03 n 02 thing_{i} 0 stuff 0 000 | a gloss   number {i}; "an example"  \n' for i in range(3)
    )
    (tmp_path / "data.noun").write_text(noun)
    (tmp_path / "data.adj").write_text(WORDNET_HEADER + "00001740 00 a 01 able(p) 0 000 | having the means  \n")
    (tmp_path / "data.verb").write_text(WORDNET_HEADER)
    (tmp_path / "data.adv").write_text(WORDNET_HEADER)
    docs = list(debian.read_wordnet(tmp_path))
    assert [d.key for d in docs] == ["wordnet:noun:00000740", "wordnet:noun:00002740", "wordnet:adj:00001740"]
    assert docs[0].text == (
        'thing 0, stuff: a gloss number 0; "an example"\nthing 1, stuff: a gloss number 1; "an example"'
    )
    assert docs[2].text == "able: having the means"
    assert all("LICENSEE" not in d.text for d in docs)


def test_fortunes_split_and_file_selection(tmp_path):
    (tmp_path / "wisdom").write_text("First  fortune.\n\t-- Someone\n%\n%\n\nSecond\n\n\n\nline.\n%\n")
    (tmp_path / "wisdom.dat").write_bytes(b"\x00\x00\x00\x02binary")
    (tmp_path / "wisdom.u8").symlink_to("wisdom")
    (tmp_path / "ascii-art").write_text(" /\\_/\\\n( o.o )\n%\n")
    (tmp_path / "off").mkdir()
    source = dataclasses.replace(DEBIAN_SOURCES["fortunes"], root=tmp_path)
    assert source.files() == [tmp_path / "wisdom"]
    docs = list(source.documents())
    assert [(d.key, d.text) for d in docs] == [
        ("fortunes:wisdom:1", "First  fortune.\n\t-- Someone"),
        ("fortunes:wisdom:2", "Second\n\nline."),
    ]
    fingerprint = source.fingerprint()
    assert fingerprint == source.fingerprint()
    assert dataclasses.replace(source, name="other").fingerprint() != fingerprint
    (tmp_path / "wisdom").write_text("Changed.\n")
    assert source.fingerprint() != fingerprint


JARGON_SAMPLE = """\
                                The Jargon File

(version 4.4.7)

   ═══════════════════════════════

   Table of Contents

   I. Introduction

Chapter\u00a01.\u00a0Hacker Slang

   This document is a collection of slang terms used by various
   subcultures of computer hackers.

Glossary

   0

   /dev/null

  0

   /dev/null

   :/dev/null: /dev·nuhl/, n.

   [from the Unix null device] A notional ‘black hole’. See {bit
   bucket}.

   :0: //

   Numeric zero.

       if (x == 0)
           return;

  A

   abbrev

   :abbrev: /*-breev'/, abbrv /*-breev'/, n.

   Common abbreviation for abbreviation.

                             Part III. Appendices

   Table of Contents

   A. Hacker Folklore

Appendix\u00a0A.\u00a0Hacker Folklore

   Table of Contents

   The Meaning of ‘Hack’

   This appendix contains several legends and fables that illuminate the
   meaning of various entries in the lexicon.
"""


def test_parse_jargon_entries_sections_and_contents(tmp_path):
    docs = list(debian.parse_jargon(JARGON_SAMPLE.splitlines()))
    assert [d.key for d in docs] == [
        "jargon:Chapter 1. Hacker Slang",
        "jargon:/dev/null",
        "jargon:0",
        "jargon:abbrev",
        "jargon:Appendix A. Hacker Folklore",
    ]
    by = {d.key: d.text for d in docs}
    assert by["jargon:Chapter 1. Hacker Slang"] == (
        "Chapter 1. Hacker Slang\n\nThis document is a collection of slang terms used by various subcultures "
        "of computer hackers."
    )
    assert by["jargon:/dev/null"] == (
        "/dev/null: /dev·nuhl/, n.\n\n[from the Unix null device] A notional ‘black hole’. See bit bucket."
    )
    assert by["jargon:0"] == "0\n\nNumeric zero.\n\n    if (x == 0)\n        return;"
    assert by["jargon:abbrev"] == "abbrev: /*-breev'/, abbrv /*-breev'/, n.\n\nCommon abbreviation for abbreviation."
    assert by["jargon:Appendix A. Hacker Folklore"].endswith("entries in the lexicon.")
    assert "Table of Contents" not in "".join(by.values())
    with gzip.open(tmp_path / "jargon.txt.gz", "wt", encoding="utf-8") as f:
        f.write(JARGON_SAMPLE)
    assert list(debian.read_jargon(tmp_path)) == docs


# --- the real packages ------------------------------------------------------------------------


def check_fingerprint(source: DebianSource) -> None:
    fingerprint = source.fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", fingerprint) and source.fingerprint() == fingerprint
    assert dataclasses.replace(source, name=source.name + "-x").fingerprint() != fingerprint


@installed("kjv")
def test_kjv_real():
    source = get_source("kjv")
    docs = take(source, None)
    check_basic(docs, "kjv")
    assert len(docs) == 1189
    assert docs[0].key == "kjv:Ge1" and docs[-1].key == "kjv:Rev22"
    assert docs[0].text.startswith("In the beginning God created the heaven and the earth.\nAnd the earth")
    assert not any(re.search(r"^\d?[A-Z][a-z]*\d+:\d+ ", d.text, re.MULTILINE) for d in docs)
    check_fingerprint(source)


@installed("gcide")
def test_gcide_real():
    source = get_source("gcide")
    docs = take(source, 400)
    check_basic(docs, "gcide")
    assert docs == take(source, 400)  # deterministic
    for d in docs:
        assert not re.search(r"\[(1913 Webster|Webster 1913 Suppl\.|WordNet 1\.5|PJC)|[{}\\]", d.text), d
        assert "General Public License" not in d.text
    assert len(debian.gcide_entries(source.root / "gcide.index")) > 100_000  # counted from the index: cheap
    check_fingerprint(source)


@pytest.mark.parametrize("name", ["linux-doc", "python-doc"])
def test_rst_docs_real(name):
    if not DEBIAN_SOURCES[name].is_installed():
        pytest.skip(f"{DEBIAN_SOURCES[name].package} is not installed")
    source = get_source(name)
    docs = take(source, 300)
    check_basic(docs, name)
    assert len(source.files()) > 400
    assert not any("/translations/" in f.as_posix() for f in source.files())
    assert docs[0].key == f"{name}:" + source.files()[0].relative_to(source.root).as_posix()[: -len(".rst.txt")]
    check_fingerprint(source)


@installed("wordnet")
def test_wordnet_real():
    source = get_source("wordnet")
    docs = take(source, 300)
    check_basic(docs, "wordnet")
    assert docs[0].key == "wordnet:noun:00001740"
    assert docs[0].text.startswith("entity: that which is perceived or known")
    assert all(len(d.text.splitlines()) <= debian.WORDNET_GROUP for d in docs)
    lines = [line for d in docs for line in d.text.splitlines()]
    assert not any("LICENSEE" in line or " | " in line or "_" in line.split(": ")[0] for line in lines)
    check_fingerprint(source)


@installed("fortunes")
def test_fortunes_real():
    source = get_source("fortunes")
    docs = take(source, None)
    check_basic(docs, "fortunes")
    assert len(docs) > 10_000
    assert not any(re.search(r"^%$", d.text, re.MULTILINE) for d in docs)
    assert all("." not in f.name for f in source.files())
    check_fingerprint(source)


@installed("jargon")
def test_jargon_real():
    source = get_source("jargon")
    docs = take(source, None)
    check_basic(docs, "jargon")
    keys = {d.key for d in docs}
    assert len(docs) > 2000 and {"jargon:heisenbug", "jargon:The Story of Mel"} <= keys
    heisenbug = next(d.text for d in docs if d.key == "jargon:heisenbug")
    assert heisenbug.startswith("heisenbug: /hi:'zen·buhg/, n.\n\n[from Heisenberg's Uncertainty Principle")
    assert not any("Table of Contents" in d.text or "{" in d.text for d in docs)
    check_fingerprint(source)
