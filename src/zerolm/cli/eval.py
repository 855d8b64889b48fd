"""`zerolm eval`: perplexity (causal LM) or masked-LM accuracy (BERT) on a text file."""

from __future__ import annotations

import json

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "eval", "evaluate a model on a text file: perplexity or masked-LM accuracy",
                 "zerolm eval runs/shakespeare/final --input tinyshakespeare/input.txt --block-size 64")
    p.add_argument("model", help="model directory")
    p.add_argument("--input", required=True, nargs="+", help="text file(s): plain, .gz, or a table's text column")
    p.add_argument("--block-size", type=int, default=None, help="tokens per window (default: model max)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-batches", type=int, default=0, help="stop after this many batches (0: all)")
    p.add_argument("--seed", type=int, default=1337, help="masking seed (masked LM)")
    p.add_argument("--json", action="store_true", help="print the metrics as one JSON line")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.config import TaskConfig
    from zerolm.data.corpus import load_corpus
    from zerolm.data.lm import CausalLMBatches, MaskedLMBatches
    from zerolm.errors import ZeroLMError
    from zerolm.loading import load_model
    from zerolm.tasks import CausalLMTask, MaskedLMTask

    model, tok = load_model(args.model, device=args.device)
    if tok is None:
        raise ZeroLMError(f"{args.model}: no tokenizer/ directory beside the weights")
    block = args.block_size or model.config.max_seq_len
    corpus = load_corpus(args.input, tok, keep_line_ends=tok.kind != "wordpiece")
    if model.config.family == "gpt":
        data = CausalLMBatches(corpus.flat(), block, args.batch_size, args.seed)
        metrics = CausalLMTask().evaluate(model, data.eval_batches(args.max_batches))
    else:
        task = TaskConfig(name="mlm", sentence_objective="none")
        data = MaskedLMBatches(corpus, tok, task, block, args.batch_size, args.seed)
        metrics = MaskedLMTask().evaluate(model, data.eval_batches(args.max_batches))
    if args.json:
        print(json.dumps(metrics))
    else:
        width = max(len(k) for k in metrics)
        for k, v in metrics.items():
            print(f"{k:<{width}}  {v:.4f}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return 0
