"""`zerolm tokenizer`: train a tokenizer on text files, or inspect one."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "tokenizer", "train or inspect a tokenizer (WordPiece, byte-level BPE, char)",
                 "zerolm tokenizer train --kind wordpiece --files sst2/train.tsv --vocab-size 8000 --out runs/wp")
    tsub = p.add_subparsers(dest="action", metavar="ACTION")
    tsub.required = True
    tr = tsub.add_parser("train", help="train a tokenizer on text files",
                         epilog="example:\n  zerolm tokenizer train --kind bpe --files "
                                "tinyshakespeare/input.txt --vocab-size 2000 --out runs/bpe",
                         formatter_class=p.formatter_class)
    tr.add_argument("--kind", choices=["wordpiece", "bpe", "char"], required=True)
    tr.add_argument("--files", nargs="+", required=True,
                    help="text files (plain, .gz, or a table's text column); relative to $ZEROLM_DATA")
    tr.add_argument("--vocab-size", type=int, default=8000, help="target size (ignored by char)")
    tr.add_argument("--min-frequency", type=int, default=2)
    tr.add_argument("--lowercase", action="store_true", default=None)
    tr.add_argument("--no-lowercase", dest="lowercase", action="store_false")
    tr.add_argument("--out", required=True, help="output directory")
    tr.set_defaults(func=run_train)
    enc = tsub.add_parser("encode", help="show the tokens and ids of a text",
                          epilog='example:\n  zerolm tokenizer encode runs/bpe --text "To be, or not"',
                          formatter_class=p.formatter_class)
    enc.add_argument("path", help="tokenizer directory (or a model directory with tokenizer/)")
    enc.add_argument("--text", required=True)
    enc.set_defaults(func=run_encode)


def run_train(args) -> int:
    from pathlib import Path

    from zerolm.data.text import iter_texts
    from zerolm.tokenizers import Tokenizer
    from zerolm.train.pretrain import _text_view

    out = Path(args.out)
    files = _text_view(args.files, out)
    tok = Tokenizer.train(args.kind, files, args.vocab_size, min_frequency=args.min_frequency,
                          lowercase=args.lowercase, show_progress=False)
    tok.save(out)
    first = next(iter_texts(files), "")[:80]
    ids = tok.encode(first)
    print(f"trained {tok.kind} tokenizer: {tok.vocab_size} tokens, lowercase={tok.lowercase}")
    print(f"files:  {', '.join(map(str, files))}")
    print(f"saved:  {out}")
    print(f"sample: {first!r}\n     -> {[tok.id_to_token(i) for i in ids][:30]}")
    return 0


def run_encode(args) -> int:
    from pathlib import Path

    from zerolm.tokenizers import Tokenizer

    p = Path(args.path)
    tok = Tokenizer.load(p / "tokenizer" if (p / "tokenizer").is_dir() else p)
    ids = tok.encode(args.text)
    print("tokens:", [tok.id_to_token(i) for i in ids])
    print("ids:   ", ids)
    return 0
