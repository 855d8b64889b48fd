"""`zerolm embed` and `zerolm similar`: sentence embeddings and semantic search."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def _common(p) -> None:
    p.add_argument("model", help="zerolm model directory or local Hugging Face model directory")
    p.add_argument("--pooling", choices=["mean", "cls"], default="mean",
                   help="mean of the token states (sentence-embedding models such as MiniLM) or the "
                        "first token's state (default: mean)")
    p.add_argument("--no-normalize", action="store_true", help="skip L2 normalisation")
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch (default: 32)")
    p.add_argument("--max-length", type=int, default=None, help="truncate inputs to this many tokens")
    p.add_argument("--text-column", default="text", help="column of a .tsv/.csv/.jsonl input")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def register(sub) -> None:
    p = add_verb(sub, "embed", "write sentence embeddings of a file's lines to a .npy file",
                 "zerolm embed path/to/all-MiniLM-L6-v2 --input sst2/dev.tsv --output dev.npy")
    _common(p)
    p.add_argument("--input", required=True, help="one text per line, or a table's text column")
    p.add_argument("--output", required=True, help="output .npy file (N x D float32)")
    p.set_defaults(func=run_embed)


def _read(path: str, column: str) -> list[str]:
    from zerolm.data.text import iter_records, resolve_data_path

    return [t for _, t in iter_records(resolve_data_path(path), text_column=column) if t.strip()]


def _load(args):
    from zerolm.errors import ZeroLMError
    from zerolm.loading import load

    pred = load(args.model, device=args.device)  # a fine-tuned model embeds with its own body
    if pred.tokenizer is None:
        raise ZeroLMError(f"{args.model}: no tokenizer beside the weights")
    return pred.model, pred.tokenizer


def run_embed(args) -> int:
    import io
    from pathlib import Path

    import numpy as np

    from zerolm.atomic import atomic_write_bytes
    from zerolm.embed import embed_texts

    model, tok = _load(args)
    texts = _read(args.input, args.text_column)
    vecs = embed_texts(model, tok, texts, batch_size=args.batch_size, pooling=args.pooling,
                       normalize=not args.no_normalize, max_length=args.max_length,
                       progress=None)
    out = Path(args.output)
    buf = io.BytesIO()
    np.save(buf, vecs)
    atomic_write_bytes(out, buf.getvalue())
    print(f"wrote {vecs.shape[0]} x {vecs.shape[1]} embeddings ({args.pooling} pooling"
          f"{'' if args.no_normalize else ', L2-normalised'}) to {out}")
    return 0


def register_similar(sub) -> None:
    p = add_verb(sub, "similar", "semantic search: the corpus lines closest to a query",
                 'zerolm similar path/to/all-MiniLM-L6-v2 --query "a moving film" --corpus sst2/dev.tsv --top-k 5')
    _common(p)
    p.add_argument("--query", required=True, action="append", help="query text (repeatable)")
    p.add_argument("--corpus", required=True, help="one text per line, or a table's text column")
    p.add_argument("--top-k", type=int, default=5, help="corpus lines to show per query (default: 5)")
    p.set_defaults(func=run_similar)


def run_similar(args) -> int:
    from zerolm.embed import embed_texts, top_k

    model, tok = _load(args)
    corpus = _read(args.corpus, args.text_column)
    kw = dict(batch_size=args.batch_size, pooling=args.pooling, normalize=True, max_length=args.max_length)
    cvecs = embed_texts(model, tok, corpus, progress=None, **kw)
    qvecs = embed_texts(model, tok, args.query, **kw)
    for q, qv in zip(args.query, qvecs):
        print(f"query: {q}")
        for rank, (i, sim) in enumerate(top_k(qv, cvecs, args.top_k), start=1):
            print(f"  {rank}. {sim:.4f}  {corpus[i]}")
    return 0
