"""`zerolm compress`: prune, factorise, quantize or shrink the vocabulary of a finished model
into a new model directory."""

from __future__ import annotations

from zerolm.cli.main import add_verb

# zerolm.compress.METHODS / IMPORTANCE and models.config.FACTORISABLE, spelled out here so that
# building the parser imports no torch (`zerolm --help` stays fast; a test keeps them equal)
METHODS = ("prune-heads", "prune-ffn", "low-rank", "magnitude", "int8-weight", "int8-dynamic", "prune-vocab")
IMPORTANCE = ("weight_norm", "gradient")
QUANT = ("int8-weight", "int8-dynamic")
FACTORISABLE = ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.fc_in", "mlp.fc_gate",
                "mlp.fc_out", "cross_attn.q_proj", "cross_attn.k_proj", "cross_attn.v_proj", "cross_attn.o_proj")


def register(sub) -> None:
    p = add_verb(sub, "compress", "prune, factorise, quantize or shrink the vocabulary of a finished model",
                 "zerolm compress runs/tiny_classify_reviews --method prune-heads --fraction 0.4 "
                 "--out runs/pruned\n"
                 "  zerolm compress runs/tiny_classify_reviews --method prune-ffn --fraction 0.5 "
                 "--importance gradient --data pkg:quickstart/reviews.tsv --out runs/ffn50\n"
                 "  zerolm compress runs/tiny_classify_reviews --method low-rank --energy 0.9 --out runs/lr90\n"
                 "  zerolm compress runs/tiny_classify_reviews --method int8-dynamic --out runs/int8\n"
                 "  zerolm compress runs/tiny_classify_reviews --method prune-vocab --data pkg:quickstart/reviews.tsv "
                 "--out runs/vocab\n"
                 "  zerolm compress runs/tiny_classify_reviews --method prune-ffn --fraction 0.5 --recover 200 "
                 "--recover-data pkg:quickstart/reviews.tsv --recover-dev pkg:quickstart/reviews_dev.tsv "
                 "--recover-lr 1e-3 --out runs/ffn50r\n"
                 "  zerolm compress runs/tiny_classify_reviews --report --variants runs/ffn50r runs/int8 "
                 "runs/onnx --data pkg:quickstart/reviews_dev.tsv --out runs/compress_report",
                 description="Apply one compression method to any model zerolm.load takes and write the "
                             "result as a model directory (weights, per-layer shapes, tokenizer, task.json, "
                             "and compress.json saying what was done) that predict, eval, distill and "
                             "zerolm.load take. prune-heads / prune-ffn remove the least important attention "
                             "heads / feed-forward neurons physically; low-rank replaces linears by their "
                             "truncated SVD; magnitude zeroes the smallest weights (stored dense: no smaller, "
                             "and no faster with dense kernels). int8-weight stores the block linears (and an "
                             "untied token embedding) as int8 + per-channel scales, dequantized per call: "
                             "smaller, slower; int8-dynamic stores the same and also quantizes activations per "
                             "token, for speed on CPU. The task head stays fp32. prune-vocab keeps only the "
                             "token embedding rows (and a tokenizer) of the word pieces of --data, the special "
                             "tokens and single characters: predictions on --data unchanged, a smaller "
                             "embedding; run it before int8. --recover STEPS then trains a "
                             "pruned / factorised model on the task's data, distilling from the original (the "
                             "run kept in OUT.recovery/, the recovered model in OUT); quantize after recovery. "
                             "--report compares MODEL with compressed variants (PyTorch or ONNX "
                             "directories): dev metric, size, latency at batch 1 and 32, in one table and plot.")
    p.add_argument("model", help="model directory (a fine-tuned run's best/, a zerolm or Hugging Face "
                                 "directory, python:PACKAGE)")
    p.add_argument("--method", choices=METHODS, help="the compression to apply (required unless --report)")
    p.add_argument("--out", required=True, help="directory to write (must be new or empty): the compressed "
                                                "model, or with --report the report")
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
                   help="labelled file in the model's training format: for --importance gradient, for "
                        "prune-vocab the training file whose word pieces are kept, and with --report the dev "
                        "file every variant is scored and timed on")
    g.add_argument("--max-batches", type=int, default=32,
                   help="batches of --data to score on (0: all; prune-vocab always reads all of it)")
    g.add_argument("--batch-size", type=int, default=16, help="batch size for scoring on --data")
    g.add_argument("--allow-empty", action="store_true",
                   help="allow removing every head / neuron of a block (the block then adds only a bias)")
    f = p.add_argument_group("low-rank")
    f.add_argument("--rank", type=int, default=None, help="rank of every factorised linear")
    f.add_argument("--energy", type=float, default=None,
                   help="keep the smallest rank holding this share of the spectral energy (e.g. 0.9)")
    f.add_argument("--targets", default=",".join(FACTORISABLE),
                   help="linears of each block to factorise / magnitude-prune / quantize (default: all six)")
    v = p.add_argument_group("vocabulary (prune-vocab, with --data TRAIN)")
    v.add_argument("--no-keep-chars", action="store_true",
                   help="keep only the pieces seen in --data and the special tokens (by default every "
                        "single-character piece is kept too, so that an unseen word splits into pieces "
                        "instead of becoming [UNK])")
    q = p.add_argument_group("int8 (int8-weight, int8-dynamic)")
    q.add_argument("--fp32-embeddings", action="store_true",
                   help="keep the token embedding fp32 (by default it is int8 too, unless tied to an "
                        "output layer or in a decoder)")
    r = p.add_argument_group("recovery (prune-heads, prune-ffn, low-rank, magnitude)")
    r.add_argument("--recover", type=int, default=None, metavar="STEPS",
                   help="after the transform, train the compressed model for STEPS optimizer steps on "
                        "--recover-data, distilling from the original (hard + soft targets); the run is "
                        "kept in OUT.recovery/ (compressed/ before recovery, run/ with metrics.jsonl and "
                        "loss.png) and --out gets the recovered model")
    r.add_argument("--recover-data", default=None, metavar="TRAIN",
                   help="labelled training file in the model's own task format")
    r.add_argument("--recover-dev", default=None, metavar="DEV",
                   help="labelled dev file, same format: scored before and after recovery")
    r.add_argument("--recover-lr", type=float, default=5e-5, help="learning rate of the recovery (default 5e-5)")
    r.add_argument("--recover-batch-size", type=int, default=32, help="batch size of the recovery (default 32)")
    r.add_argument("--recover-soft", type=float, default=1.0,
                   help="weight of the original model's soft targets (default 1); 0: the labels alone")
    r.add_argument("--iterative", type=int, default=None, metavar="N",
                   help="magnitude: N rounds of (prune a share, recover STEPS/N steps) reaching --sparsity, "
                        "the pruned weights zeroed again after each recovery")
    c = p.add_argument_group("report (--report)")
    c.add_argument("--report", action="store_true",
                   help="instead of compressing: measure MODEL and --variants on --data (dev metric, its "
                        "change, parameters, size on disk, latency at batch 1 and 32, speed-up) into "
                        "--out/report.md, report.json and report.png")
    c.add_argument("--variants", nargs="+", default=None, metavar="[NAME=]DIR",
                   help="the compressed models to compare with MODEL: any directory zerolm.load takes "
                        "(ONNX directories and their .onnx files too), optionally named NAME=DIR")
    c.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads while timing (default 2)")
    c.add_argument("--repeats", type=int, default=10, help="timed forward passes per model and batch (median)")
    p.set_defaults(func=run)


def _check_report_options(args) -> None:
    from zerolm.errors import ConfigError

    if args.method is not None:
        raise ConfigError(f"--report measures finished models and --method {args.method} makes one: run them "
                          "as two commands (compress first, then --report --variants OUT ...)")
    if not args.variants:
        raise ConfigError("--report needs --variants DIR [DIR ...]: the compressed models to compare with MODEL")
    if not args.data:
        raise ConfigError("--report needs --data DEV: the labelled dev file every model is scored and timed on")
    if args.recover is not None or args.iterative is not None:
        raise ConfigError("--recover / --iterative belong to compressing (--method), not to --report")
    if args.threads < 1 or args.repeats < 1:
        raise ConfigError(f"--threads and --repeats must be >= 1, got {args.threads} and {args.repeats}")


def _recovery_options(args):
    """RecoveryOptions of the --recover* options (None without --recover), checked."""
    from zerolm.errors import ConfigError

    given = [f for f, v in (("--recover-data", args.recover_data), ("--recover-dev", args.recover_dev))
             if v is not None]
    if args.recover is None:
        if given or args.iterative is not None:
            raise ConfigError(f"{', '.join(given) or '--iterative'} needs --recover STEPS")
        return None
    import torch

    from zerolm.compress.recover import RecoveryOptions

    opts = RecoveryOptions(steps=args.recover, train=args.recover_data or "", dev=args.recover_dev or "",
                           lr=args.recover_lr, batch_size=args.recover_batch_size, soft=args.recover_soft,
                           threads=torch.get_num_threads())  # what this process runs with (OMP_NUM_THREADS)
    if args.iterative is not None and args.method != "magnitude":
        raise ConfigError(f"--iterative belongs to --method magnitude, not {args.method}")
    opts.check(args.method, args.iterative or 1)
    return opts


def _check_options(args) -> None:
    """Options that do not fit the method stop here, before the model is loaded."""
    from zerolm.errors import ConfigError

    m = args.method
    if args.report:
        return _check_report_options(args)
    if m is None:
        raise ConfigError("give --method METHOD (the compression to apply), or --report --variants ... to "
                          "compare compressed models with MODEL")
    if args.variants:
        raise ConfigError("--variants belongs to --report")
    prune = m in ("prune-heads", "prune-ffn")
    vocab = m == "prune-vocab"
    if m != "low-rank" and (args.rank is not None or args.energy is not None):
        raise ConfigError(f"--rank / --energy belong to --method low-rank, not {m}")
    if not prune and (args.per_layer is not None or args.importance != "weight_norm"):
        raise ConfigError(f"--per-layer and --importance belong to prune-heads / prune-ffn, not {m}")
    if args.data and not (prune or vocab):
        raise ConfigError(f"--data belongs to prune-heads / prune-ffn (gradient importance) and prune-vocab, "
                          f"not {m}")
    if args.no_keep_chars and not vocab:
        raise ConfigError(f"--no-keep-chars belongs to --method prune-vocab, not {m}")
    if vocab:
        if not args.data:
            raise ConfigError("prune-vocab needs --data TRAIN: the labelled training file (in the model's task "
                              "format) whose word pieces are kept")
        if args.fraction is not None:
            raise ConfigError("--fraction does not apply to prune-vocab: it keeps every word piece of --data")
        if args.recover is not None:
            raise ConfigError("--recover does not apply to prune-vocab: predictions on --data do not change, so "
                              "there is nothing to recover")
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
    from zerolm.compress import NO_SPEEDUP, SLOWER, count_parameters
    from zerolm.compress.save import check_out_dir, read_record, save_compressed, weight_bytes
    from zerolm.compress.surgery import check_reshapable
    from zerolm.errors import ConfigError
    from zerolm.loading import resolve_model_path

    _check_options(args)
    if args.report:
        return _report(args)
    opts = _recovery_options(args)
    check_out_dir(args.out, args.overwrite)
    if opts is not None:
        from zerolm.compress.recover import check_recovery_dir

        check_recovery_dir(args.out, args.overwrite)
    per_layer = _per_layer(args.per_layer)
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    pred = zerolm.load(args.model)
    model = pred.model
    if args.method in ("prune-heads", "prune-ffn", "low-rank"):  # before importance scores take time
        try:
            check_reshapable(model, f"--method {args.method}")
        except ConfigError as e:
            raise ConfigError(f"{args.model}: {e}") from None
    params_before, bytes_before = count_parameters(model), weight_bytes(resolve_model_path(args.model))
    if opts is not None and not pred.meta:
        raise ConfigError(f"{args.model}: --recover trains on the task's labelled data, and this model has no task "
                          "(task.json); recover a fine-tuned model (a run's best/)")

    objective = batches = None
    if args.importance == "gradient":
        if pred.task is None or not hasattr(pred.task, "labelled_batches"):
            raise ConfigError(f"{args.model}: gradient importance needs a fine-tuned model (task.json) to "
                              "read --data and compute its loss; use --importance weight_norm")
        objective = pred.task
        data = pred.task.labelled_batches(args.data, batch_size=args.batch_size)
        batches = data.eval_batches(args.max_batches)
    record = {"source": str(args.model), "method": args.method,
              "options": {k: getattr(args, k) for k in ("fraction", "per_layer", "scope", "importance", "data",
                                                         "rank", "energy", "targets", "fp32_embeddings", "recover",
                                                         "iterative", "no_keep_chars")},
              "params_before": params_before}
    previous = read_record(resolve_model_path(args.model))
    if previous is not None:  # compressing a compressed model: keep what made it
        record["previous"] = previous
    tokenizer = pred.tokenizer
    if args.method == "prune-vocab":  # a new tokenizer too: the model now reads its ids
        tokenizer, report = _prune_vocab(args, pred)
        recovery = None
    elif opts is not None and args.method == "magnitude":  # pruned and recovered in rounds, the zeros kept
        model, report, recovery = _recover(args, opts, model, pred, {**record, "params_after": params_before})
    else:
        report = _transform(args, model, per_layer, targets, objective, batches)
        recovery = None
        if opts is not None:
            model, recovery = _recover(args, opts, model, pred, {**record, "params_after": count_parameters(model),
                                                                 "report": report})
    params_after = count_parameters(model)
    record.update(params_after=params_after, report=report)
    if recovery is not None:
        record["recovery"] = recovery
    out = save_compressed(model, args.out, tokenizer=tokenizer, meta=pred.meta, record=record,
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
    elif args.method == "prune-vocab":
        print(f"vocabulary: {report['vocab_before']:,} -> {report['vocab_after']:,} tokens: "
              f"{report['seen_in_data']:,} seen in --data, {report['kept_chars']:,} single characters and "
              f"{report['kept_special']} special tokens not seen; token embedding "
              f"{report['embedding_params_before']:,} -> {report['embedding_params_after']:,} parameters")
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
    if recovery is not None and len(recovery.get("rounds", [])) > 1:
        for r in recovery["rounds"]:
            print(f"round {r['round']}/{len(recovery['rounds'])}: sparsity {100 * r['overall_after']:.1f}%, "
                  f"{r['steps']} steps, dev loss {r['dev_before'].get('loss', float('nan')):.4f} -> "
                  f"{r['dev_after'].get('loss', float('nan')):.4f}")
    if recovery is not None:
        before, after = recovery["dev_before"], recovery["dev_after"]
        original = recovery.get("dev_original") or {}
        shown = [k for k in ("loss", getattr(pred.task, "metric", "")) if k in after]
        print(f"recovery ({recovery['how']}, {args.recover} steps): dev " + ", ".join(
            f"{k} {before.get(k, float('nan')):.4f} -> {after[k]:.4f}"
            + (f" (original {original[k]:.4f})" if k in original else "") for k in shown)
              + f"; runs and metrics in {recovery['recovery_dir']}")
    if args.method == "prune-vocab":  # nothing to recover: predictions on --data are unchanged
        print(f"wrote {out}  (quantize next: zerolm compress {out} --method int8-dynamic --out OUT)")
    elif args.method in QUANT or recovery is not None:  # int8 does not train; a recovered model is done
        print(f"wrote {out}")
    else:
        print(f"wrote {out}  (recover accuracy with --recover STEPS --recover-data TRAIN --recover-dev DEV, or: "
              f"zerolm distill CONFIG teacher={args.model} student.init={out})")
    return 0


def _transform(args, model, per_layer, targets, objective, batches) -> dict:
    """Apply --method to `model` in place; returns the method's report."""
    from zerolm.compress import low_rank, magnitude, prune_ffn, prune_heads
    from zerolm.compress.quant import quantize

    if args.method in ("prune-heads", "prune-ffn"):
        fn = prune_heads if args.method == "prune-heads" else prune_ffn
        return fn(model, args.fraction, per_layer, importance=args.importance, scope=args.scope,
                  objective=objective, batches=batches, allow_empty=args.allow_empty)
    if args.method == "low-rank":
        return low_rank(model, rank=args.rank, energy=args.energy, targets=targets)
    if args.method in QUANT:
        return quantize(model, args.method, targets=targets, embeddings=not args.fp32_embeddings)
    return magnitude(model, args.fraction, scope=args.scope, targets=targets)


def _prune_vocab(args, pred):
    """--method prune-vocab: (the pruned vocabulary's tokenizer, report); `pred.model` changes in place."""
    from zerolm.compress.vocab import check_vocab_prunable, prune_vocab
    from zerolm.errors import ConfigError

    if pred.tokenizer is None:
        raise ConfigError(f"{args.model}: no tokenizer beside the weights; prune-vocab writes a smaller one")
    check_vocab_prunable(pred.model, pred.tokenizer)  # refusals before reading the data
    if not pred.meta or not hasattr(pred.task, "labelled_batches"):
        raise ConfigError(f"{args.model}: prune-vocab keeps the word pieces of the task's training data, read "
                          "in the task's format, and this model has no task (task.json); prune the vocabulary "
                          "of a fine-tuned model (a run's best/)")
    # every batch, tokenized and truncated by the task exactly as the model will see its inputs
    data = pred.task.labelled_batches(args.data, batch_size=args.batch_size)
    return prune_vocab(pred.model, pred.tokenizer, data.eval_batches(0), keep_chars=not args.no_keep_chars)


def _recover(args, opts, model, pred, record: dict):
    """--recover: (recovered model, recovery record), or for magnitude (model, sparsity
    report, recovery record), the runs in OUT.recovery/."""
    from zerolm.compress.recover import clear_recovery_dir, recover, recover_magnitude

    # the one loop, handed to compress (which may not import train: see compress.recover)
    from zerolm.train.distill import distill

    clear_recovery_dir(args.out)  # check_recovery_dir allowed it: --overwrite, and only a recovery's files
    if args.method == "magnitude":
        targets = [t.strip() for t in args.targets.split(",") if t.strip()]
        return recover_magnitude(model, pred, args.model, args.out, opts, sparsity=args.fraction,
                                 rounds=args.iterative or 1, scope=args.scope, targets=targets, distill_fn=distill,
                                 record=record)
    return recover(model, pred, args.model, args.out, opts, distill_fn=distill, record=record)


def _report(args) -> int:
    """--report: MODEL and --variants measured on --data into --out (md, json, png)."""
    from zerolm.compress.report import compare, parse_variant, write
    from zerolm.compress.save import check_out_dir

    check_out_dir(args.out, args.overwrite)  # before minutes of measuring
    report = compare(args.model, [parse_variant(v) for v in args.variants], args.data, threads=args.threads,
                     repeats=args.repeats)
    out = write(report, args.out, overwrite=args.overwrite)
    m, bn = report["metric"], report["batch_sizes"][-1]
    for r in report["rows"]:
        change = "" if r["name"] == "original" or r["change"] is None else f" ({r['change']:+.4f})"
        score = "?" if r["score"] is None else f"{r['score']:.4f}"
        print(f"{r['name']}: {m} {score}{change}, {_mb(r['bytes'])}, {r['ms'][-1]:.1f} ms at batch {bn} "
              f"({r['speedup'][-1]:.2f}x)")
    print(f"wrote {out / 'report.md'}, report.json, report.png")
    return 0


def _mb(n: int | None) -> str:
    return "?" if n is None else f"{n / 1e6:.2f} MB"
