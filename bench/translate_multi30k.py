"""Multi30k English -> German translation with zerolm's T5 (issue 16), on 2 CPU cores.

Runs (each reused when a finished one is in --out; a warning lists the settings in which
it differs from what the command asks):
- `scratch`: configs/multi30k_t5.yaml, the 6 + 6-layer width-256 T5 trained from random
  weights (its unigram tokenizer is trained first, on the training pairs);
- `span`: configs/multi30k_t5_span.yaml, the same model pretrained by span corruption on
  both sides of the training pairs, WikiText-2 (valid) and tiny Shakespeare, with the
  scratch run's tokenizer;
- `pretrained`: configs/multi30k_t5.yaml from `span`'s weights on the scratch run's exact
  schedule (learning rate decayed over its steps, same data order), stopped after
  --compare-steps: its evaluations and the scratch run's at the same steps compare the two
  at equal fine-tuning steps.

Then, on the 1,014 dev pairs, with the scratch run's best model:
- dev BLEU (sacrebleu's definition, zerolm.eval.overlap) of greedy decoding and of beam
  search (--beams, length penalty --length-penalty), against the raw references;
- throughput of batched beam search, zerolm against Hugging Face `generate` on the same
  weights (exported with zerolm.convert.hf.export_hf), same sources, batch, beams and
  max_new_tokens; tokens/s counts each output's tokens up to its end-of-text, median of
  --repeats runs; and how often the two return the same target;
- `zerolm compress --method int8-dynamic` of that model (every linear of both stacks):
  dev BLEU greedy and with beams, weight bytes, and decoding tokens/s against fp32;
- `zerolm export onnx --int8` of that model: dev BLEU and decoding tokens/s of the fp32
  and int8 graphs.

    python bench/translate_multi30k.py [--out runs/bench_multi30k] [--compare-steps 1500]
        [--beams 4] [--length-penalty 1.0] [--skip short,span] [--threads 2]

Targets: scratch dev BLEU >= 30 within 2 hours of training; pretrained > scratch at equal
steps; beam > greedy; beam tokens/s >= 1.0x Hugging Face's.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

import torch
import yaml

from common import emit, environment, median_time
from zerolm.config import FinetuneConfig, RunConfig, dump_config, load_config
from zerolm.train.finetune import finetune
from zerolm.train.pretrain import pretrain

REPO = Path(__file__).resolve().parents[1]
TRANSLATE = REPO / "configs/multi30k_t5.yaml"
SPAN = REPO / "configs/multi30k_t5_span.yaml"
DEV = "multi30k/dev.tsv"


def ended(run: Path) -> bool:
    """The run in this directory ran to its end (not interrupted)."""
    state = run / "run.json"
    return state.exists() and json.loads(state.read_text()).get("status") != "interrupted"


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out |= _flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def check_reused(out: Path, cfg) -> None:
    """Say which settings of a reused run differ from the ones this command asks for (a
    finished run is kept as it is; delete it, or choose another --out, to rerun it)."""
    saved = out / "config.yaml"
    if not saved.exists():
        return
    old, new = _flat(yaml.safe_load(saved.read_text())), _flat(yaml.safe_load(dump_config(cfg)))
    changed = [f"{k} ({old.get(k)!r} there, {new.get(k)!r} asked)" for k in sorted(set(old) | set(new))
               if k not in ("out_dir", "train.progress") and old.get(k) != new.get(k)]
    if changed:
        logging.warning("%s: reusing a run whose settings differ from this command's: %s", out, "; ".join(changed))


def finetuned(out: Path, overrides: list[str]) -> dict:
    """Fine-tune once (a finished run in `out` is reused, an unfinished one resumed);
    its eval.json."""
    cfg = load_config(TRANSLATE, [f"out_dir={out}", "train.progress=false", *overrides], cls=FinetuneConfig)
    check_reused(out, cfg)
    if not (ended(out) and (out / "eval.json").exists()):
        t = time.time()
        finetune(cfg, resume=(out / "checkpoints").is_dir())
        logging.info("%s: fine-tuned in %.0f s", out.name, time.time() - t)
    return json.loads((out / "eval.json").read_text())


def pretrained(out: Path, tokenizer: Path, overrides: list[str]) -> Path:
    """Span-corruption pretraining once; its final model directory."""
    cfg = load_config(SPAN, [f"out_dir={out}", f"tokenizer.path={tokenizer}", "train.progress=false",
                             *overrides], cls=RunConfig)
    check_reused(out, cfg)
    if not ended(out):
        t = time.time()
        pretrain(cfg, resume=(out / "checkpoints").is_dir())
        logging.info("%s: pretrained in %.0f s", out.name, time.time() - t)
    return out / "final"


def val_curve(run: Path) -> dict[int, dict]:
    """The evaluations of a run's metrics.jsonl, by step."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rows if "val_bleu" in r}


def dev_bleu(model_dir: Path, **decoding) -> dict:
    """The dev report of a fine-tuned model with these decoding settings."""
    import zerolm

    pred = zerolm.load(model_dir)
    pred.set_decoding(**decoding)
    t = time.perf_counter()
    report = pred.evaluate(DEV, batch_size=64)
    report["eval_s"] = time.perf_counter() - t
    return report


def _kept(row: list[int], eos: int) -> list[int]:
    return row[:row.index(eos) + 1] if eos in row else row


@torch.no_grad()
def beam_throughput(model_dir: Path, out: Path, *, beams: int, length_penalty: float, n: int, batch: int,
                    max_new: int, repeats: int) -> dict:
    """Tokens/s of batched beam search, zerolm and Hugging Face on the same weights."""
    import transformers

    import zerolm
    from zerolm.convert.hf import export_hf
    from zerolm.generate import generate_seq2seq

    pred = zerolm.load(model_dir)
    tok, model = pred.tokenizer, pred.model.eval()
    hf_dir = out / "hf_export"
    if not (hf_dir / "config.json").exists():
        export_hf(model, hf_dir, tokenizer=tok)
    hf = transformers.T5ForConditionalGeneration.from_pretrained(hf_dir).eval()
    sources, _ = pred.task.read_inputs(DEV)
    sources = sources[:n]
    batches = []
    for s in range(0, len(sources), batch):
        enc = tok.pad(tok.encode_batch(sources[s:s + batch])["input_ids"])
        batches.append((enc["input_ids"], enc["attention_mask"]))
    eos, pad = tok.eos_id, tok.pad_id or 0
    cfg = pred.task.generation_config(num_beams=beams, length_penalty=length_penalty, max_new_tokens=max_new)

    def ours():
        return [generate_seq2seq(model, i, cfg, attention_mask=m, eos_id=eos, pad_id=pad) for i, m in batches]

    def theirs():
        return [hf.generate(input_ids=i, attention_mask=m, num_beams=beams, length_penalty=length_penalty,
                            max_new_tokens=max_new, do_sample=False, eos_token_id=eos, pad_token_id=pad,
                            decoder_start_token_id=pad)[:, 1:] for i, m in batches]

    a, b = ours(), theirs()  # warm-up, and the outputs compared
    rows_a = [_kept(r, eos) for t in a for r in t.tolist()]
    rows_b = [_kept(r, eos) for t in b for r in t.tolist()]
    tokens = sum(len(r) for r in rows_a)
    tokens_hf = sum(len(r) for r in rows_b)
    t_ours = median_time(ours, repeats)
    t_hf = median_time(theirs, repeats)
    return {"sources": len(sources), "batch": batch, "beams": beams, "length_penalty": length_penalty,
            "max_new_tokens": max_new, "tokens": tokens, "tokens_hf": tokens_hf,
            "zerolm_s": t_ours, "hf_s": t_hf, "zerolm_tok_s": tokens / t_ours, "hf_tok_s": tokens_hf / t_hf,
            "ratio": (tokens / t_ours) / (tokens_hf / t_hf),
            "same_output": sum(x == y for x, y in zip(rows_a, rows_b)) / len(rows_a)}


@torch.no_grad()
def decode_speed(model_dir: Path, *, n: int, batch: int, repeats: int, **decoding) -> dict:
    """Tokens/s of batched decoding (greedy or beams) of the first n dev sources by the
    model in `model_dir` (any directory zerolm.load takes), batches of `batch`."""
    import zerolm
    from zerolm.generate import generate_seq2seq

    pred = zerolm.load(model_dir)
    tok = pred.tokenizer
    sources, _ = pred.task.read_inputs(DEV)
    batches = []
    for s in range(0, min(n, len(sources)), batch):
        enc = tok.pad(tok.encode_batch(sources[s:s + batch])["input_ids"])
        batches.append((enc["input_ids"], enc["attention_mask"]))
    cfg = pred.task.generation_config(**decoding)
    eos, pad = tok.eos_id, tok.pad_id or 0

    def run():
        return [generate_seq2seq(pred.model, i, cfg, attention_mask=m, eos_id=eos, pad_id=pad) for i, m in batches]

    tokens = sum(len(_kept(r, eos)) for t in run() for r in t.tolist())  # also the warm-up
    seconds = median_time(run, repeats)
    return {"tokens": tokens, "seconds": seconds, "tok_s": tokens / seconds}


def int8_variant(best: Path, out: Path, args) -> dict:
    """`zerolm compress --method int8-dynamic` of the scratch model: dev BLEU (greedy and
    beams), weight bytes, and decoding tokens/s against the fp32 model, same sources."""
    from zerolm.cli.main import main as cli
    from zerolm.compress.save import weight_bytes

    q = out / "int8"
    if weight_bytes(q) is None:
        assert cli(["compress", str(best), "--method", "int8-dynamic", "--out", str(q), "--overwrite"]) == 0
    result = {"bytes_fp32": weight_bytes(best), "bytes_int8": weight_bytes(q)}
    for name, d in (("fp32", best), ("int8", q)):
        for label, dec in (("greedy", {"num_beams": 1}),
                           ("beam", {"num_beams": args.beams, "length_penalty": args.length_penalty})):
            if name == "int8":
                result[f"bleu_{label}_int8"] = dev_bleu(d, **dec)["bleu"]
            result[f"tok_s_{label}_{name}"] = decode_speed(d, n=args.speed_sources, batch=32,
                                                           repeats=args.repeats, max_new_tokens=80, **dec)["tok_s"]
    return result


def onnx_variant(best: Path, out: Path, args) -> dict:
    """`zerolm export onnx --int8` of the scratch model: dev BLEU (greedy and beams) and
    decoding tokens/s of the fp32 and int8 graphs (onnxruntime, --threads threads)."""
    from zerolm.cli.main import main as cli

    d = out / "onnx"
    if not (d / "onnx.json").exists():
        assert cli(["export", "onnx", str(best), "--out", str(d), "--int8", "--overwrite"]) == 0
    result = {}
    for name, graph in (("fp32", d), ("int8", d / "decoder.int8.onnx")):
        for label, dec in (("greedy", {"num_beams": 1}),
                           ("beam", {"num_beams": args.beams, "length_penalty": args.length_penalty})):
            result[f"bleu_{label}_{name}"] = dev_bleu(graph, **dec)["bleu"]
            result[f"tok_s_{label}_{name}"] = decode_speed(graph, n=args.speed_sources, batch=32,
                                                           repeats=args.repeats, max_new_tokens=80, **dec)["tok_s"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/bench_multi30k")
    ap.add_argument("--compare-steps", type=int, default=1500,
                    help="fine-tuning steps of the pretrained run (its schedule is the scratch run's)")
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--length-penalty", type=float, default=1.0)
    ap.add_argument("--skip", default="",
                    help="comma-separated parts to skip: span, short, beam, speed, int8, onnx")
    ap.add_argument("--speed-sources", type=int, default=256, help="dev sources timed for tokens/s")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("overrides", nargs="*", help="config overrides a.b=c for every fine-tuning run")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    out = Path(args.out)
    t0 = time.time()
    record: dict = {"env": environment()}
    threads = f"train.threads={args.threads}"

    scratch = finetuned(out / "scratch", [threads, *args.overrides])
    record["scratch"] = {k: scratch.get(k) for k in ("bleu", "rouge1", "rouge2", "rougeL", "loss", "steps",
                                                     "train_s", "wall_s", "decoding")}
    rows = [["scratch (greedy)", scratch["steps"], f"{scratch['bleu']:.2f}", f"{scratch['train_s'] / 60:.1f} min"]]
    best = out / "scratch" / "best"
    if "beam" not in skip:
        greedy = dev_bleu(best, num_beams=1)
        beam = dev_bleu(best, num_beams=args.beams, length_penalty=args.length_penalty)
        record["greedy"] = {k: greedy[k] for k in ("bleu", "rouge1", "rouge2", "rougeL", "eval_s")}
        record["beam"] = {k: beam[k] for k in ("bleu", "rouge1", "rouge2", "rougeL", "eval_s")}
        rows += [["scratch, greedy (re-scored)", "", f"{greedy['bleu']:.2f}", ""],
                 [f"scratch, beam {args.beams} lp {args.length_penalty:g}", "", f"{beam['bleu']:.2f}", ""]]
    if "speed" not in skip:
        record["speed"] = beam_throughput(best, out, beams=args.beams, length_penalty=args.length_penalty,
                                          n=args.speed_sources, batch=32, max_new=80, repeats=args.repeats)
    if "int8" not in skip:
        q = record["int8"] = int8_variant(best, out, args)
        rows += [["scratch, int8-dynamic, greedy", "", f"{q['bleu_greedy_int8']:.2f}", ""],
                 [f"scratch, int8-dynamic, beam {args.beams}", "", f"{q['bleu_beam_int8']:.2f}", ""]]
    if "onnx" not in skip:
        o = record["onnx"] = onnx_variant(best, out, args)
        rows += [["scratch, ONNX fp32, greedy / beam", "", f"{o['bleu_greedy_fp32']:.2f} / {o['bleu_beam_fp32']:.2f}",
                  ""],
                 ["scratch, ONNX int8, greedy / beam", "", f"{o['bleu_greedy_int8']:.2f} / {o['bleu_beam_int8']:.2f}",
                  ""]]
    if "span" not in skip:
        span = pretrained(out / "span", out / "scratch" / "tokenizer", [threads])
        evals = [json.loads(line) for line in (out / "span" / "metrics.jsonl").read_text().splitlines()]
        record["span"] = [{k: r[k] for k in ("step", "val_loss", "val_accuracy") if k in r}
                          for r in evals if "val_loss" in r]
        if "short" not in skip:
            # the pretrained model on the scratch run's exact schedule (decay over its steps,
            # same data order and seed), stopped after --compare-steps: each of its evaluations
            # meets the scratch run's at the same step
            n = args.compare_steps
            total = scratch["planned_steps"]
            short_p = finetuned(out / "pretrained", [threads, f"init={span}", f"train.max_steps={n}",
                                                      f"schedule.decay_steps={total}", *args.overrides])
            curve_s, curve_p = val_curve(out / "scratch"), val_curve(out / "pretrained")
            steps = sorted(set(curve_s) & set(curve_p))
            record["compare"] = {"steps": steps, "scratch_bleu": [curve_s[k]["val_bleu"] for k in steps],
                                 "pretrained_bleu": [curve_p[k]["val_bleu"] for k in steps],
                                 "scratch_loss": [curve_s[k]["val_loss"] for k in steps],
                                 "pretrained_loss": [curve_p[k]["val_loss"] for k in steps],
                                 "pretrained_best_bleu": short_p["bleu"]}
            for k in steps:
                rows.append([f"step {k}: scratch / span-pretrained", k,
                             f"{curve_s[k]['val_bleu']:.2f} / {curve_p[k]['val_bleu']:.2f}", ""])
    record["wall_s"] = time.time() - t0
    emit(rows, ["run", "steps", "dev BLEU", "train time"], record)
    if "speed" in record:
        s = record["speed"]
        print(f"beam {s['beams']} tokens/s: zerolm {s['zerolm_tok_s']:.0f}, HF generate {s['hf_tok_s']:.0f} "
              f"({s['ratio']:.2f}x); same target for {100 * s['same_output']:.1f}% of {s['sources']} sources")
    if "onnx" in record:
        o = record["onnx"]
        print("ONNX tokens/s: " + ", ".join(f"{k[6:]} {v:.0f}" for k, v in o.items() if k.startswith("tok_s_")))
    if "int8" in record:
        q = record["int8"]
        print(f"int8-dynamic: weights {q['bytes_fp32'] / 1e6:.1f} -> {q['bytes_int8'] / 1e6:.1f} MB "
              f"({q['bytes_fp32'] / q['bytes_int8']:.2f}x smaller); tokens/s greedy {q['tok_s_greedy_fp32']:.0f} -> "
              f"{q['tok_s_greedy_int8']:.0f} ({q['tok_s_greedy_int8'] / q['tok_s_greedy_fp32']:.2f}x), beam "
              f"{q['tok_s_beam_fp32']:.0f} -> {q['tok_s_beam_int8']:.0f} "
              f"({q['tok_s_beam_int8'] / q['tok_s_beam_fp32']:.2f}x)")


if __name__ == "__main__":
    main()
