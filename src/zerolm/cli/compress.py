"""`zerolm compress`: prune, factorise or quantize a finished model into a new model directory."""

from __future__ import annotations

from zerolm.cli.main import add_verb

# zerolm.compress.METHODS / IMPORTANCE and models.config.FACTORISABLE, spelled out here so that
# building the parser imports no torch (`zerolm --help` stays fast; a test keeps them equal)
METHODS = ("prune-heads", "prune-ffn", "low-rank", "magnitude", "int8-weight", "int8-dynamic")
IMPORTANCE = ("weight_norm", "gradient")
QUANT = ("int8-weight", "int8-dynamic")
FACTORISABLE = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc_in", "mlp.fc_out")


def register(sub) -> None:
    p = add_verb(sub, "compress", "prune, factorise or quantize a finished model into a smaller one",
                 "zerolm compress runs/tiny_classify_reviews --method prune-heads --fraction 0.4 "
                 "--out runs/pruned\n"
                 "  zerolm compress runs/tiny_classify_reviews --method prune-ffn --fraction 0.5 "
                 "--importance gradient --data pkg:quickstart/reviews.tsv --out runs/ffn50\n"
                 "  zerolm compress runs/tiny_classify_reviews --method low-rank --energy 0.9 --out runs/lr90\n"
                 "  zerolm compress runs/tiny_classify_reviews --method int8-dynamic --out runs/int8",
                 description="Apply one compression method to any model zerolm.load takes and write the "
                             "result as a model directory (weights, per-layer shapes, tokenizer, task.json, "
                             "and compress.json saying what was done) that predict, eval, distill and "
                             "zerolm.load take. prune-heads / prune-ffn remove the least important attention "
                             "heads / feed-forward neurons physically; low-rank replaces linears by their "
                             "truncated SVD; magnitude zeroes the smallest weights (stored dense: no smaller, "
                             "and no faster with dense kernels). int8-weight stores the block linears (and an "
                             "untied token embedding) as int8 + per-channel scales, dequantized per call: "
                             "smaller, slower; int8-dynamic stores the same and also quantizes activations per "
                             "token, for speed on CPU. The task head stays fp32. To recover accuracy, distil "
                             "from the original (pruning, low-rank) into the result: "
                             "zerolm distill CONFIG teacher=ORIGINAL student.init=OUT.")
    p.add_argument("model", help="model directory (a fine-tuned run's best/, a zerolm or Hugging Face "
                                 "directory, python:PACKAGE)")
    p.add_argument("--method", required=True, choices=METHODS, help="the compression to apply")
    p.add_argument("--out", required=True, help="directory to write (must be new or empty)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    g = p.add_argument_group("pruning (prune-heads, prune-ffn, magnitude)")
    g.add_argument("--fraction", "--sparsity", dest="fraction", type=float, default=None,
                   help="share removed: of the heads, of the neurons, or of the weights (magnitude)")
    g.add_argument("--per-layer", default=None, metavar="N,N,...",
                   help="heads / neurons to remove from each block, one count per block (e.g. 2,0,1)")
    g.add_argument("--scope", choices=["global", "layer"], default="global",
                   help="rank units of all blocks together (global, default) or remove the same share "
                        "of every block (layer)")
    g.add_argument("--importance", choices=IMPORTANCE, default="weight_norm",
                   help="weight_norm: data-free; gradient: |d loss / d gate| on --data (Michel et al. 2019)")
    g.add_argument("--data", default=None,
                   help="labelled file in the model's training format, for --importance gradient")
    g.add_argument("--max-batches", type=int, default=32, help="batches of --data to score on (0: all)")
    g.add_argument("--batch-size", type=int, default=16, help="batch size for scoring on --data")
    g.add_argument("--allow-empty", action="store_true",
                   help="allow removing every head / neuron of a block (the block then adds only a bias)")
    f = p.add_argument_group("low-rank")
    f.add_argument("--rank", type=int, default=None, help="rank of every factorised linear")
    f.add_argument("--energy", type=float, default=None,
                   help="keep the smallest rank holding this share of the spectral energy (e.g. 0.9)")
    f.add_argument("--targets", default=",".join(FACTORISABLE),
                   help="linears of each block to factorise / magnitude-prune / quantize (default: all six)")
    q = p.add_argument_group("int8 (int8-weight, int8-dynamic)")
    q.add_argument("--fp32-embeddings", action="store_true",
                   help="keep the token embedding fp32 (by default it is int8 too, unless tied to an "
                        "output layer or in a decoder)")
    p.set_defaults(func=run)


def _check_options(args) -> None:
    """Options that do not fit the method stop here, before the model is loaded."""
    from zerolm.errors import ConfigError

    m = args.method
    prune = m in ("prune-heads", "prune-ffn")
    if m != "low-rank" and (args.rank is not None or args.energy is not None):
        raise ConfigError(f"--rank / --energy belong to --method low-rank, not {m}")
    if not prune and (args.per_layer is not None or args.importance != "weight_norm" or args.data):
        raise ConfigError(f"--per-layer, --importance and --data belong to prune-heads / prune-ffn, not {m}")
    if m in QUANT and args.fraction is not None:
        raise ConfigError(f"--fraction does not apply to {m}: it quantizes every chosen linear (see --targets)")
    if args.fp32_embeddings and m not in QUANT:
        raise ConfigError(f"--fp32-embeddings belongs to int8-weight / int8-dynamic, not {m}")
    if m == "low-rank" and args.fraction is not None:
        raise ConfigError("--fraction does not apply to low-rank; give --rank R or --energy E")
    if prune and (args.fraction is None) == (args.per_layer is None):
        raise ConfigError(f"{m}: give exactly one of --fraction F and --per-layer N,N,...")
    if m == "magnitude" and args.fraction is None:
        raise ConfigError("magnitude: give --sparsity S (the share of weights set to zero, e.g. 0.5)")
    if m == "low-rank" and (args.rank is None) == (args.energy is None):
        raise ConfigError("low-rank: give exactly one of --rank R and --energy E")
    if args.importance == "gradient" and not args.data:
        raise ConfigError("--importance gradient needs --data FILE (labelled, in the model's training format); "
                          "--importance weight_norm needs no data")


def _per_layer(text: str | None) -> list[int] | None:
    from zerolm.errors import ConfigError

    if text is None:
        return None
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise ConfigError(f"--per-layer {text!r}: give one integer per block, comma-separated (e.g. 2,0,1)") from None


def run(args) -> int:
    import zerolm
    from zerolm.compress import (
        NO_SPEEDUP,
        SLOWER,
        count_parameters,
        low_rank,
        magnitude,
        prune_ffn,
        prune_heads,
    )
    from zerolm.compress.quant import quantize
    from zerolm.compress.save import check_out_dir, save_compressed, weight_bytes
    from zerolm.errors import ConfigError
    from zerolm.loading import resolve_model_path

    _check_options(args)
    check_out_dir(args.out, args.overwrite)
    per_layer = _per_layer(args.per_layer)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    pred = zerolm.load(args.model)
    model = pred.model
    params_before, bytes_before = count_parameters(model), weight_bytes(resolve_model_path(args.model))

    objective = batches = None
    if args.importance == "gradient":
        if pred.task is None or not hasattr(pred.task, "labelled_batches"):
            raise ConfigError(f"{args.model}: gradient importance needs a fine-tuned model (task.json) to "
                              "read --data and compute its loss; use --importance weight_norm")
        objective = pred.task
        data = pred.task.labelled_batches(args.data, batch_size=args.batch_size)
        batches = data.eval_batches(args.max_batches)
    if args.method in ("prune-heads", "prune-ffn"):
        fn = prune_heads if args.method == "prune-heads" else prune_ffn
        report = fn(model, args.fraction, per_layer, importance=args.importance, scope=args.scope,
                    objective=objective, batches=batches, allow_empty=args.allow_empty)
    elif args.method == "low-rank":
        report = low_rank(model, rank=args.rank, energy=args.energy, targets=targets)
    elif args.method in QUANT:
        report = quantize(model, args.method, targets=targets, embeddings=not args.fp32_embeddings)
    else:
        report = magnitude(model, args.fraction, scope=args.scope, targets=targets)

    params_after = count_parameters(model)
    record = {"source": str(args.model), "method": args.method,
              "options": {k: getattr(args, k) for k in ("fraction", "per_layer", "scope", "importance", "data",
                                                         "rank", "energy", "targets", "fp32_embeddings")},
              "params_before": params_before, "params_after": params_after, "report": report}
    out = save_compressed(model, args.out, tokenizer=pred.tokenizer, meta=pred.meta, record=record,
                          overwrite=args.overwrite)
    bytes_after = weight_bytes(out)

    if args.method == "prune-heads":
        print(f"attention heads per block: {report['heads']}")
    elif args.method == "prune-ffn":
        print(f"feed-forward width per block: {report['d_ff']}")
    elif args.method == "low-rank":
        print("ranks per block: " + "; ".join(
            f"{i}: " + ", ".join(f"{k.split('.')[-1]} {r}" for k, r in ranks.items())
            for i, ranks in enumerate(report["ranks"])))
    elif args.method in QUANT:
        emb = "the token embedding" if report["embeddings"] else f"not the token embedding ({report['embedding_note']})"
        print(f"int8: {len(report['linears'])} linears and {emb}; the task head stays fp32; quantized weights "
              f"{_mb(report['bytes_before'])} -> {_mb(report['bytes_after'])}")
        if args.method == "int8-weight":
            print(f"note: {SLOWER}")
    else:
        print("sparsity per block: " + ", ".join(f"{100 * s:.1f}%" for s in report["per_block"])
              + f" (overall {100 * report['overall']:.1f}% of the block linears' weights)")
        print(f"note: {NO_SPEEDUP}")
    change = 100.0 * (params_after - params_before) / max(params_before, 1)
    print(f"parameters: {params_before:,} -> {params_after:,} ({change:+.1f}%)")
    size = f"{_mb(bytes_before)} -> {_mb(bytes_after)}" if bytes_before is not None else _mb(bytes_after)
    print(f"weights on disk: {size}")
    if args.method in QUANT:  # an int8 model is for inference: it does not train
        print(f"wrote {out}")
    else:
        print(f"wrote {out}  (recover accuracy with: zerolm distill CONFIG teacher={args.model} "
              f"student.init={out})")
    return 0


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} MB"
