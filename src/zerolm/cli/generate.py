"""`zerolm generate`: sample text from a causal language model."""

from __future__ import annotations

import sys

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "generate", "generate text from a trained causal LM",
                 'zerolm generate runs/shakespeare/final --prompt "ROMEO:" --max-new-tokens 200 '
                 "--temperature 0.8 --top-k 40 --seed 1")
    p.add_argument("model", help="model directory (zerolm `final/`, `best/` or a checkpoint)")
    p.add_argument("--prompt", default="", help="text to continue (default: start of text)")
    p.add_argument("--max-new-tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--stop", action="append", default=[], help="stop sequence (repeatable)")
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--num-samples", type=int, default=1)
    p.add_argument("--no-cache", action="store_true", help="recompute all positions each step")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.errors import ZeroLMError
    from zerolm.generate import GenerationConfig, generate_text
    from zerolm.loading import load_model

    model, tok = load_model(args.model, device=args.device)
    if model.config.family != "gpt":
        raise ZeroLMError(f"{args.model}: generation needs a causal LM (family gpt), this is "
                          f"{model.config.family!r}")
    if tok is None:
        raise ZeroLMError(f"{args.model}: no tokenizer/ directory beside the weights")
    for i in range(args.num_samples):
        cfg = GenerationConfig(
            max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, repetition_penalty=args.repetition_penalty, greedy=args.greedy,
            stop=args.stop, seed=None if args.seed is None else args.seed + i,
            use_cache=not args.no_cache)
        text = generate_text(model, tok, args.prompt, cfg)
        if args.num_samples > 1:
            print(f"--- sample {i + 1}")
        sys.stdout.write(args.prompt + text + "\n")
    return 0
