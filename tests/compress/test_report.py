"""`zerolm compress MODEL --report --variants ...`: one table (report.md, report.json) and one
plot of every variant against the original, PyTorch and ONNX alike, and its refusals."""

from __future__ import annotations

import json

import pytest

from zerolm.cli.main import main

DEV = "pkg:quickstart/reviews_dev.tsv"


@pytest.fixture
def variants(classifier, tmp_path):
    """An int8-dynamic directory, a pruned one, and an ONNX export (fp32 + int8 graphs)."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    import zerolm
    from zerolm.export import export_onnx

    made = {}
    for name, args in (("int8", ["--method", "int8-dynamic"]), ("ffn", ["--method", "prune-ffn", "--fraction", "0.5"])):
        made[name] = tmp_path / name
        assert main(["compress", str(classifier), *args, "--out", str(made[name])]) == 0
    pred = zerolm.load(classifier)
    made["onnx"] = tmp_path / "onnx"
    export_onnx(pred.model, made["onnx"], tokenizer=pred.tokenizer, meta=pred.meta, source=str(classifier), int8=True)
    return made


def test_the_report_has_one_row_per_variant_onnx_and_int8_included(classifier, variants, tmp_path, capsys):
    out = tmp_path / "report"
    onnx_int8 = variants["onnx"] / "model.int8.onnx"
    code = main(["compress", str(classifier), "--report", "--variants", f"int8={variants['int8']}",
                 str(variants["ffn"]), str(variants["onnx"]), str(onnx_int8), "--data", DEV, "--out", str(out),
                 "--threads", "1", "--repeats", "2"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert sorted(p.name for p in out.iterdir()) == ["report.json", "report.md", "report.png"]
    report = json.loads((out / "report.json").read_text())
    rows = {r["name"]: r for r in report["rows"]}
    assert list(rows) == ["original", "int8", "ffn", "onnx", "onnx/model.int8.onnx"]
    assert report["metric"] == "accuracy" and report["batch_sizes"] == [1, 32] and report["threads"] == 1
    assert [rows[n]["method"] for n in rows] == ["original", "int8-dynamic", "prune-ffn", "onnx fp32", "onnx int8"]
    assert rows["onnx"]["backend"] == "onnxruntime" and rows["int8"]["backend"] == "pytorch"
    # the ONNX fp32 graph is the original's: same predictions, same parameter count (its
    # initializers), and its size counts one graph, not the int8 one beside it
    assert rows["onnx"]["score"] == rows["original"]["score"] and rows["onnx"]["change"] == 0
    assert rows["onnx"]["parameters"] == pytest.approx(rows["original"]["parameters"], rel=0.02)
    assert rows["onnx"]["bytes"] < (variants["onnx"] / "model.onnx").stat().st_size + 1e6
    assert rows["int8"]["bytes"] < 0.5 * rows["original"]["bytes"]
    assert rows["ffn"]["parameters"] < rows["original"]["parameters"]
    for r in report["rows"]:
        assert len(r["ms"]) == 2 and all(ms > 0 for ms in r["ms"]) and r["speedup"][0] > 0
        assert r["change"] == pytest.approx(r["score"] - rows["original"]["score"])
    assert rows["original"]["speedup"] == [1.0, 1.0]
    table = (out / "report.md").read_text()
    assert len([ln for ln in table.splitlines() if ln.startswith("| ")]) == 1 + 5  # header + one row each
    assert "| int8 | int8-dynamic | pytorch |" in table and "onnx/model.int8.onnx | onnx int8 | onnxruntime" in table
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args, message", [
    (["--report", "--data", DEV], "--report needs --variants"),
    (["--report", "--variants", "x"], "--report needs --data DEV"),
    (["--report", "--method", "prune-ffn", "--variants", "x", "--data", DEV], "run them as two commands"),
    (["--report", "--variants", "nowhere", "--data", DEV], "--variants nowhere: nowhere does not exist"),
    (["--variants", "x"], "give --method METHOD"),
])
def test_report_refusals_write_nothing(args, message, classifier, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["compress", str(classifier), *args, "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_model_compressed_twice_is_labelled_by_every_step(classifier, tmp_path):
    from zerolm.compress.report import _method
    from zerolm.compress.save import read_record

    ffn, both = tmp_path / "ffn", tmp_path / "both"
    assert main(["compress", str(classifier), "--method", "prune-ffn", "--fraction", "0.5", "--out", str(ffn)]) == 0
    assert main(["compress", str(ffn), "--method", "int8-dynamic", "--out", str(both)]) == 0
    record = read_record(both)
    assert record["method"] == "int8-dynamic" and record["previous"]["method"] == "prune-ffn"
    assert _method(both, object()) == "prune-ffn -> int8-dynamic"
