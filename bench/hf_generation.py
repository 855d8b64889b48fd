"""Greedy generation, zerolm (KV cache) vs Hugging Face `generate`, same GPT-2 weights.

The weights are a Hugging Face GPT-2 checkpoint (default: GPT-2-small shape, 124M, random
init with a fixed seed; or `--hf-model DIR` / `--zerolm-model DIR`, exported to HF first),
loaded into zerolm through zerolm.convert. Both decode 256 new tokens greedily from the
same prompt; the tokens must be identical. Medians over repetitions, alternating.

    python bench/hf_generation.py [--new 256] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import emit, environment
from zerolm.convert.hf import export_hf, load_hf
from zerolm.generate import GenerationConfig, generate_ids


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--prompt-len", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--hf-model", help="a local HF GPT-2 directory")
    ap.add_argument("--zerolm-model", help="a zerolm GPT directory (exported to HF for the peer)")
    args = ap.parse_args()
    import transformers

    torch.manual_seed(0)
    tmp = Path(tempfile.mkdtemp())
    if args.hf_model:
        hf_dir = Path(args.hf_model)
    elif args.zerolm_model:
        from zerolm.loading import load_model

        m, tok = load_model(args.zerolm_model)
        hf_dir = export_hf(m, tmp / "hf", tokenizer=tok)
    else:
        cfg = transformers.GPT2Config(n_embd=768, n_layer=12, n_head=12, vocab_size=50257, n_positions=1024)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp / "hf")
        hf_dir = tmp / "hf"
    hf = transformers.GPT2LMHeadModel.from_pretrained(hf_dir).eval()
    ours, _ = load_hf(hf_dir)
    prompt = torch.randint(0, hf.config.vocab_size, (1, args.prompt_len))
    gcfg = GenerationConfig(max_new_tokens=args.new, greedy=True, stop_at_eos=False)

    def run_ours():
        return generate_ids(ours, prompt, gcfg)[0]

    def run_hf():
        with torch.inference_mode():
            out = hf.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=args.new,
                              min_new_tokens=args.new, do_sample=False, pad_token_id=0, eos_token_id=None)
        return out[0, args.prompt_len:]

    run_ours(), run_hf()  # warm-up
    t_o, t_h = [], []
    for _ in range(args.repeats):
        for fn, ts in ((run_ours, t_o), (run_hf, t_h)):
            t = time.perf_counter()
            toks = fn()
            ts.append(time.perf_counter() - t)
            if fn is run_ours:
                a = toks
            else:
                b = toks
    same = torch.equal(a, b)
    first_diff = None if same else int((a != b).nonzero()[0])
    mo, mh = statistics.median(t_o), statistics.median(t_h)
    n_params = sum(p.numel() for p in ours.parameters())
    emit([["zerolm (KV cache)", f"{args.new / mo:,.1f}", f"{mo:.2f}"],
          ["HF generate", f"{args.new / mh:,.1f}", f"{mh:.2f}"]],
         ["decoder", "tokens/s", "seconds"],
         {"bench": "hf_generation", "params": n_params, "new_tokens": args.new,
          "zerolm_tokens_per_s": args.new / mo, "hf_tokens_per_s": args.new / mh, "ratio": mh / mo,
          "identical_tokens": same, "first_difference": first_diff, "env": environment()})


if __name__ == "__main__":
    main()
