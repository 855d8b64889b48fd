"""`zerolm export`: write a finished model for another runtime (ONNX)."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "export", "export a model to ONNX (onnxruntime), checked against PyTorch",
                 "zerolm export onnx runs/sst2_minilm/best --out runs/sst2_onnx --int8\n"
                 "  zerolm predict runs/sst2_onnx --input sst2/dev.tsv --output preds.tsv",
                 description="Export a classifier or tagger with its head, a plain encoder (last hidden "
                             "state), a causal LM with KV-cache inputs and outputs, or an encoder-decoder "
                             "LM (T5, pretrained or fine-tuned seq2seq: encoder, cross-attention memory and "
                             "decoder-step graphs) to ONNX, with dynamic batch and sequence axes. The graph "
                             "is run with onnxruntime against PyTorch at several (batch, length) shapes, "
                             "batch 1 and length 1 among them (and several cached past lengths for LMs); "
                             "when the outputs differ by more than 1e-4 the export fails and nothing is "
                             "written. The directory holds the graph(s), onnx.json (kind, files, inputs, "
                             "outputs, checks), the model config, task.json and the tokenizer: zerolm "
                             "predict, eval, generate and zerolm.load take it (DIR/model.int8.onnx, or for "
                             "T5 any of its .int8.onnx graphs, picks the int8 graphs).")
    p.add_argument("format", choices=["onnx"], help="the format to write")
    p.add_argument("model", help="model directory (a fine-tuned run's best/, a zerolm or Hugging Face "
                                 "directory, python:PACKAGE)")
    p.add_argument("--out", required=True, help="directory to write (must be new or empty)")
    p.add_argument("--int8", action="store_true",
                   help="also write model.int8.onnx (T5: each graph's .int8.onnx), dynamically quantized "
                        "by onnxruntime (int8 weights, activations quantized on the fly), checked for "
                        "agreeing predictions")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset version (default: 17)")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    p.set_defaults(func=run)


def run(args) -> int:
    import zerolm
    from zerolm.export.onnx import export_onnx

    pred = zerolm.load(args.model)
    manifest = export_onnx(pred.model, args.out, tokenizer=pred.tokenizer, meta=pred.meta, int8=args.int8,
                           opset=args.opset, overwrite=args.overwrite, source=str(args.model))
    par = manifest["parity"]
    shapes = ", ".join(f"{c['batch']}x{c['length']}" + (f"+{c['past']}" if c.get("past") else "")
                       + (f" (source {c['source']})" if "source" in c else "") for c in par["cases"])
    print(f"{manifest['kind']}: ONNX matches PyTorch within {par['max_abs_diff']:.2g} "
          f"(<= {par['atol']:g}) at batch x length{' + past' if 'past' in par['cases'][0] else ''} {shapes}")
    if "int8" in manifest:
        q = manifest["int8"]
        print(f"int8: {q['fp32_bytes'] / 1e6:.2f} MB -> {q['bytes'] / 1e6:.2f} MB, "
              f"{q['agreement']:.1%} of predictions unchanged on the check inputs")
    print(f"wrote {args.out}  (zerolm predict {args.out} --input FILE --output PREDS.tsv)")
    return 0
