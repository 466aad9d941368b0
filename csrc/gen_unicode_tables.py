"""Generate csrc/unicode_tables.h: the Unicode character classes the C++ tokenizer needs.

    python csrc/gen_unicode_tables.py            # writes csrc/unicode_tables.h
    python csrc/gen_unicode_tables.py --check-hf # also probes HF tokenizers for differences

The tokenizer's pre-tokenisation regexes use ``\\p{L}``, ``\\p{N}`` and ``\\s``, as
Oniguruma (the regex engine of HF ``tokenizers``) defines them; added tokens with
lstrip/rstrip strip Rust's ``char::is_whitespace``. The classes come from Python's
``unicodedata`` (general categories) and a fixed White_Space list, plus the letters and
numbers that Unicode 15.0 to 16.0 added: ``tokenizers`` 0.23's Oniguruma knows Unicode 16.0,
and Python 3.11's ``unicodedata`` is Unicode 14.0 (3.13's is 15.1). ``--check-hf`` compares
every code point's class with what ``tokenizers`` itself splits and reports any difference;
the ranges below are what it found with tokenizers 0.23.3 (none missing, none extra, after
adding them).

The output is a two-level table (256-code-point blocks; identical blocks shared), one byte of
flags per code point: bit 0 letter (L*), bit 1 number (N*), bit 2 White_Space.

It also holds the data of the NFC normalizer (Qwen2's): canonical combining classes, full
canonical decompositions and the primary compositions. HF tokenizers normalises with the crate
``unicode-normalization-alignments``, whose tables are Unicode 9.0 (``--check-hf`` found its
output equal to Python 3.6's unicodedata, Unicode 9.0, and different from every later one), so
these come from a Python with Unicode 9.0: ``--nfc-python`` (default: ``python3.6`` on PATH or
under pyenv), or this Python if it is one.
"""

from __future__ import annotations

import argparse
import glob
import json
import shutil
import subprocess
import sys
import unicodedata
from pathlib import Path

OUT = Path(__file__).resolve().parent / "unicode_tables.h"

FLAG_L, FLAG_N, FLAG_WS = 1, 2, 4

# Unicode's White_Space property (PropList.txt; unchanged since 6.3): Oniguruma's \s and
# Rust's char::is_whitespace.
WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
               (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
               (0x3000, 0x3000)]  # fmt: skip

# Letters (L*) and numbers (N*) of Unicode 16.0 that Unicode 14.0 lacks (found with
# --check-hf against tokenizers 0.23.3 on Python 3.11's Unicode 14.0). Adding them to a newer
# unicodedata changes nothing: no code point left L or N between these versions.
ADDED_LETTERS = [(0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3),
                 (0x10D4A, 0x10D65), (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240),
                 (0x11380, 0x11389), (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5),
                 (0x113B7, 0x113B7), (0x113D1, 0x113D1), (0x113D3, 0x113D3), (0x11BC0, 0x11BE0),
                 (0x11F02, 0x11F02), (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F),
                 (0x13441, 0x13446), (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C),
                 (0x18CFF, 0x18CFF), (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A),
                 (0x1E030, 0x1E06D), (0x1E4D0, 0x1E4EB), (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0),
                 (0x2B739, 0x2B739), (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF)]  # fmt: skip
ADDED_NUMBERS = [(0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59),
                 (0x16130, 0x16139), (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3),
                 (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA)]  # fmt: skip

N_CODE_POINTS = 0x110000
BLOCK = 256


def flags_table() -> bytearray:
    """One flag byte per code point."""
    flags = bytearray(N_CODE_POINTS)
    for cp in range(N_CODE_POINTS):
        cat = unicodedata.category(chr(cp))
        if cat[0] == "L":
            flags[cp] |= FLAG_L
        elif cat[0] == "N":
            flags[cp] |= FLAG_N
    for ranges, flag in ((ADDED_LETTERS, FLAG_L), (ADDED_NUMBERS, FLAG_N), (WHITE_SPACE, FLAG_WS)):
        for lo, hi in ranges:
            for cp in range(lo, hi + 1):
                flags[cp] |= flag
    return flags


# Run by the Unicode 9.0 Python (kept Python 3.6 compatible): the NFC data as JSON.
NFC_DUMP = r"""
import json, unicodedata as ud
out = {"version": ud.unidata_version, "ccc": {}, "decomp": {}, "compose": []}
for c in range(0x110000):
    if 0xD800 <= c <= 0xDFFF:
        continue
    ch = chr(c)
    if ud.combining(ch):
        out["ccc"][c] = ud.combining(ch)
    if 0xAC00 <= c <= 0xD7A3:
        continue  # Hangul syllables: algorithmic
    d = ud.normalize("NFD", ch)
    if d != ch:
        out["decomp"][c] = [ord(x) for x in d]
    raw = ud.decomposition(ch)
    if raw and not raw.startswith("<"):
        parts = [int(x, 16) for x in raw.split()]
        if len(parts) == 2 and ud.normalize("NFC", chr(parts[0]) + chr(parts[1])) == ch:
            out["compose"].append([parts[0], parts[1], c])
print(json.dumps(out))
"""


def find_unicode9_python(explicit: str | None) -> str | None:
    if explicit:
        return explicit
    if unicodedata.unidata_version == "9.0.0":
        return sys.executable
    candidates = sorted(glob.glob(str(Path.home() / ".pyenv/versions/3.6*/bin/python3.6")))
    candidates.append(shutil.which("python3.6"))
    for c in filter(None, candidates):
        probe = subprocess.run([c, "-c", "import unicodedata as u; print(u.unidata_version)"],
                               capture_output=True, text=True)  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == "9.0.0":
            return c
    return None


def nfc_data(python: str) -> dict:
    data = json.loads(subprocess.run([python, "-c", NFC_DUMP], check=True, capture_output=True,
                                     text=True).stdout)  # fmt: skip
    if data["version"] != "9.0.0":
        raise SystemExit(f"{python} has Unicode {data['version']}, not 9.0.0")
    # what the C++ fast path relies on: below U+0300 nothing changes under NFC
    assert all(int(c) >= 0x300 for c in data["ccc"])
    assert all(second >= 0x300 for _, second, _ in data["compose"])
    return data


def render_nfc(data: dict) -> str:
    ccc = bytearray(N_CODE_POINTS)
    for c, k in data["ccc"].items():
        ccc[int(c)] = k
    blocks: dict[bytes, int] = {}
    stage1 = [blocks.setdefault(bytes(ccc[b * BLOCK : (b + 1) * BLOCK]), len(blocks))
              for b in range(N_CODE_POINTS // BLOCK)]  # fmt: skip
    decomp = sorted((int(c), d) for c, d in data["decomp"].items())
    pool: list[int] = []
    entries = []
    for c, d in decomp:
        entries.append(f"{{{c},{len(pool)},{len(d)}}}")
        pool += d
    compose = sorted(((a << 21) | b, c) for a, b, c in data["compose"])

    def rows(items: list, per_line: int) -> str:
        items = [str(v) for v in items]
        return "\n".join("    " + ",".join(items[i : i + per_line]) + ","
                         for i in range(0, len(items), per_line))  # fmt: skip

    return f"""
// ---- NFC data, Unicode {data["version"]} (HF tokenizers' unicode-normalization-alignments)

// canonical combining class: kCccStage2[kCccStage1[cp >> 8] * 256 + (cp & 255)]
inline constexpr uint8_t kCccStage1[{len(stage1)}] = {{
{rows(stage1, 32)}
}};
inline constexpr uint8_t kCccStage2[{len(blocks) * BLOCK}] = {{
{rows(list(b"".join(blocks)), 64)}
}};
inline uint8_t ccc(uint32_t cp) {{
  if (cp >= 0x110000) return 0;
  return kCccStage2[static_cast<uint32_t>(kCccStage1[cp >> 8]) * 256 + (cp & 255)];
}}

// full canonical decompositions (Hangul syllables excluded: algorithmic), sorted by code point
struct Decomposition {{
  uint32_t cp;
  uint16_t offset;
  uint8_t length;
}};
inline constexpr Decomposition kDecompositions[{len(entries)}] = {{
{rows(entries, 6)}
}};
inline constexpr uint32_t kDecompositionPool[{len(pool)}] = {{
{rows(pool, 12)}
}};

// primary compositions: key (first << 21 | second) -> composite, sorted by key
struct Composition {{
  uint64_t key;
  uint32_t composite;
}};
inline constexpr Composition kCompositions[{len(compose)}] = {{
{rows([f"{{{k}ULL,{c}}}" for k, c in compose], 4)}
}};
"""


def render(flags: bytearray, nfc: str) -> str:
    blocks: dict[bytes, int] = {}
    stage1: list[int] = []
    for b in range(N_CODE_POINTS // BLOCK):
        chunk = bytes(flags[b * BLOCK : (b + 1) * BLOCK])
        stage1.append(blocks.setdefault(chunk, len(blocks)))
    if len(blocks) > 256:
        raise SystemExit(f"{len(blocks)} distinct blocks: stage 1 needs more than uint8")

    def rows(values: list[int] | bytes, per_line: int) -> str:
        items = [str(v) for v in values]
        return "\n".join(
            "    " + ",".join(items[i : i + per_line]) + "," for i in range(0, len(items), per_line)
        )

    stage2 = b"".join(blocks)  # insertion order = block index
    return f"""// Generated by csrc/gen_unicode_tables.py -- do not edit.
// Source: Python {sys.version.split()[0]} unicodedata (Unicode {unicodedata.unidata_version}) plus the
// Unicode 16.0 letters/numbers that HF tokenizers' Oniguruma knows (see the script).
// flags(cp): bit 0 letter (L*), bit 1 number (N*), bit 2 White_Space.
#pragma once
#include <cstdint>

namespace l2vf::unicode {{

constexpr uint8_t kLetter = {FLAG_L};
constexpr uint8_t kNumber = {FLAG_N};
constexpr uint8_t kSpace = {FLAG_WS};

// stage1[cp >> 8] = block; flags = stage2[block * 256 + (cp & 255)]
inline constexpr uint8_t kStage1[{len(stage1)}] = {{
{rows(stage1, 32)}
}};

inline constexpr uint8_t kStage2[{len(stage2)}] = {{
{rows(stage2, 64)}
}};

inline uint8_t flags(uint32_t cp) {{
  if (cp >= 0x110000) return 0;
  return kStage2[static_cast<uint32_t>(kStage1[cp >> 8]) * 256 + (cp & 255)];
}}
{nfc}
}}  // namespace l2vf::unicode
"""


def check_hf_nfc(data: dict) -> int:
    """Our NFC tables' expectations against HF's NFC normalizer: every decomposition (alone,
    before and after a mark), every combining mark in pairs of classes, Hangul."""
    from tokenizers import normalizers

    python = find_unicode9_python(None)
    probe = r"""
import json, sys, unicodedata as ud
tests = json.load(sys.stdin)
print(json.dumps([ud.normalize("NFC", t) for t in tests]))
"""
    marks = [int(c) for c in data["ccc"]] + [0x07FD, 0x0898, 0x1AC1, 0x10F46, 0x16FF0]
    tests = []
    for c in marks:
        for other in (0x0301, 0x0316, 0x05B0, 0x0E38, 0x302A, 0x1D165, 0x0334):
            tests += ["a" + chr(c) + chr(other), "a" + chr(other) + chr(c)]
    for d in data["decomp"].values():
        s = "".join(map(chr, d))
        tests += [s, s + "\u0301", "\u0301" + s, "e" + s]
    tests += [chr(0x1100 + i) + chr(0x1161 + j) + chr(0x11A7 + k)
              for i in range(0, 19, 3) for j in range(0, 21, 4) for k in range(0, 28, 3)]  # fmt: skip
    want = json.loads(subprocess.run([python, "-c", probe], input=json.dumps(tests), check=True,
                                     capture_output=True, text=True).stdout)  # fmt: skip
    got = normalizers.NFC().normalize_str("\x00".join(tests)).split("\x00")
    bad = [t for t, a, b in zip(tests, got, want) if a != b]
    print(f"NFC: {len(tests)} probes, {len(bad)} differ from Unicode 9.0 NFC")
    for t in bad[:10]:
        print("  ", ascii(t))
    return len(bad)


def check_hf(flags: bytearray) -> int:
    """Compare each class with what HF tokenizers' own Split regex finds; return #differences."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers

    problems = 0
    for regex, sep, flag in (
        (r"\p{L}+", "-", FLAG_L),
        (r"\p{N}+", "-", FLAG_N),
        (r"\s+", "a", FLAG_WS),
    ):
        tok = Tokenizer(models.BPE(vocab={"a": 0}, merges=[], unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(regex), "isolated")
        cps = [c for c in range(N_CODE_POINTS) if not 0xD800 <= c <= 0xDFFF and chr(c) != sep]
        text = sep + sep.join(chr(c) for c in cps) + sep
        hf = {
            ord(p) for p, _ in tok.pre_tokenizer.pre_tokenize_str(text) if len(p) == 1 and p != sep
        }
        ours = {c for c in cps if flags[c] & flag}
        missing, extra = sorted(hf - ours), sorted(ours - hf)
        print(
            f"{regex}: HF {len(hf)}, ours {len(ours)}; only HF {len(missing)}, only ours {len(extra)}"
        )
        for name, cps_ in (("only HF", missing), ("only ours", extra)):
            if cps_:
                print(f"  {name}: " + ", ".join(f"U+{c:04X}" for c in cps_[:40]))
        problems += len(missing) + len(extra)
    return problems


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check-hf", action="store_true", help="compare with HF tokenizers")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--nfc-python", default=None, help="a Python with Unicode 9.0 data")
    args = parser.parse_args()
    python = find_unicode9_python(args.nfc_python)
    if python is None:
        raise SystemExit("no Python with Unicode 9.0 (Python 3.6) found: pass --nfc-python")
    nfc = nfc_data(python)
    flags = flags_table()
    args.out.write_text(render(flags, render_nfc(nfc)), encoding="utf-8")
    print(f"wrote {args.out} (classes: Unicode {unicodedata.unidata_version} + 16.0 additions; "
          f"NFC: Unicode {nfc['version']} from {python})")  # fmt: skip
    if args.check_hf and check_hf(flags) + check_hf_nfc(nfc):
        raise SystemExit("differences from HF tokenizers: see above")


if __name__ == "__main__":
    main()
