"""A fine-tuned encoder-decoder (T5) from the command line: `zerolm eval` and `zerolm
predict` decode as the options say (beam size, length penalty, ...) and report how;
`zerolm generate` and `zerolm.load(...).generate` write the target of a source; options
that do not apply to a model are refused, naming the option and the model."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

import zerolm
from zerolm.cli.main import main

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny"
DEV = REPO / "src" / "zerolm" / "resources" / "quickstart" / "translate_dev.tsv"
SOURCE = "A man is eating in the snow."


@pytest.fixture(scope="module")
def translator(tmp_path_factory) -> Path:
    """The tiny English -> German model, fine-tuned briefly (enough to write German-ish
    targets that end; the tests compare decodings, not their quality)."""
    out = tmp_path_factory.mktemp("s2s") / "run"
    assert main(["finetune", str(TINY / "seq2seq_translate.yaml"), f"out_dir={out}", "train.max_steps=40",
                 "train.progress=false"]) == 0
    return out / "best"


@pytest.fixture(scope="module")
def classifier(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clf") / "run"
    assert main(["finetune", str(TINY / "classify_reviews.yaml"), f"out_dir={out}", "train.max_steps=2",
                 "train.progress=false"]) == 0
    return out / "best"


def _sources() -> list[str]:
    with open(DEV, encoding="utf-8", newline="") as f:
        return [row["en"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]


def test_eval_with_beams_reports_the_decoding_it_used(translator, capsys, tmp_path):
    capsys.readouterr()
    assert main(["eval", str(translator), "--input", str(DEV), "--num-beams", "3", "--length-penalty", "0.6",
                 "--max-new-tokens", "12", "--json", "--out", str(tmp_path / "ev")]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["decoding"] == {"num_beams": 3, "length_penalty": 0.6, "no_repeat_ngram_size": 0,
                               "max_new_tokens": 12}
    assert 0 <= got["bleu"] <= 100 and "rougeL" in got
    written = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert written["decoding"]["num_beams"] == 3 and written["generated"] == len(_sources())
    # without options: as fine-tuned (greedy), said in the text report
    assert main(["eval", str(translator), "--input", str(DEV)]) == 0
    text = capsys.readouterr().out
    assert "BLEU" in text and "greedy" in text
    assert "decoding: num_beams 1, length_penalty 1.0, no_repeat_ngram_size 0, max_new_tokens 32" in text


def test_predict_with_beams_writes_what_load_generate_writes(translator, tmp_path):
    out = tmp_path / "pred.tsv"
    assert main(["predict", str(translator), "--input", str(DEV), "--output", str(out), "--num-beams", "2",
                 "--max-new-tokens", "10"]) == 0
    with open(out, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    assert list(rows[0]) == ["en", "de", "pred_de"] and [r["en"] for r in rows] == _sources()
    # the library, told the same, writes the same targets (batched, in order)
    lib = zerolm.load(translator).generate(_sources(), num_beams=2, max_new_tokens=10)
    assert [r["pred_de"] for r in rows] == [t.replace("\t", " ") for t in lib]
    assert sum(bool(t) for t in lib) > len(lib) // 2


def test_load_generate_writes_targets_decoded_as_fine_tuned_by_default(translator):
    pred = zerolm.load(translator)
    beams = pred.generate([SOURCE], num_beams=2)
    assert isinstance(beams, list) and len(beams) == 1 and isinstance(beams[0], str)
    assert pred.generate(SOURCE, num_beams=2) == beams  # one source: a list of one
    # no options: greedy with the task's maximum target length, as predict decodes
    assert pred.generate([SOURCE, "The girl is standing at the beach."]) == \
        [r["target"] for r in pred.predict([SOURCE, "The girl is standing at the beach."])]
    pred.set_decoding(num_beams=2)
    assert pred.predict([SOURCE])[0]["target"] == beams[0]


def test_generate_cli_prints_the_target_alone(translator, capsys):
    capsys.readouterr()
    assert main(["generate", str(translator), "--prompt", SOURCE, "--num-beams", "2"]) == 0
    out = capsys.readouterr().out
    assert out == zerolm.load(translator).generate([SOURCE], num_beams=2)[0] + "\n"
    # with no option, as it was fine-tuned (greedy, its target length): what predict writes
    assert main(["generate", str(translator), "--prompt", SOURCE]) == 0
    assert capsys.readouterr().out == zerolm.load(translator).predict([SOURCE])[0]["target"] + "\n"
    # sampled with a temperature: a seed makes it reproducible
    argv = ["generate", str(translator), "--prompt", SOURCE, "--seed", "3", "--max-new-tokens", "8",
            "--temperature", "0.8"]
    assert main(argv) == 0 and main(argv) == 0
    first, second = capsys.readouterr().out.splitlines()
    assert first == second
    assert main(["generate", str(translator)]) == 2
    assert "--prompt" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, says", [
    ("--num-beams", "0", "--num-beams must be an integer >= 1, got 0"),
    ("--max-new-tokens", "0", "--max-new-tokens must be >= 1"),
    ("--length-penalty", "nan", "--length-penalty must be a finite number"),
    ("--no-repeat-ngram-size", "-1", "--no-repeat-ngram-size must be an integer >= 0"),
])
@pytest.mark.parametrize("verb", ["eval", "predict"])
def test_bad_decoding_values_are_refused_before_the_model_loads(verb, option, value, says, capsys, tmp_path):
    # the model directory does not exist: the value is checked first
    argv = [verb, str(tmp_path / "nowhere"), "--input", str(DEV), option, value]
    assert main(argv + (["--output", str(tmp_path / "p.tsv")] if verb == "predict" else [])) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "p.tsv").exists()


def test_decoding_options_on_a_classifier_name_the_option_and_its_task(classifier, capsys, tmp_path):
    reviews = REPO / "src" / "zerolm" / "resources" / "quickstart" / "reviews_dev.tsv"
    assert main(["eval", str(classifier), "--input", str(reviews), "--num-beams", "2"]) == 2
    err = capsys.readouterr().err
    assert "--num-beams" in err and "classify" in err and "sequence-to-sequence" in err
    out = tmp_path / "p.tsv"
    assert main(["predict", str(classifier), "--input", str(reviews), "--output", str(out),
                 "--length-penalty", "0.5"]) == 2
    err = capsys.readouterr().err
    assert "--length-penalty" in err and "classify" in err and not out.exists()
    assert main(["generate", str(classifier), "--prompt", "x"]) == 2
    assert "causal LM" in capsys.readouterr().err  # an encoder writes nothing


def test_pretrained_t5_generates_and_a_causal_lm_refuses_beam_search(tmp_path, capsys):
    assert main(["pretrain", str(TINY / "t5_span.yaml"), f"out_dir={tmp_path / 't5'}", "train.max_steps=2",
                 "train.eval_every=0", "train.progress=false"]) == 0
    t5 = zerolm.load(tmp_path / "t5" / "final")
    assert t5.meta == {} and t5.is_seq2seq
    texts = t5.generate(["the river", "a"], num_beams=2, max_new_tokens=4)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "t5" / "final"), "--prompt", "the river", "--greedy",
                 "--max-new-tokens", "4", "--no-repeat-ngram-size", "2", "--min-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.endswith("\n")
    # its pretraining objective on any text: span corruption as pretraining saw it
    assert main(["eval", str(tmp_path / "t5" / "final"), "--input", "pkg:quickstart/corpus.txt",
                 "--block-size", "32", "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert scores["loss"] > 0 and 0 <= scores["accuracy"] <= 1 and scores["tokens"] > 1000

    assert main(["pretrain", str(TINY / "gpt_char.yaml"), f"out_dir={tmp_path / 'gpt'}", "train.max_steps=1",
                 "train.eval_every=0", "train.progress=false"]) == 0
    capsys.readouterr()
    gpt = str(tmp_path / "gpt" / "final")
    assert main(["generate", gpt, "--prompt", "To", "--num-beams", "2"]) == 2
    err = capsys.readouterr().err
    assert "num_beams 2" in err and "encoder-decoders" in err
    assert main(["eval", gpt, "--input", "pkg:quickstart/corpus.txt", "--max-new-tokens", "5"]) == 2
    assert "--max-new-tokens" in capsys.readouterr().err
    assert main(["generate", gpt, "--prompt", "To", "--max-new-tokens", "3", "--greedy"]) == 0
    assert capsys.readouterr().out.startswith("To")  # a causal LM goes on from its prompt


def test_the_cli_decoding_options_are_the_tasks():
    from zerolm.cli.generate import SEQ2SEQ_DECODING
    from zerolm.tasks.seq2seq import GENERATION_KEYS

    assert SEQ2SEQ_DECODING == GENERATION_KEYS
