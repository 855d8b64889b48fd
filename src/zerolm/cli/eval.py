"""`zerolm eval`: score a model on a file.

A fine-tuned classifier or tagger (a run's best/ or final/, or the run directory) is
scored on a labelled file in its training format, with the report fine-tuning prints on
dev; a language model gets perplexity (causal LM) or masked-LM accuracy (BERT) on text.
"""

from __future__ import annotations

import json
import sys

from zerolm.cli.generate import add_seq2seq_decoding_options
from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "eval", "evaluate a model on a file: a fine-tuned model's report on labelled "
                 "data, or a language model's perplexity / masked-LM accuracy on text",
                 "zerolm eval runs/sst2_minilm/best --input sst2/dev.tsv --out runs/sst2_eval\n"
                 "  zerolm eval runs/multi30k_t5/best --input multi30k/dev.tsv --num-beams 4 --length-penalty 0.6\n"
                 "  zerolm eval runs/char_gpt_shakespeare/final --input tinyshakespeare/input.txt --block-size 64",
                 description="Evaluate a model on a file. A fine-tuned model (task.json beside the "
                             "weights) is scored on a labelled file in the format it was trained on: "
                             "classification prints accuracy, per-class precision / recall / F1 and "
                             "averages (and writes confusion.png with --out); tagging prints entity "
                             "precision / recall / F1 per type; sequence-to-sequence prints target "
                             "loss, BLEU and ROUGE of the targets it writes (decoded as fine-tuned, or "
                             "as the decoding options say). A pretrained language model gets "
                             "perplexity (causal LM) or masked-LM accuracy (BERT) on text files.")
    p.add_argument("model", help="model directory: a fine-tuned run's best/ or final/ (or the run "
                   "directory), a zerolm or Hugging Face model directory")
    p.add_argument("--input", required=True, nargs="+",
                   help="fine-tuned model: one labelled file (TSV / CSV / JSONL table, CoNLL for "
                        "tagging); language model: text file(s), plain, .gz or a table's text column")
    p.add_argument("--out", metavar="DIR", default=None,
                   help="write the report (eval.json) and its plots into this directory")
    p.add_argument("--json", action="store_true",
                   help="print the headline figures as one JSON line (accuracy, macro_f1; or f1, "
                        "precision, recall for tagging; bleu, rouge and the decoding used for "
                        "seq2seq; or the language-model metrics)")
    p.add_argument("--block-size", type=int, default=None,
                   help="language model: tokens per window (default: the model's maximum; a T5: the "
                        "encoder length its span-corruption pretraining used, else 128)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="examples (or windows) per batch (default: 32 for fine-tuned models, 16 for LMs)")
    p.add_argument("--max-batches", type=int, default=0,
                   help="language model: stop after this many batches (0: all)")
    p.add_argument("--seed", type=int, default=1337, help="masking seed (masked LM)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_seq2seq_decoding_options(p)
    p.set_defaults(func=run)


# what --json prints for each fine-tuning task: the figures a user compares
HEADLINE = {"classify": ("accuracy", "macro_f1", "weighted_f1", "loss"),
            "tag": ("f1", "precision", "recall", "accuracy", "loss"),
            "clm": ("loss", "perplexity", "tokens"),
            "seq2seq": ("bleu", "rouge1", "rouge2", "rougeL", "loss", "perplexity", "decoding"),
            "intent_slots": ("frame_accuracy", "intent_accuracy", "slot_f1", "slot_precision", "slot_recall",
                             "loss")}


def run(args) -> int:
    from zerolm.cli.generate import apply_seq2seq_decoding, seq2seq_decoding
    from zerolm.loading import load

    decoding = seq2seq_decoding(args)
    pred = load(args.model, device=args.device)
    apply_seq2seq_decoding(args, pred, decoding)
    if pred.meta:
        return _run_finetuned(args, pred)
    return _run_lm(args, pred)


def _run_finetuned(args, pred) -> int:
    from pathlib import Path

    from zerolm.atomic import atomic_write_text
    from zerolm.errors import ZeroLMError

    if len(args.input) != 1:
        raise ZeroLMError(f"a fine-tuned model is evaluated on one labelled file, got {len(args.input)}")
    report = pred.evaluate(args.input[0], batch_size=args.batch_size or 32)
    name = pred.meta["task"]
    report.update(task=name, input=str(args.input[0]), model=str(args.model))
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "eval.json", json.dumps(report, indent=2))
        pred.task.write_plots(report, out, Path(args.input[0]).name)
    if args.json:
        keys = HEADLINE.get(name, ())
        print(json.dumps({k: report[k] for k in keys if k in report}))
    else:
        print(pred.task.format_report(report))
        if "decoding" in report:
            print("decoding: " + ", ".join(f"{k} {v}" for k, v in report["decoding"].items()))
        if args.out:
            print(f"report: {Path(args.out) / 'eval.json'}   plots: {args.out}/*.png")
    return 0


def _run_lm(args, pred) -> int:
    from zerolm.config import TaskConfig
    from zerolm.data.corpus import load_corpus
    from zerolm.data.lm import CausalLMBatches, MaskedLMBatches
    from zerolm.errors import ZeroLMError
    from zerolm.models import family
    from zerolm.progress import counted
    from zerolm.tasks import OBJECTIVES

    model, tok = pred.model, pred.tokenizer
    if tok is None:
        raise ZeroLMError(f"{args.model}: no tokenizer/ directory beside the weights")
    from zerolm.convert.hf import untrained_heads
    from zerolm.loading import resolve_model_path

    for head in untrained_heads(resolve_model_path(args.model)):
        print(f"warning: {args.model} has no {head}: the figures below come from a randomly "
              "initialised one", file=sys.stderr)
    block = args.block_size or model.config.max_seq_len
    bs = args.batch_size or 16
    corpus = load_corpus(args.input, tok, keep_line_ends=tok.kind != "wordpiece")
    objective = family(model.config).objective
    task = OBJECTIVES[objective]()
    if objective == "clm":  # windows of the token stream
        data = CausalLMBatches(corpus.flat(), block, bs, args.seed)
    elif objective == "span":  # T5's span corruption, as the model's pretraining run saw it
        from zerolm.data.spans import SpanCorruptionBatches

        run = _saved_run_config(resolve_model_path(args.model))
        task_cfg = run.get("task") or {}
        data = SpanCorruptionBatches(
            corpus.flat(), tok, input_length=args.block_size or (run.get("data") or {}).get("block_size", 128),
            batch_size=bs, seed=args.seed, noise_density=task_cfg.get("noise_density", 0.15),
            mean_span_length=task_cfg.get("mean_span_length", 3.0))
    else:  # masked blocks
        data = MaskedLMBatches(corpus, tok, TaskConfig(name="mlm", sentence_objective="none"), block, bs,
                               args.seed)
    metrics = task.evaluate(model, counted(data.eval_batches(args.max_batches), "evaluating", unit="batch"))
    if args.json:
        print(json.dumps(metrics))
    else:
        width = max(len(k) for k in metrics)
        for k, v in metrics.items():
            print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0


def _saved_run_config(directory) -> dict:
    """The run config saved beside a pretrained model (config.yaml), or {}."""
    import yaml

    path = directory / "config.yaml"
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {} if path.exists() else {}
    except (OSError, yaml.YAMLError):
        return {}
