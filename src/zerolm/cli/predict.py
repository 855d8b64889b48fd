"""`zerolm predict`: run a fine-tuned model over a file."""

from __future__ import annotations

from zerolm.cli.generate import add_seq2seq_decoding_options
from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "predict", "predict with a fine-tuned model: classes and probabilities, "
                 "entity tags, completions, or targets (translations, summaries)",
                 "zerolm predict runs/sst2_minilm/best --input sst2/dev.tsv --output preds.tsv\n"
                 "  zerolm predict runs/multi30k_t5/best --input multi30k/dev.tsv --output de.tsv --num-beams 4",
                 description="Predict every input of a file with a fine-tuned model (the best/ or final/ "
                 "folder of a `zerolm finetune` run). Inputs: classification, a table with the "
                 "training text column(s) or one text per line; tagging, a CoNLL file or one "
                 "whitespace-tokenized sentence per line; completion, a table with a prompt "
                 "column or one prompt per line (write \\n for a line break); sequence-to-sequence, "
                 "a table with the source column or one source per line. Output: .tsv or "
                 ".jsonl (tagging also .conll / .txt in CoNLL columns), in the input's order, "
                 "every input column kept as it was and the prediction added in new columns "
                 "(pred_label and prob_<class>; pred_tags; pred_completion; pred_<target column>); "
                 "batches are sorted by length for speed.")
    p.add_argument("model", help="fine-tuned model directory (with task.json)")
    p.add_argument("--input", required=True, help="input file (paths may be relative to $ZEROLM_DATA)")
    p.add_argument("--output", required=True, help="output file: .tsv or .jsonl")
    p.add_argument("--batch-size", type=int, default=32, help="inputs per batch (default: 32)")
    p.add_argument("--max-length", type=int, default=None,
                   help="truncate inputs to this many tokens (default: as in fine-tuning)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    add_seq2seq_decoding_options(p)
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.cli.generate import apply_seq2seq_decoding, seq2seq_decoding
    from zerolm.loading import load
    from zerolm.predict import predict_file

    decoding = seq2seq_decoding(args)
    pred = load(args.model, device=args.device)
    apply_seq2seq_decoding(args, pred, decoding)
    records = predict_file(args.model, args.input, args.output, batch_size=args.batch_size,
                           max_length=args.max_length, device=args.device, predictor=pred)
    print(f"wrote {len(records)} predictions to {args.output}")
    return 0
