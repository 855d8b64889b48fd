"""`zerolm convert`: Hugging Face checkpoints to zerolm and back."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "convert", "convert a model between zerolm and Hugging Face formats",
                 "zerolm convert --from hf path/to/all-MiniLM-L6-v2 runs/minilm\n"
                 "  zerolm convert --to hf runs/char_gpt_shakespeare/final runs/shakespeare_hf")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--from", dest="src_format", choices=["hf"], help="SRC is in this format")
    g.add_argument("--to", dest="dst_format", choices=["hf"], help="write DST in this format")
    p.add_argument("src", help="source model directory")
    p.add_argument("dst", help="destination directory")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from zerolm.convert.hf import export_hf, load_hf, untrained_heads
    from zerolm.errors import ZeroLMError
    from zerolm.loading import load_model, read_task_meta, resolve_model_path
    from zerolm.modeldir import save_model

    if args.src_format == "hf":
        model, tok = load_hf(args.src)
        save_model(model, args.dst, tokenizer=tok)
        what = "zerolm"
        for head in untrained_heads(args.src):
            print(f"note: {args.src} has no {head}; the converted model's is freshly initialised "
                  "(fine for fine-tuning; pretrain it before using its predictions)")
    else:
        src = resolve_model_path(args.src)
        meta = read_task_meta(Path(src)) if src.is_dir() else None
        if meta is not None and not (meta["task"] == "seq2seq"
                                     and meta.get("strategy", {}).get("name", "full") in ("full", "freeze")):
            raise ZeroLMError(f"{args.src} is a fine-tuned model (task.json, task {meta['task']}, strategy "
                              f"{meta.get('strategy', {}).get('name', 'full')}): Hugging Face export covers "
                              "pretraining models (BERT masked LM, GPT-2 LM, T5 sequence-to-sequence LM, "
                              "a seq2seq fine-tuning of all or some of its weights), not task heads or "
                              "adapters; use it with zerolm (predict, eval, zerolm.load)")
        model, tok = load_model(args.src)  # a seq2seq fine-tuning is its T5 as it stands
        export_hf(model, args.dst, tokenizer=tok)
        what = "Hugging Face"
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {what} {model.config.family} model ({n:,} parameters"
          f"{', with tokenizer' if tok is not None else ''}) to {args.dst}")
    return 0
