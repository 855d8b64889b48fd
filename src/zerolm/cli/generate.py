"""`zerolm generate`: sample text from a causal language model."""

from __future__ import annotations

import sys

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "generate", "generate text from a trained causal LM",
                 'zerolm generate runs/char_gpt_shakespeare/final --prompt "ROMEO:" --max-new-tokens 300 '
                 "--temperature 0.8 --top-k 40 --seed 1",
                 description="Continue one or more prompts with a causal language model (a zerolm GPT, "
                             "a fine-tuned completion model or a Hugging Face GPT-2 directory). Several "
                             "--prompt options run as one batch. Generation past the model's context "
                             "window goes on with a sliding window over the last max_seq_len tokens.")
    p.add_argument("model", help="model directory (zerolm `final/`, `best/`, a checkpoint, or a Hugging "
                   "Face GPT-2 directory)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text to continue (repeatable: the prompts run as one batch; default: start "
                        "of text)")
    p.add_argument("--max-new-tokens", type=int, default=200, help="tokens to generate per sample "
                   "(default: 200)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="sampling temperature, >= 0: below 1 sharpens, above 1 flattens, 0 is greedy "
                        "(default: 0.8)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=1.0,
                   help="nucleus sampling: the smallest set of tokens holding this probability, in "
                        "(0, 1] (1: all)")
    p.add_argument("--repetition-penalty", type=float, default=1.0,
                   help="> 1 discourages tokens already in the text (CTRL; 1: none)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--stop", action="append", default=[],
                   help="stop a sample when its text contains this string (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (default: 1)")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute all positions each step instead of using the KV cache (slower; "
                        "for checking)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.errors import ZeroLMError
    from zerolm.generate import GenerationConfig
    from zerolm.loading import load

    if args.num_samples < 1:
        raise ZeroLMError(f"--num-samples must be >= 1, got {args.num_samples}")
    prompts = args.prompt or [""]
    cfg_args = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                    top_p=args.top_p, repetition_penalty=args.repetition_penalty, greedy=args.greedy,
                    stop=args.stop, use_cache=not args.no_cache)
    GenerationConfig(**cfg_args, seed=args.seed)  # every option checked before the model loads
    pred = load(args.model, device=args.device)  # .generate says what is wrong with a non-LM
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        texts = pred.generate(prompts, **cfg_args, seed=seed)
        for j, (prompt, text) in enumerate(zip(prompts, texts)):
            if args.num_samples > 1 or len(prompts) > 1:
                print(f"--- sample {i + 1}" + (f", prompt {j + 1}" if len(prompts) > 1 else ""))
            # the whole sample and its newline in one write, flushed, so a log line printed
            # later to stderr never lands on the same line as the text
            sys.stdout.write(prompt + text + "\n")
            sys.stdout.flush()
    return 0
