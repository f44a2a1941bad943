"""A small reader for SWORD zText Bible modules (the format of Debian's sword-text-* packages): New Testament only.

A zText module keeps each testament in three files:
  nt.bzs  block index: per block, <u32 offset in .bzz, u32 compressed size, u32 uncompressed size> (little endian)
  nt.bzz  the blocks, each zlib-compressed (CompressType=ZIP), concatenated
  nt.bzv  verse index: per entry, <u32 block number, u32 offset in the uncompressed block, u16 size>
The verse index has one entry per position of the versification: entry 0 (module heading), entry 1 (testament heading),
then per book a book heading, and per chapter a chapter heading followed by its verses. So the entry of a verse follows
from the versification's verse counts, which are not in the files: we carry the New Testament's, where the two
versifications of our modules (KJV and NRSVA) differ in two verses only.
"""

from __future__ import annotations

import re
import struct
import zlib
from pathlib import Path

# KJV versification of the New Testament: each line is an OSIS book id and the verse count of each of its chapters.
KJV_NT_VERSES = """
Matt 25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20
Mark 45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20
Luke 80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53
John 51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25
Acts 26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 44 31
Rom 32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27
1Cor 31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24
2Cor 24 17 18 18 21 18 16 24 15 18 33 21 14
Gal 24 21 29 31 26 18
Eph 23 22 21 32 33 24
Phil 30 30 21 23
Col 29 23 25 18
1Thess 10 20 13 18 28
2Thess 12 17 18
1Tim 20 15 16 16 25 21
2Tim 18 26 17 22
Titus 16 15 15
Phlm 25
Heb 14 18 19 16 14 20 28 13 28 39 40 29 25
Jas 27 26 18 17 20
1Pet 25 25 22 19 14
2Pet 21 22 18
1John 10 29 24 21 21
2John 13
3John 14
Jude 25
Rev 20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27 21
"""
KJV_NT = [(line.split()[0], [int(n) for n in line.split()[1:]]) for line in KJV_NT_VERSES.strip().splitlines()]
# NRSVA (the World English Bible's) numbers Rev 12:18 and 3 John 1:15 as verses of their own.
NRSVA_NT_EXTRA = {("Rev", 12): 1, ("3John", 1): 1}

ENTRY = struct.Struct("<IIH")
BLOCK = struct.Struct("<III")


def nt_layout(versification: str) -> list[tuple[str, int, int]]:
    """(book, chapter, verse) for every entry of nt.bzv, with (book, 0, 0) / (book, chapter, 0) for headings."""
    if versification not in ("KJV", "NRSVA"):
        raise ValueError(f"versification {versification!r} not supported (KJV or NRSVA)")
    layout = [("", 0, 0), ("", 0, 0)]  # module and testament headings
    for book, counts in KJV_NT:
        layout.append((book, 0, 0))
        for chapter, count in enumerate(counts, start=1):
            if versification == "NRSVA":
                count += NRSVA_NT_EXTRA.get((book, chapter), 0)
            layout += [(book, chapter, verse) for verse in range(count + 1)]
    return layout


def read_conf(module_root: Path, module: str) -> dict[str, str]:
    """The key=value lines of mods.d/<module>.conf; the first value of a repeated key wins."""
    conf = {}
    for line in (module_root / "mods.d" / f"{module}.conf").read_text(encoding="utf-8").splitlines():
        key, sep, value = line.partition("=")
        if sep and not line.startswith("#"):
            conf.setdefault(key.strip(), value.strip())
    return conf


def read_nt(module_root: str | Path, module: str) -> dict[tuple[str, int, int], str]:
    """Every New Testament verse of a zText module as plain text, keyed by (OSIS book, chapter, verse).

    `module_root` is the folder holding mods.d/ and modules/ (usr/share/sword in the Debian package)."""
    root = Path(module_root)
    conf = read_conf(root, module)
    if conf.get("ModDrv", "").lower() != "ztext" or conf.get("CompressType", "ZIP") != "ZIP":
        raise ValueError(f"{module}: only zText modules with ZIP compression are supported")
    data = root / conf["DataPath"]
    blocks = (data / "nt.bzs").read_bytes()
    index = (data / "nt.bzv").read_bytes()
    compressed = (data / "nt.bzz").read_bytes()
    layout = nt_layout(conf.get("Versification", "KJV"))
    if len(index) != len(layout) * ENTRY.size:
        raise ValueError(f"{module}: nt.bzv has {len(index) // ENTRY.size} entries, the versification {len(layout)}")
    cache: dict[int, bytes] = {}
    verses = {}
    for position, (book, chapter, verse) in enumerate(layout):
        if not verse:
            continue
        block, offset, size = ENTRY.unpack_from(index, position * ENTRY.size)
        if block not in cache:
            start, length, _ = BLOCK.unpack_from(blocks, block * BLOCK.size)
            cache[block] = zlib.decompress(compressed[start : start + length])
        text = plain_text(cache[block][offset : offset + size].decode("utf-8"))
        if text:
            verses[(book, chapter, verse)] = text
    return verses


# Elements whose content is not verse text: footnotes, cross references, headings.
DROPPED = re.compile(r"<(note|title)\b[^>]*>.*?</\1>", re.DOTALL)
TAG = re.compile(r"<[^>]*>")


def plain_text(markup: str) -> str:
    """Verse text without OSIS (or GBF) markup: notes and headings dropped, other tags removed, spaces tidied."""
    text = DROPPED.sub(" ", markup)
    text = TAG.sub("", text)
    text = re.sub(r"\s+", " ", text).strip()
    return re.sub(r" ([,.;:!?»”’)])", r"\1", text)
