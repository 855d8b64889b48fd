"""`zerolm tokenizer`: train a tokenizer on text files, or show how one splits a text."""

from __future__ import annotations

import argparse
import json
import unicodedata
from pathlib import Path

from zerolm.cli.main import add_verb

TRAIN_EXAMPLE = ("zerolm tokenizer train --kind bpe --files tinyshakespeare/input.txt "
                 "--vocab-size 2000 --out runs/bpe-tok")
T5_EXAMPLE = ("zerolm tokenizer train --kind unigram --sentinels 100 --files multi30k/train.tsv "
              "--columns en de --vocab-size 8000 --out runs/t5-tok")
ENCODE_EXAMPLE = 'zerolm tokenizer encode runs/bpe-tok --text "To be, or not to be"'


def register(sub) -> None:
    """Add `zerolm tokenizer {train,encode}` to the `zerolm` subparsers."""
    p = add_verb(sub, "tokenizer", "train a tokenizer (WordPiece, byte-level BPE, char, unigram) or "
                 "inspect one", f"{TRAIN_EXAMPLE}\n  {ENCODE_EXAMPLE}")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    tr = add_verb(actions, "train", "train a tokenizer on text files and save it",
                  f"{TRAIN_EXAMPLE}\n  {T5_EXAMPLE}")
    tr.add_argument("--kind", choices=["wordpiece", "bpe", "char", "unigram"], required=True,
                    help="wordpiece: BERT; bpe: GPT-2 byte-level BPE; char: one token per character; "
                         "unigram: T5's SentencePiece")
    tr.add_argument("--files", nargs="+", required=True, metavar="FILE",
                    help="UTF-8 text files (plain or .gz; the --columns of .tsv/.csv/.jsonl); "
                         "relative paths also resolve against $ZEROLM_DATA")
    tr.add_argument("--columns", nargs="+", default=["text"], metavar="NAME",
                    help="text columns of table files (default: text; both sides of a translation "
                         "table, e.g. --columns en de, for one shared vocabulary)")
    tr.add_argument("--vocab-size", type=int, metavar="N",
                    help="target vocabulary size, special tokens and sentinels included (needed "
                         "for wordpiece, bpe and unigram; char takes every character seen)")
    tr.add_argument("--min-frequency", type=int, default=2, metavar="N",
                    help="a word piece or merge must occur this often (wordpiece, bpe; default: 2)")
    tr.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                    help="lower-case text first (default: yes for wordpiece, no for the others)")
    tr.add_argument("--sentinels", type=int, default=0, metavar="N",
                    help="unigram, bpe: add <extra_id_0> .. <extra_id_N-1> at the end of the "
                         "vocabulary, for T5 span corruption (T5 uses 100; default: 0)")
    tr.add_argument("--out", required=True, metavar="DIR", help="directory to write the tokenizer to")
    tr.set_defaults(func=run_train)

    enc = add_verb(actions, "encode", "show the tokens a tokenizer gives a text: a table of "
                   "id, vocabulary piece and the text each piece stands for, then the ids",
                   ENCODE_EXAMPLE)
    enc.add_argument("path", metavar="DIR",
                     help="tokenizer directory (or a checkpoint directory with a tokenizer/ inside)")
    enc.add_argument("--text", required=True, help="the text to encode")
    enc.add_argument("--no-special-tokens", dest="add_special_tokens", action="store_false",
                     help="do not add [CLS]/[SEP] (wordpiece) or </s> (unigram)")
    enc.set_defaults(func=run_encode)


def run_train(args: argparse.Namespace) -> int:
    """Train, save, and print a summary with a sample encoding."""
    from zerolm.config import check_writable_dir
    from zerolm.data.text import iter_records, resolve_data_path
    from zerolm.errors import ConfigError
    from zerolm.tokenizers import Tokenizer

    if args.vocab_size is None and args.kind != "char":
        raise ConfigError(f"--vocab-size is needed for --kind {args.kind} (for example --vocab-size 8000)")
    files = [resolve_data_path(f) for f in args.files]
    out = check_writable_dir(args.out, key="--out")  # before training, not after
    tok = Tokenizer.train(args.kind, files, args.vocab_size or 0, min_frequency=args.min_frequency,
                          lowercase=args.lowercase, sentinels=args.sentinels, columns=args.columns)
    tok.save(out)
    first = next((t for _, t in iter_records(files[0], text_column=args.columns[0]) if t.strip()), "")[:100]
    ids = tok.encode(first)
    print(f"kind:       {tok.kind} (lowercase={tok.lowercase})")
    print(f"vocab size: {tok.vocab_size}")
    if tok.sentinel_ids:
        print(f"sentinels:  {len(tok.sentinel_ids)} (<extra_id_0> = {tok.sentinel_ids[0]} down to "
              f"<extra_id_{len(tok.sentinel_ids) - 1}> = {tok.sentinel_ids[-1]})")
    print(f"files:      {', '.join(map(str, files))}")
    print(f"saved to:   {out}")
    print(f"sample:     {first!r}")
    print(f"tokens:     {_show_tokens(tok, ids)}")
    print(f"ids:        {ids[:40]}{' ...' if len(ids) > 40 else ''}")
    return 0


def run_encode(args: argparse.Namespace) -> int:
    """Print a table of the tokens of `--text` (id, vocabulary piece, the text it stands
    for), then the ids."""
    from zerolm.tokenizers import Tokenizer

    p = Path(args.path)
    tok = Tokenizer.load(p / "tokenizer" if (p / "tokenizer").is_dir() else p)
    ids = tok.encode(args.text, add_special_tokens=args.add_special_tokens)
    for line in token_table(tok, ids):
        print(line)
    print(f"ids:  {ids}")
    print(f"({len(ids)} tokens, {tok.kind} tokenizer, vocab size {tok.vocab_size})")
    return 0


def token_table(tok, ids: list[int]) -> list[str]:
    """Lines of a table: id, piece (the vocabulary entry, in byte symbols for byte-level
    BPE) and text (what the piece stands for, quoted; `<0xE4 0xB8>` are the bytes of a
    character split across pieces)."""
    rows = [(str(i), tok.id_to_token(i) or "?", _quoted(tok.piece_text(i))) for i in ids]
    w_id = max([len("id"), *(len(r[0]) for r in rows)])
    w_piece = max([len("piece"), *(_width(r[1]) for r in rows)])
    lines = [f"{'id':>{w_id}}  {'piece':<{w_piece}}  text"]
    for i, piece, text in rows:
        lines.append(f"{i:>{w_id}}  {piece}{' ' * (w_piece - _width(piece))}  {text}")
    if any("<0x" in r[2] for r in rows):
        lines.append("(<0x..>: bytes of a character that is split across pieces)")
    return lines


def _quoted(text: str) -> str:
    """Quoted, so spaces show; line breaks and tabs escaped; é and 中文 left readable."""
    return json.dumps(text, ensure_ascii=False)


def _width(s: str) -> int:
    """Terminal columns of `s`: East Asian wide characters take two."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in s)


def _show_tokens(tok, ids: list[int], limit: int | None = 40) -> str:
    """The pieces as a list; byte-level BPE's as the text they stand for ("Ġthe" -> " the")."""
    show = tok.piece_text if tok.kind == "bpe" else tok.id_to_token
    shown = [show(i) for i in (ids if limit is None else ids[:limit])]
    more = " ..." if limit is not None and len(ids) > limit else ""
    return f"{shown}{more}"
