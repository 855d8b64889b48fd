"""Token classification (NER): one tag per word, from the scores of its first sub-token.

Without a CRF each word is classified on its own (cross-entropy at first sub-tokens,
argmax to predict). With a CRF (`task.crf: true`) the first-sub-token scores of a
sentence are packed into one word-level sequence of emissions and the CRF scores whole
tag sequences: the loss is its negative log-likelihood, the prediction its Viterbi path,
which respects the BIO constraints (no `I-PER` after `O` or after `B-LOC`).

Both losses are averaged per word, so the learning rate and gradient clipping of a
recipe mean the same with and without the CRF. Evaluation scores entities as conlleval
and seqeval do (`zerolm.eval.entities`), over every word of the dev file: words that
truncation cut off are predicted `O`, so a too-small `data.max_length` shows in recall.

Inputs: a text (split on whitespace; entities then carry character offsets into it) or a
list of words. Predictions: {"tokens", "tags", "entities": [{"type", "text", "start",
"end", "words"}]}.

Shape letters: B batch, T tokens, W words, C tags.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import torch

from zerolm.data.conll import Sentence, TaggingBatches, is_conll, read_conll, tag_names
from zerolm.data.masking import IGNORE_INDEX
from zerolm.errors import DataError
from zerolm.eval.entities import entities, entity_report, format_entity_report
from zerolm.models.heads import first_subtokens, pack_words, word_loss_sum  # noqa: F401  (re-exported)
from zerolm.tasks.base import FinetuneSetup, device_of, to_device

# first_subtokens and pack_words live in models.heads; the rest is shared with intent_slots
__all__ = ["TaggingTask", "crf_of", "first_subtokens", "pack_words", "spans", "word_offsets", "word_tags"]


def crf_of(model):
    """The model's CRF, or None (looking through a DistributedDataParallel wrapper)."""
    return getattr(getattr(model, "module", model), "crf", None)


class TaggingTask:
    name: ClassVar[str] = "tag"
    metric: ClassVar[str] = "f1"  # entity-level micro F1, the CoNLL headline number
    loss_unit: ClassVar[str] = "nats / word"

    def __init__(self, label_names: list[str], tokenizer=None, *, crf: bool = False, token_column: int = 0,
                 tag_column: int = -1, scheme: str = "iob2", max_length: int = 512):
        self.label_names = list(label_names)
        self.crf = crf  # for the report; the loss and decoding follow the model's `crf` module
        self.outside = self.label_names.index("O") if "O" in self.label_names else 0
        self.tokenizer = tokenizer
        self.token_column, self.tag_column, self.scheme = token_column, tag_column, scheme
        self.max_length = max_length

    # ---------------------------------------------------------------- objective
    def _scores(self, model, batch) -> torch.Tensor:
        return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     token_type_ids=batch.get("token_type_ids")).float()  # (B, T, C)

    def loss(self, model, batch):
        # the CRF's loss runs inside the (possibly DDP-wrapped) model's forward: data
        # parallelism only sees parameters used there
        loss, scores = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                             token_type_ids=batch.get("token_type_ids"), labels=batch["labels"],
                             word_ids=batch["word_ids"])
        metrics = {}
        if crf_of(model) is None:  # the argmax is the prediction only without a CRF
            labelled = batch["labels"] != IGNORE_INDEX
            hits = (scores.argmax(-1) == batch["labels"]) & labelled
            metrics["accuracy"] = (hits.sum() / labelled.sum().clamp(min=1)).detach()
        return loss, metrics

    def _word_tags(self, model, scores: torch.Tensor, batch) -> list[list[int]]:
        return word_tags(scores, batch["word_ids"], batch["n_words"], crf_of(model), self.outside)

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, Any]:
        device = device_of(model)
        names = self.label_names
        y_true, y_pred = [], []
        loss_sum, n_loss, correct, total = 0.0, 0, 0, 0
        for batch in batches:
            batch = to_device(batch, device)
            scores = self._scores(model, batch)
            s, n = word_loss_sum(scores, batch["labels"], batch["word_ids"], crf_of(model))
            loss_sum, n_loss = loss_sum + float(s), n_loss + n
            for pred, gold, n_words in zip(self._word_tags(model, scores, batch),
                                           batch["word_labels"].tolist(), batch["n_words"].tolist()):
                gold = gold[:n_words]
                correct += sum(p == g for p, g in zip(pred, gold))
                total += n_words
                y_true.append([names[g] for g in gold])
                y_pred.append([names[p] for p in pred])
        rep = entity_report(y_true, y_pred)
        rep.update(precision=rep["micro"]["precision"], recall=rep["micro"]["recall"], f1=rep["micro"]["f1"],
                   accuracy=correct / max(total, 1), loss=loss_sum / max(n_loss, 1), labels=names,
                   crf=self.crf, sentences=len(y_true), words=total)
        return rep

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict[str, Any]]:
        """One {"tags": [...]} per sentence of `batch`, a tag for every word."""
        batch = to_device(batch, device_of(model))
        scores = self._scores(model, batch)
        return [{"tags": [self.label_names[t] for t in tags]} for tags in self._word_tags(model, scores, batch)]

    # ------------------------------------------------------------------- build
    @classmethod
    def _model(cls, body, labels: list[str], crf: bool, dropout: float | None = None):
        from zerolm.models.crf import CRF, bio_constraints
        from zerolm.models.heads import TokenClassifier

        head = CRF(len(labels), constraints=bio_constraints(labels)) if crf else None
        return TokenClassifier(body, len(labels), dropout=dropout, crf=head)

    @classmethod
    def setup(cls, cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
        """Read the CoNLL files, fix the tag set from train, add a tagging head (and CRF)."""
        d, tr = cfg.data, cfg.train
        cols = {"token_column": d.token_column, "tag_column": d.tag_column, "scheme": d.scheme}
        train_s, dev_s = read_conll(d.train, **cols), read_conll(d.dev, **cols)
        labels = tag_names(train_s)
        kw = {"max_length": max_length, "batch_size": tr.batch_size, "seed": tr.seed}
        train_data = TaggingBatches(train_s, labels, tokenizer, micro_per_step=micro_per_step, **kw)
        dev_data = TaggingBatches(dev_s, labels, tokenizer, **kw)
        torch.manual_seed(tr.seed)
        model = cls._model(body, labels, cfg.task.crf, cfg.task.head_dropout)
        meta = {"task": cls.name, "labels": labels, "crf": cfg.task.crf, "max_length": max_length, **cols}
        task = cls(labels, tokenizer, crf=cfg.task.crf, max_length=max_length, **cols)
        return FinetuneSetup(model, task, train_data, dev_data, meta, truncated=train_data.truncated)

    @classmethod
    def from_meta(cls, meta: dict, body, tokenizer):
        crf = bool(meta.get("crf"))
        task = cls(meta["labels"], tokenizer, crf=crf, token_column=meta.get("token_column", 0),
                   tag_column=meta.get("tag_column", -1), scheme=meta.get("scheme", "iob2"),
                   max_length=meta.get("max_length", body.config.max_seq_len))
        return cls._model(body, meta["labels"], crf), task

    # --------------------------------------------------------------------- I/O
    def read_inputs(self, path):
        """A CoNLL file's sentences (gold tags kept as `tags` when the file has them), or one
        sentence per line of plain text (split on whitespace)."""
        from zerolm.data.text import iter_lines, resolve_data_path

        p = resolve_data_path(path)
        if is_conll(p):
            tagged = _has_tag_column(p, self.token_column)
            sentences = read_conll(p, token_column=self.token_column,
                                   tag_column=self.tag_column if tagged else None, scheme=self.scheme)
            rows = [{"tokens": s.words, **({"tags": s.tags} if s.tags is not None else {})} for s in sentences]
        else:
            sentences, rows = [], []
            for n, line in iter_lines(p):
                if line.strip():
                    sentences.append(Sentence(line.split(), None, str(p), [n] * len(line.split())))
                    rows.append({"text": line, "tokens": line.split()})
        if not sentences:
            raise DataError(f"{p}: no sentences")
        return [Sentence(s.words, None, s.source, s.lines) for s in sentences], rows

    def batches(self, inputs, *, batch_size: int, max_length: int | None = None):
        sentences = []
        for i, x in enumerate(inputs):
            if isinstance(x, Sentence):
                sentences.append(x)
            elif isinstance(x, str):
                sentences.append(Sentence(x.split(), None, f"input {i}", [0] * len(x.split())))
            elif isinstance(x, (list, tuple)) and all(isinstance(w, str) for w in x):
                sentences.append(Sentence(list(x), None, f"input {i}", [0] * len(x)))
            else:
                raise DataError(f"input {i}: a tagging input is a text or a list of words, got "
                                f"{type(x).__name__}")
        return TaggingBatches(sentences, self.label_names, self.tokenizer,
                              max_length=max_length or self.max_length, batch_size=batch_size, seed=0)

    def labelled_batches(self, path, *, batch_size: int, max_length: int | None = None, seed: int = 0,
                         micro_per_step: int = 1):
        from zerolm.data.text import resolve_data_path

        p = resolve_data_path(path)
        if not is_conll(p) or not _has_tag_column(p, self.token_column):
            raise DataError(f"{p}: no gold tags (a CoNLL file with a tag column is needed to score "
                            "a tagger); for untagged text use `zerolm predict`")
        sentences = read_conll(p, token_column=self.token_column, tag_column=self.tag_column,
                               scheme=self.scheme)
        return TaggingBatches(sentences, self.label_names, self.tokenizer, max_length=max_length or self.max_length,
                              batch_size=batch_size, seed=seed, micro_per_step=micro_per_step)

    def describe(self, x: Any, prediction: dict[str, Any]) -> dict[str, Any]:
        """An in-memory prediction with its words and entities (character offsets into the
        text when the input was a text, into the words joined by spaces otherwise)."""
        found, text = word_offsets(x.words if isinstance(x, Sentence) else x)
        return {"tokens": [w for w, _, _ in found], "tags": prediction["tags"],
                "entities": spans(prediction["tags"], found, text)}

    def output_columns(self, prediction: dict) -> dict:
        return {"pred_tags": prediction["tags"]}

    @staticmethod
    def format_report(report: dict) -> str:
        return (format_entity_report(report) + f"\n\ntoken accuracy {report['accuracy']:.4f}   "
                f"loss {report['loss']:.4f}   ({report['sentences']:,} sentences, {report['words']:,} words"
                f"{', CRF' if report.get('crf') else ''})")

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        from zerolm.eval.plots import plot_entity_scores

        head = "CRF, " if report.get("crf") else ""
        return [plot_entity_scores(report["per_type"], out_dir / "entities.png",
                                   title=f"{title}: {head}entity F1 {report['f1']:.4f}")]

    @staticmethod
    def write_predictions(records: list[dict], path: Path) -> str | None:
        """CoNLL columns (word, gold tag when known, predicted tag; a blank line after each
        sentence) for a .conll or .txt output; None leaves other formats to the generic writer."""
        if Path(path).suffix not in (".conll", ".txt"):
            return None
        out = []
        for r in records:
            gold = r.get("tags") or [None] * len(r["tokens"])
            out.append("".join("\t".join(x for x in (w, g, t) if x is not None) + "\n"
                               for w, g, t in zip(r["tokens"], gold, r["pred_tags"])) + "\n")
        return "".join(out)


def word_tags(scores: torch.Tensor, word_ids: torch.Tensor, n_words: torch.Tensor, crf=None,
              outside: int = 0) -> list[list[int]]:
    """Predicted tag ids of every word of each sentence from token scores (B, T, C): the
    argmax at each word's first sub-token, or with a CRF the Viterbi path over them; O
    (`outside`) where no token stands for a word (e.g. after truncation)."""
    packed, mask, words, _ = pack_words(scores, word_ids)
    lengths = mask.sum(1).tolist()
    if crf is None:
        decoded = packed.argmax(-1).tolist()  # (B, W)
    else:
        keep = mask[:, 0]
        paths = iter(crf.decode(packed[keep], mask[keep]) if bool(keep.any()) else [])
        decoded = [next(paths) if k else [] for k in keep.tolist()]
    out = []
    for row, n, tags, count in zip(words.tolist(), lengths, decoded, n_words.tolist()):
        pred = [outside] * count
        for w, t in zip(row[:n], tags[:n]):
            pred[w] = t
        out.append(pred)
    return out


def word_offsets(x: str | list[str]) -> tuple[list[tuple[str, int, int]], str]:
    """The words of an input with their character offsets [start, end), and the text the
    offsets point into: a text split on whitespace, or a list of words joined by spaces."""
    if isinstance(x, str):
        return [(m.group(), m.start(), m.end()) for m in re.finditer(r"\S+", x)], x
    found, pos = [], 0
    for w in x:
        found.append((w, pos, pos + len(w)))
        pos += len(w) + 1
    return found, " ".join(x)


def spans(tags: list[str], words: list[tuple[str, int, int]], text: str) -> list[dict[str, Any]]:
    """Entities of IOB2 `tags` over `words` (word, start, end): type, text, character
    offsets [start, end) and word indices [first, last]."""
    out = []
    for etype, first, last in entities(tags):
        start, end = words[first][1], words[last][2]
        out.append({"type": etype, "text": text[start:end], "start": start, "end": end,
                    "words": [first, last]})
    return out


def _has_tag_column(path, token_column: int) -> bool:
    from zerolm.data.text import iter_lines

    for _, line in iter_lines(path):
        if line.strip() and not line.startswith("-DOCSTART-"):
            cols = line.split("\t") if "\t" in line else line.split()
            return len(cols) > max(token_column, 0) + 1
    return False
