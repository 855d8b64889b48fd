"""Fine-tuning for classification: end to end on the shipped reviews, and bad input."""

import json
from pathlib import Path

import pytest

from zerolm.config import FinetuneConfig, load_config
from zerolm.data.labelled import LabelSet, read_examples
from zerolm.errors import DataError
from zerolm.train.finetune import finetune

REPO = Path(__file__).resolve().parents[2]
TINY = REPO / "configs" / "tiny" / "classify_reviews.yaml"


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_finetune_reviews_end_to_end(tmp_path, strategy):
    cfg = load_config(TINY, [f"out_dir={tmp_path / strategy}", f"strategy.name={strategy}", "train.epochs=1"],
                      cls=FinetuneConfig)
    result, report = finetune(cfg)
    out = result.out_dir
    saved = json.loads((out / "eval.json").read_text())
    assert saved["labels"] == ["negative", "positive"]
    cm = saved["confusion_matrix"]
    assert sum(map(sum, cm)) == 90  # every dev example, once
    assert saved["accuracy"] == pytest.approx(sum(cm[i][i] for i in range(len(cm))) / 90)
    assert (out / "confusion.png").stat().st_size > 1000 and json.loads((out / "best" / "task.json").read_text())["labels"] == ["negative", "positive"]
    assert report["strategy"]["strategy"] == strategy
    if strategy == "lora":
        assert report["strategy"]["percent"] < 100


def test_unseen_dev_label_wrong_columns_and_empty_file(tmp_path):
    train = tmp_path / "train.tsv"
    train.write_text("text\tlabel\ngood\tpositive\nbad\tnegative\n")
    dev = tmp_path / "dev.tsv"
    dev.write_text("text\tlabel\nfine\tpositive\nmeh\tneutral\n")
    labels = LabelSet.from_examples(read_examples(train))
    with pytest.raises(DataError, match=r"dev.tsv:3: label 'neutral' does not occur in the training data"):
        labels.encode(read_examples(dev))
    bad = tmp_path / "bad.tsv"
    bad.write_text("text\tlabel\nok\tpositive\ntoo\tmany\tfields\n")
    with pytest.raises(DataError, match=r"bad.tsv:3: expected 2 tab-separated fields"):
        read_examples(bad)
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match=r"empty.tsv: the file is empty"):
        read_examples(empty)
    header_only = tmp_path / "header.tsv"
    header_only.write_text("text\tlabel\n")
    with pytest.raises(DataError, match="no examples|empty"):
        read_examples(header_only)


@pytest.mark.parametrize("family", ["bert", "gpt"])
def test_mean_pooling_is_the_mean_of_real_token_states_and_ignores_padding(family):
    import torch

    from zerolm.models import ModelConfig, build_model
    from zerolm.models.heads import SequenceClassifier

    cfg = ModelConfig(family=family, vocab_size=99, d_model=32, n_layers=2, n_heads=4, d_ff=37,
                      max_seq_len=16, dropout=0.0, attn_dropout=0.0)
    model = SequenceClassifier(build_model(cfg), 3, dropout=0.0, pooling="mean").eval()
    ids = torch.randint(1, 99, (2, 6))
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])
    padded_ids = torch.cat([ids, torch.zeros(2, 3, dtype=torch.long)], 1)
    padded_mask = torch.cat([mask, torch.zeros(2, 3, dtype=torch.long)], 1)
    with torch.no_grad():
        a = model(ids, attention_mask=mask)
        b = model(padded_ids, attention_mask=padded_mask)
        h = model.body(ids[1:, :4]).last_hidden_state
        ref = model.classifier(h.mean(1))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(a[1:], ref, atol=1e-5)
    with pytest.raises(ValueError, match="pooling must be"):
        SequenceClassifier(build_model(cfg), 3, pooling="max")
