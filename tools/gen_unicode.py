#!/usr/bin/env python3
"""Generates the data tables of sd.h's CLIP tokenizer (section 5) and prints them as C.

    apt-get install python3-regex      # Debian's `regex`, the module transformers' CLIPTokenizer uses
    /usr/bin/python3 tools/gen_unicode.py > tables.inc

Everything comes from the Python standard library (unicodedata, codecs, html) except the letter and
number classes of the pre-tokenizer, which come from the `regex` module itself because its Unicode
tables (15.0 for regex 2022.10.31) are newer than unicodedata's (14.0 in Python 3.11) and because under
IGNORECASE it treats U+0345 as neither. Without `regex` it falls back to unicodedata's categories
(then ~4400 code points assigned in Unicode 15 count as "other").

Each table is a stream of unsigned integers written as base-32 digits: `CONT` characters carry
5 bits and mean "more follows", a `FINAL` character carries the last 5 bits. Signed numbers are
zigzag-coded. The C side decodes the streams once, into the arena, when the vocabulary loads.
"""
import codecs, html, sys, unicodedata as ud

FINAL = "0123456789ABCDEFGHIJKLMNOPQRSTUV"
CONT = "abcdefghijklmnopqrstuvwxyz+-*/<>"
N = 0x110000


def varint(v):
    assert v >= 0
    digits = [FINAL[v & 31]]
    v >>= 5
    while v:
        digits.append(CONT[v & 31])
        v >>= 5
    return "".join(reversed(digits))


def zigzag(v):
    return 2 * v if v >= 0 else -2 * v - 1


def emit(name, comment, stream):
    chunks = [stream[i:i + 3900] for i in range(0, len(stream), 3900)]  # C99 caps literals at 4095
    print(f"/* {comment} */")
    print(f"static const char *const {name}[] = {{")
    for c in chunks:
        print("\n".join(f'    "{c[i:i + 96]}"' for i in range(0, len(c), 96)) + ",")
    print("    0\n};")


def ranges(f):
    out, prev = [], None
    for c in range(N):
        v = f(c)
        if v != prev:
            out.append((c, v))
            prev = v
    return out


# -- per-code-point properties: pre-tokenizer class | \w | \d | case class | canonical combining class
try:
    import regex
    P = regex.compile(r"([\p{L}])|([\p{N}])|([^\s\p{L}\p{N}])|(\s)", regex.IGNORECASE)
    def pretok(c):  # 0 other, 1 letter, 2 number, 3 space, 4 matched by no branch (dropped)
        m = P.match(chr(c)) if not 0xD800 <= c < 0xE000 else None
        return 0 if 0xD800 <= c < 0xE000 else 4 if not m else (0, 1, 2, 0, 3)[m.lastindex]
    source = f"regex {regex.__version__}"
except ImportError:
    def pretok(c):
        cat = ud.category(chr(c))
        return 1 if cat[0] == "L" else 2 if cat[0] == "N" else 3 if chr(c).isspace() else 0
    source = "unicodedata categories (regex module not found)"


def case_class(c):  # Python's Final_Sigma rule: 1 cased (not ignorable), 2 case-ignorable, 0 neither
    ch = chr(c)
    if (ch + "\u03a3").lower()[-1] == "\u03c2":
        return 1
    return 2 if ("A" + ch + "\u03a3").lower()[-1] == "\u03c2" else 0


def props(c):
    ch = chr(c)
    word = ud.category(ch)[0] in "LN"            # Python re's \w (besides '_') is exactly L and N
    digit = ud.category(ch) == "Nd"               # and \d is Nd
    return pretok(c) | word << 3 | digit << 4 | case_class(c) << 5 | ud.combining(ch) << 7


stream, prev = [], 0
for start, v in ranges(props):
    stream += [varint(start - prev), varint(v)]
    prev = start
props_stream = "".join(stream)

# -- str.lower(): runs of code points with the same delta; only U+0130 maps to two characters
lower = [(c, ord(chr(c).lower())) for c in range(N) if chr(c).lower() != chr(c) and c != 0x130]
assert all(len(chr(c).lower()) == 1 for c, _ in lower) and chr(0x130).lower() == "i\u0307"
runs = []
for c, l in lower:
    if runs:
        s, n, step, d = runs[-1]
        if l - c == d and (c == s + n * step or (n == 1 and c - s == 2)):
            runs[-1] = (s, n + 1, c - s if n == 1 else step, d)
            continue
    runs.append((c, 1, 1, l - c))
stream, prev = [], 0
for s, n, step, d in runs:
    stream += [varint(s - prev), varint(n), varint(step), varint(zigzag(d))]
    prev = s + (n - 1) * step
lower_stream = "".join(stream)

# -- canonical decompositions (one level) and which of them NFC composes back
stream, prev, prev0 = [], 0, 0
ndec = ncomp = 0
for c in range(N):
    d = ud.decomposition(chr(c))
    if not d or d.startswith("<"):
        continue
    parts = [int(x, 16) for x in d.split()]
    assert len(parts) <= 2
    second = parts[1] if len(parts) == 2 else 0
    composes = len(parts) == 2 and ud.normalize("NFC", chr(parts[0]) + chr(second)) == chr(c)
    stream += [varint(c - prev), varint(zigzag(parts[0] - prev0)), varint(second * 2 + composes)]
    prev, prev0 = c, parts[0]
    ndec += 1
    ncomp += composes
decomp_stream = "".join(stream)
assert max(len(ud.normalize("NFD", chr(c))) for c in range(N)) <= 4

# -- fullwidth/halfwidth forms U+FF01..U+FFEF -> NFKC (ftfy's fix_character_width); 0 = unchanged
stream, prev = [], 0
for c in range(0xFF01, 0xFFF0):
    alt = ud.normalize("NFKC", chr(c))
    v = 0 if alt == chr(c) else ord(alt) if len(alt) == 1 else -1
    assert v != -1 or (c == 0xFFE3 and alt == " \u0304")
    v = 0x20 if v == -1 else v
    stream.append(varint(zigzag(v - prev)))
    prev = v
width_stream = "".join(stream)

# -- single-byte encodings ftfy tries, in its order; "sloppy" ones decode unassigned bytes as
#    Latin-1 and byte 0x1A as U+FFFD. Per encoding: the characters of bytes 0x80..0xFF, then of 0x1A.
ENCODINGS = ["latin-1", "sloppy-windows-1252", "sloppy-windows-1251", "sloppy-windows-1250",
             "sloppy-windows-1253", "sloppy-windows-1254", "sloppy-windows-1257", "iso-8859-2",
             "macroman", "cp437"]
stream, prev = [], 0
for enc in ENCODINGS:
    table = list(bytes(range(256)).decode("latin-1"))
    if enc.startswith("sloppy-"):
        for i, ch in enumerate(bytes(range(256)).decode(enc[7:], errors="replace")):
            if ch != "\ufffd":
                table[i] = ch
        table[0x1A] = "\ufffd"
    else:
        table = list(bytes(range(256)).decode(enc))
    assert table[:0x80] == [chr(i) for i in range(0x1A)] + [table[0x1A]] + [chr(i) for i in range(0x1B, 0x80)]
    assert len(set(table)) == 256
    for ch in table[0x80:] + [table[0x1A]]:
        stream.append(varint(zigzag(ord(ch) - prev)))
        prev = ord(ch)
    if enc == "sloppy-windows-1252":   # html.unescape maps &#128;..&#159; the same way
        assert all(html._invalid_charrefs[b] == table[b] for b in range(0x80, 0xA0))
charmap_stream = "".join(stream)
assert html._invalid_charrefs[0] == "\ufffd" and html._invalid_charrefs[0x0D] == "\r"
assert set(html._invalid_charrefs) == {0, 0x0D} | set(range(0x80, 0xA0))
assert html._invalid_codepoints == {c for c in range(N) if 1 <= c <= 8 or c == 0xB or 0xE <= c <= 0x1F
                                    or 0x7F <= c <= 0x9F or 0xFDD0 <= c <= 0xFDEF or (c & 0xFFFE) == 0xFFFE}

# -- HTML entities as ftfy 6.3.1 decodes them: html5 names ending in ';', plus for all-lowercase names
#    an upper-case spelling (when html.unescape leaves it alone) that means char.upper().
#    Sorted, front-coded: varint(shared prefix * 4 + kind), rest of the name through ';',
#    varint(count) + code points, and for kind 2 the upper-case value the same way
#    (kind 0: no upper-case spelling, 1: same value, 2: different value).
entities = sorted((name, ch) for name, ch in html.entities.html5.items() if name.endswith(";"))
stream, prev = [], ""
nvar = 0
for name, ch in entities:
    kind = 0
    if name == name.lower() and html.unescape("&" + name.upper()) == "&" + name.upper():
        kind = 1 if ch.upper() == ch else 2
        nvar += 1
    shared = 0
    while shared < min(len(name), len(prev)) and name[shared] == prev[shared]:
        shared += 1
    stream += [varint(shared * 4 + kind), name[shared:], varint(len(ch))] + [varint(ord(x)) for x in ch]
    if kind == 2:
        stream += [varint(len(ch.upper()))] + [varint(ord(x)) for x in ch.upper()]
    prev = name
entity_stream = "".join(stream)
entity_chars = sum(len(n) for n, _ in entities)
assert max(len(n) for n, _ in entities) < 64 and all(len(c) <= 2 and len(c.upper()) <= 3 for _, c in entities)

print(f"/* ---- tokenizer tables: generated by tools/gen_unicode.py (Python {sys.version.split()[0]}, unicodedata"
      f" {ud.unidata_version}, {source}); do not edit.\n"
      "   To regenerate: apt-get install python3-regex; /usr/bin/python3 tools/gen_unicode.py > tables.inc,\n"
      "   then replace everything from this comment to \"end of generated tables\" with tables.inc. ---- */")
print(f"enum {{ UNI_PROPS_RANGES = {len(ranges(props))}, UNI_LOWER_RUNS = {len(runs)}, UNI_DECOMPS = {ndec}, "
      f"UNI_COMPOSITIONS = {ncomp}, HTML_ENTITIES = {len(entities)}, HTML_UPPER_ENTITIES = {nvar},\n"
      f"       HTML_ENTITY_CHARS = {entity_chars} }};")
emit("uni_props_data", "(range start delta, value) per range of code points with equal properties", props_stream)
emit("uni_lower_data", "(start delta, count, step, zigzag delta) per run of str.lower() mappings", lower_stream)
emit("uni_decomp_data", "(code point delta, zigzag first delta, second * 2 + composes) per decomposition", decomp_stream)
emit("uni_width_data", "zigzag deltas of NFKC(U+FF01..U+FFEF), 0 = unchanged, 0x20 for U+FFE3", width_stream)
emit("charmap_data", "zigzag deltas: bytes 0x80..0xFF and 0x1A of each of ftfy's 10 encodings", charmap_stream)
emit("html_entity_data", "front-coded HTML entity names and values", entity_stream)
