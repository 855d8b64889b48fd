"""SentencePiece's normalizer as data: a "precompiled charsmap" that maps each character to
its NFKC form (lower-cased too, on request), built from Python's `unicodedata`.

T5's SentencePiece model normalizes text with such a map (its `nmt_nfkc` rules), and
Hugging Face's T5 tokenizer (transformers 5) keeps a tokenizer.json normalizer only when
it is one: a plain `NFKC` normalizer would be dropped on loading and the ids would differ
for text NFKC changes ("…" -> "...", "ﬁ" -> "fi", "Ａ" -> "A"). With the map, the
`tokenizers` library and Hugging Face normalize alike.

The map is per character (NFKC of the character alone), so decomposed accents ("e" +
U+0301) stay decomposed; everything else equals NFKC of the text. As in SentencePiece,
the backend first looks a whole grapheme up by its shortest mapped prefix, so a
combining mark after a mapped character ("ﬁ" + U+0301) is dropped with it.

Format (read by `tokenizers.normalizers.Precompiled`): a little-endian u32 byte length of
the trie, the trie as u32 units of a darts-clone double array keyed by UTF-8 bytes, then
the replacement strings, each ending in NUL; a key's value is its string's byte offset.
"""

from __future__ import annotations

import functools
import struct
import sys
import unicodedata

import numpy as np

_MAX_OFFSET = 1 << 21  # a unit stores offsets below this directly (larger: multiples of 256)


def _mapped(c: str, lowercase: bool) -> str:
    out = unicodedata.normalize("NFKC", c)
    return out.lower() if lowercase else out


@functools.cache
def precompiled_charsmap(lowercase: bool = False) -> bytes:
    """The charsmap mapping every character whose NFKC form (lower-cased with `lowercase`)
    differs from it to that form. Takes about a second; cached."""
    pool = bytearray()
    offsets: dict[str, int] = {}  # replacement -> its offset in the pool
    keys: list[tuple[bytes, int]] = []
    for cp in range(1, sys.maxunicode + 1):
        if 0xD800 <= cp <= 0xDFFF:  # surrogates: not characters
            continue
        c = chr(cp)
        out = _mapped(c, lowercase)
        if out == c:
            continue
        if out not in offsets:
            offsets[out] = len(pool)
            pool += out.encode("utf-8") + b"\0"
        keys.append((c.encode("utf-8"), offsets[out]))
    trie = _double_array(keys)
    return struct.pack("<I", 4 * len(trie)) + trie.astype("<u4").tobytes() + bytes(pool)


def _double_array(keys: list[tuple[bytes, int]]) -> np.ndarray:
    """A darts-clone double array of `keys` (no key a prefix of another is needed).

    Unit layout, as darts-clone reads it: bits 0-7 the label, bit 8 "has a value", bit 9
    "offset is shifted by 8", bits 10-31 the offset; a value unit has bit 31 set and the
    value in bits 0-30. From a node at position p with offset o, the child labelled c
    sits at (p ^ o) ^ c and the node's value at p ^ o. Each base p ^ o is used by one
    node only, so a label check is enough to tell a child from another node's.
    """
    root: dict = {}
    for key, value in keys:
        node = root
        for b in key:
            node = node.setdefault(b, {})
        node[None] = value  # the key ends here
    units = np.zeros(1 << 16, dtype=np.int64)
    used = np.zeros(len(units), dtype=bool)
    is_base = np.zeros(len(units), dtype=bool)
    used[0] = True  # the root
    first_free = 1
    queue = [(root, 0)]
    while queue:
        node, pos = queue.pop()
        labels = np.array(sorted(k for k in node if k is not None), dtype=np.int64)
        has_value = None in node
        while used[first_free]:
            first_free += 1
        # first fit: the lowest base whose slots (value slot and children) are all free,
        # searched over a window of free positions at a time (vectorised)
        window = 4096
        while True:
            if first_free + window + 512 >= len(used):  # bases and slots lie below q + 256
                grow = len(used)
                units, used, is_base = (np.concatenate([a, np.zeros(grow, a.dtype)])
                                        for a in (units, used, is_base))
            q = first_free + np.flatnonzero(~used[first_free:first_free + window])
            base = q ^ labels[0] if len(labels) else q
            ok = ~is_base[base]
            for c in labels[1:]:
                ok &= ~used[base ^ c]
            if has_value:
                ok &= ~used[base]
            if ok.any():
                base = int(base[np.argmax(ok)])
                break
            window *= 2
        offset = pos ^ base
        if offset >= _MAX_OFFSET:
            raise ValueError("charsmap trie too large for darts-clone offsets")
        is_base[base] = True
        units[pos] |= (offset << 10) | (int(has_value) << 8)
        if has_value:
            used[base] = True
            units[base] = (1 << 31) | node[None]
        for c in labels.tolist():
            used[base ^ c] = True
            units[base ^ c] = c
            queue.append((node[c], base ^ c))
    return units[: int(np.flatnonzero(used).max()) + 1].astype(np.uint32)
