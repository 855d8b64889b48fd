"""How long does a small BERT sit on the masked-LM plateau, and what shortens it?

A synthetic task that can only be solved through attention: every token appears twice in
a row (a a b b c c ...), and the second copy of one pair per sequence is masked. A model
that attends to its left neighbour predicts it exactly; one that does not is stuck at
log(vocab) nats. Small post-LN BERTs initialised with std 0.02 stay on that plateau for a
long time (Hugging Face's BertForMaskedLM as much as zerolm's), the same plateau a real
MLM run sits on at ~unigram loss. The script reports the mean loss per window of steps
for each setting, so the effect of init scale, dropout and learning rate is visible in a
minute of CPU.

    python bench/mlm_plateau.py                 # zerolm, several settings
    python bench/mlm_plateau.py --hf            # plus HF BertForMaskedLM at std 0.02, and
                                                # zerolm started from HF's initial weights
"""

from __future__ import annotations

import argparse
import math
import tempfile

import torch
import torch.nn.functional as F

from zerolm.models.bert import BertForPreTraining
from zerolm.models.config import ModelConfig

VOCAB, PAIRS, BATCH, MASK_ID, FIRST_ID = 200, 16, 32, 1, 5


def batch(gen: torch.Generator):
    a = torch.randint(FIRST_ID, VOCAB, (BATCH, PAIRS), generator=gen)
    x = torch.stack([a, a], 2).reshape(BATCH, 2 * PAIRS)  # each token twice in a row
    sel = torch.zeros_like(x, dtype=torch.bool)
    sel[torch.arange(BATCH), torch.randint(0, PAIRS, (BATCH,), generator=gen) * 2 + 1] = True
    inp = x.clone()
    inp[sel] = MASK_ID
    return inp, sel, x[sel]


def train(make_logits, params, steps: int, lr: float, seed: int) -> list[float]:
    # A bare AdamW loop, not zerolm's Trainer: it drives HF's model and zerolm's the same
    # way, so the only difference between two rows is the model (or its initial weights).
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        inp, sel, target = batch(gen)
        loss = F.cross_entropy(make_logits(inp, sel), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def zerolm_model(init_std, dropout, seed):
    torch.manual_seed(seed)
    cfg = ModelConfig(family="bert", vocab_size=VOCAB, d_model=64, n_layers=2, n_heads=2, d_ff=128,
                      max_seq_len=2 * PAIRS, dropout=dropout, attn_dropout=dropout, init_std=init_std)
    return BertForPreTraining(cfg)


def hf_model(init_std, dropout, seed):
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=128, max_position_embeddings=2 * PAIRS, initializer_range=init_std,
                     hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    return BertForMaskedLM(cfg)


def zerolm_run(steps, lr, init_std, dropout, seed):
    m = zerolm_model(init_std, dropout, seed)
    return train(lambda inp, sel: m(inp, mlm_positions=sel).mlm_logits, m.parameters(), steps, lr, seed)


def hf_run(steps, lr, init_std, dropout, seed):
    m = hf_model(init_std, dropout, seed)
    return train(lambda inp, sel: m(input_ids=inp).logits[sel], m.parameters(), steps, lr, seed)


def zerolm_hf_init_run(steps, lr, init_std, dropout, seed):
    """zerolm's model started from HF's initial weights (saved and converted the way
    `zerolm` loads any HF checkpoint): the same curve as hf_run if the two agree."""
    from zerolm.convert.hf import load_hf

    with tempfile.TemporaryDirectory() as d:
        hf_model(init_std, dropout, seed).save_pretrained(d)
        m, _ = load_hf(d)
    m.train()
    return train(lambda inp, sel: m(inp, mlm_positions=sel).mlm_logits, m.parameters(), steps, lr, seed)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--window", type=int, default=300)
    ap.add_argument("--hf", action="store_true", help="also run HF BertForMaskedLM (std 0.02)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    settings = [("zerolm", 1e-3, 0.02, 0.1), ("zerolm", 1e-3, 0.02, 0.0), ("zerolm", 3e-3, 0.02, 0.0),
                ("zerolm", 1e-3, 0.05, 0.1), ("zerolm", 1e-3, 0.1, 0.1)]
    if args.hf:
        settings[1:1] = [("hf", 1e-3, 0.02, 0.1), ("hf", 1e-3, 0.02, 0.0), ("zerolm (HF init)", 1e-3, 0.02, 0.0)]
    print(f"plateau = ln({VOCAB - FIRST_ID}) = {math.log(VOCAB - FIRST_ID):.2f} nats; mean loss per "
          f"{args.window} steps")
    print("| model | lr | init std | dropout | " + " | ".join(
        f"{i}-{i + args.window}" for i in range(0, args.steps, args.window)) + " |")
    print("|---|---|---|---|" + "---|" * len(range(0, args.steps, args.window)))
    for name, lr, std, drop in settings:
        run = {"zerolm": zerolm_run, "hf": hf_run, "zerolm (HF init)": zerolm_hf_init_run}[name]
        losses = run(args.steps, lr, std, drop, args.seed)
        windows = [sum(losses[i:i + args.window]) / len(losses[i:i + args.window])
                   for i in range(0, args.steps, args.window)]
        print(f"| {name} | {lr:g} | {std:g} | {drop:g} | " + " | ".join(f"{w:.2f}" for w in windows) + " |",
              flush=True)


if __name__ == "__main__":
    main()
