"""`zerolm generate`: sample text from a causal language model, or write the target an
encoder-decoder (T5) gives a source.

Also the decoding options `zerolm predict` and `zerolm eval` give a fine-tuned
sequence-to-sequence model (`add_seq2seq_decoding_options`, `apply_seq2seq_decoding`).
"""

from __future__ import annotations

import sys

from zerolm.cli.main import add_verb

# the settings of a fine-tuned seq2seq model (task.json) that `predict` and `eval` override
# (tasks.seq2seq.GENERATION_KEYS, spelled out so that the CLI starts without torch; a test keeps them equal)
SEQ2SEQ_DECODING = ("num_beams", "length_penalty", "no_repeat_ngram_size", "max_new_tokens")

# what `zerolm generate` samples with where the command line says nothing (a fine-tuned
# seq2seq model decodes as it was fine-tuned instead)
DEFAULTS = {"max_new_tokens": 200, "temperature": 0.8, "top_k": 0, "top_p": 1.0, "repetition_penalty": 1.0,
            "num_beams": 1, "length_penalty": 1.0, "no_repeat_ngram_size": 0, "min_new_tokens": 0}


def register(sub) -> None:
    p = add_verb(sub, "generate", "generate text from a trained causal LM, or translate / transform a "
                 "source with an encoder-decoder (T5)",
                 'zerolm generate runs/char_gpt_shakespeare/final --prompt "ROMEO:" --max-new-tokens 300 '
                 "--temperature 0.8 --top-k 40 --seed 1\n"
                 '  zerolm generate runs/multi30k_t5/best --prompt "A man is eating in the snow." --num-beams 4',
                 description="Continue one or more prompts with a causal language model (a zerolm GPT, "
                             "a fine-tuned completion model or a Hugging Face GPT-2 directory). Several "
                             "--prompt options run as one batch. Generation past the model's context "
                             "window goes on with a sliding window over the last max_seq_len tokens. "
                             "With an encoder-decoder (a zerolm T5, pretrained or fine-tuned with task "
                             "seq2seq, or a Hugging Face T5 directory) each --prompt is a source and the "
                             "target it gets is printed: sampled as for a causal LM, greedy with "
                             "--greedy, or by beam search with --num-beams N.")
    p.add_argument("model", help="model directory (zerolm `final/`, `best/`, a checkpoint, or a Hugging "
                   "Face GPT-2 or T5 directory)")
    p.add_argument("--prompt", action="append", default=None,
                   help="text to continue, or an encoder-decoder's source (repeatable: the prompts run "
                        "as one batch; default: start of text)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="tokens to generate per sample "
                   "(default: 200; a fine-tuned seq2seq model: its own)")
    p.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature, >= 0: below 1 sharpens, above 1 flattens, 0 is greedy "
                        "(default: 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens (0: all)")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: the smallest set of tokens holding this probability, in "
                        "(0, 1] (1: all)")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help="> 1 discourages tokens already in the text (CTRL; 1: none)")
    p.add_argument("--greedy", action="store_true", help="always take the most likely token")
    p.add_argument("--stop", action="append", default=[],
                   help="stop a sample when its text contains this string (repeatable)")
    p.add_argument("--seed", type=int, default=None, help="random seed, for reproducible samples")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt (default: 1)")
    p.add_argument("--no-cache", action="store_true",
                   help="causal LM: recompute all positions each step instead of using the KV cache "
                        "(slower; for checking)")
    p.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                   help="never repeat an n-gram of N tokens (default: 0, off)")
    p.add_argument("--min-new-tokens", type=int, default=None, metavar="N",
                   help="no end of text before N new tokens (default: 0)")
    g = p.add_argument_group("beam search (encoder-decoders, family t5)")
    g.add_argument("--num-beams", type=int, default=None, metavar="N",
                   help="beam search with N beams (the sampling options then do not apply; default: 1, "
                        "no beam search; a causal LM refuses more)")
    g.add_argument("--length-penalty", type=float, default=None, metavar="X",
                   help="beam search: a target scores log p / length ** X (> 0 favours longer ones; "
                        "default: 1)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.set_defaults(func=run)


def run(args) -> int:
    from zerolm.errors import ZeroLMError
    from zerolm.generate import GenerationConfig
    from zerolm.loading import load

    if args.num_samples < 1:
        raise ZeroLMError(f"--num-samples must be >= 1, got {args.num_samples}")
    given = {k: getattr(args, k) for k in DEFAULTS if getattr(args, k) is not None}
    if args.greedy:
        given["greedy"] = True
    if args.stop:
        given["stop"] = args.stop
    cfg_args = {**DEFAULTS, **given, "use_cache": not args.no_cache}
    check_options({**cfg_args, "seed": args.seed})
    GenerationConfig(**cfg_args, seed=args.seed)  # every option checked before the model loads
    pred = load(args.model, device=args.device)  # .generate says what is wrong with a non-LM
    if pred.is_seq2seq and not args.prompt:
        raise ZeroLMError(f"{args.model} is an encoder-decoder: it writes a target for a source; give the "
                          "source with --prompt")
    if pred.is_seq2seq and pred.meta.get("task") == "seq2seq":
        cfg_args = given  # decoded as fine-tuned (task.json) but for what the command line says
    prompts = args.prompt or [""]
    for i in range(args.num_samples):
        seed = None if args.seed is None else args.seed + i
        texts = pred.generate(prompts, **cfg_args, seed=seed)
        for j, (prompt, text) in enumerate(zip(prompts, texts)):
            if args.num_samples > 1 or len(prompts) > 1:
                print(f"--- sample {i + 1}" + (f", prompt {j + 1}" if len(prompts) > 1 else ""))
            # the whole sample and its newline in one write, flushed, so a log line printed
            # later to stderr never lands on the same line as the text; a causal LM's text
            # goes on from its prompt, an encoder-decoder's target stands alone
            sys.stdout.write(("" if pred.is_seq2seq else prompt) + text + "\n")
            sys.stdout.flush()
    return 0


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def check_options(values: dict) -> None:
    """Check each generation option given on the command line as GenerationConfig checks
    it, so that an error names the option as typed (`--num-beams must be ...`)."""
    from zerolm.errors import ConfigError
    from zerolm.generate import GenerationConfig

    for name, value in values.items():
        try:
            GenerationConfig(**{name: value})
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(flag(name) + msg[len(name):] if msg.startswith(name) else f"{flag(name)}: {msg}") \
                from None


def add_seq2seq_decoding_options(p) -> None:
    """The options that override how a fine-tuned seq2seq model decodes (`predict`, `eval`)."""
    g = p.add_argument_group("sequence-to-sequence decoding (a fine-tuned seq2seq model; default: as it "
                             "was fine-tuned, see its task.json)")
    g.add_argument("--num-beams", type=int, default=None, metavar="N", help="beam search with N beams (1: greedy)")
    g.add_argument("--length-penalty", type=float, default=None, metavar="X",
                   help="beam search: a target scores log p / length ** X (> 0 favours longer ones)")
    g.add_argument("--no-repeat-ngram-size", type=int, default=None, metavar="N",
                   help="never repeat an n-gram of N tokens (0: off)")
    g.add_argument("--max-new-tokens", type=int, default=None, metavar="N", help="target tokens to write at most")


def seq2seq_decoding(args) -> dict:
    """The decoding options given on the command line ({} when none: decode as
    fine-tuned), each checked before the model loads."""
    from zerolm.errors import ConfigError

    given = {k: getattr(args, k) for k in SEQ2SEQ_DECODING if getattr(args, k) is not None}
    check_options(given)
    if given.get("max_new_tokens") == 0:
        raise ConfigError("--max-new-tokens must be >= 1 (0 would write empty targets)")
    return given


def apply_seq2seq_decoding(args, pred, given: dict) -> None:
    """Set the decoding options `given` on the loaded model `pred`, or say why they do not
    apply to it."""
    from zerolm.errors import ConfigError

    if given and pred.meta.get("task") != "seq2seq":
        raise ConfigError(f"{', '.join(flag(k) for k in given)}: decoding options of a fine-tuned "
                          f"sequence-to-sequence model, but {args.model} is {pred.kind}; leave them out")
    pred.set_decoding(**given)  # builds the generation config once: nothing starts with a bad one
