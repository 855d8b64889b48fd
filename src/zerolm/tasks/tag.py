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

Shape letters: B batch, T tokens, W words, C tags.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from zerolm.data.masking import IGNORE_INDEX
from zerolm.eval.entities import entity_report, format_entity_report
from zerolm.tasks.base import FinetuneSetup, to_device

__all__ = ["TaggingTask", "format_report", "from_meta", "pack_words", "prediction_data", "setup",
           "write_predictions"]


def first_subtokens(word_ids: torch.Tensor) -> torch.Tensor:
    """bool (B, T): the first token of each word, given each token's word index (-1 for
    special tokens and padding)."""
    prev = F.pad(word_ids[:, :-1], (1, 0), value=-1)  # (B, T): the word of the token before
    return (word_ids >= 0) & (word_ids != prev)


def pack_words(scores: torch.Tensor, word_ids: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gather the first-sub-token rows of `scores` (B, T, C) into word-level sequences.

    Returns (packed (B, W, C), mask (B, W), words (B, W), positions (B, W)): a row's
    words come first, in order, then padding (mask False, words -1); `words` holds the
    word index of each packed position and `positions` the token it came from.
    """
    first = first_subtokens(word_ids)  # (B, T)
    counts = first.sum(1)  # (B,)
    W = max(int(counts.max()), 1) if counts.numel() else 1
    # a stable sort on "not first" moves the first sub-tokens to the front, in order
    positions = torch.sort((~first).to(torch.uint8), dim=1, stable=True).indices[:, :W]  # (B, W)
    mask = torch.arange(W, device=scores.device)[None] < counts[:, None]  # (B, W)
    packed = scores.gather(1, positions[:, :, None].expand(-1, -1, scores.shape[-1]))  # (B, W, C)
    words = word_ids.gather(1, positions).masked_fill(~mask, -1)  # (B, W)
    return packed, mask, words, positions


def _crf(model):
    """The model's CRF, or None (looking through a DistributedDataParallel wrapper)."""
    return getattr(getattr(model, "module", model), "crf", None)


class TaggingTask:
    name = "tag"
    metric = "f1"  # entity-level micro F1 on dev, the CoNLL headline number

    def __init__(self, label_names: list[str], crf: bool = False):
        self.label_names = list(label_names)
        self.crf = crf  # for the report; the loss and decoding follow the model's `crf` module
        self.outside = self.label_names.index("O") if "O" in self.label_names else 0
        self.last_report: dict | None = None

    def _scores(self, model, batch) -> torch.Tensor:
        return model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                     token_type_ids=batch.get("token_type_ids")).float()  # (B, T, C)

    def _loss_sum(self, model, scores: torch.Tensor, batch) -> tuple[torch.Tensor, int]:
        """(summed loss, number of words it covers) of a batch."""
        crf = _crf(model)
        if crf is None:
            labels = batch["labels"]  # (B, T): tag ids at first sub-tokens only
            loss = F.cross_entropy(scores.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX,
                                   reduction="sum")
            return loss, int((labels != IGNORE_INDEX).sum())
        packed, mask, _, positions = pack_words(scores, batch["word_ids"])
        tags = batch["labels"].gather(1, positions).masked_fill(~mask, 0)  # (B, W)
        keep = mask[:, 0]  # sentences with at least one word that has a token
        if not bool(keep.any()):
            return scores.sum() * 0.0, 0
        nll = crf.nll(packed[keep], tags[keep], mask[keep])  # (B',)
        return nll.sum(), int(mask.sum())

    def loss(self, model, batch):
        scores = self._scores(model, batch)
        total, n = self._loss_sum(model, scores, batch)
        metrics = {}
        if _crf(model) is None:  # the argmax is the prediction only without a CRF
            labelled = batch["labels"] != IGNORE_INDEX
            hits = (scores.argmax(-1) == batch["labels"]) & labelled
            metrics["accuracy"] = (hits.sum() / labelled.sum().clamp(min=1)).detach()
        return total / max(n, 1), metrics

    def _word_tags(self, model, scores: torch.Tensor, batch) -> list[list[int]]:
        """Predicted tag ids of every word of each sentence (O where no token stands for a
        word, e.g. after truncation)."""
        packed, mask, words, _ = pack_words(scores, batch["word_ids"])
        crf = _crf(model)
        lengths = mask.sum(1).tolist()
        if crf is None:
            decoded = packed.argmax(-1).tolist()  # (B, W)
        else:
            keep = mask[:, 0]
            paths = iter(crf.decode(packed[keep], mask[keep]) if bool(keep.any()) else [])
            decoded = [next(paths) if k else [] for k in keep.tolist()]
        out = []
        for row, n, tags, n_words in zip(words.tolist(), lengths, decoded, batch["n_words"].tolist()):
            pred = [self.outside] * n_words
            for w, t in zip(row[:n], tags[:n]):
                pred[w] = t
            out.append(pred)
        return out

    @torch.no_grad()
    def evaluate(self, model, batches):
        device = next(model.parameters()).device
        names = self.label_names
        y_true, y_pred = [], []
        loss_sum, n_loss, correct, total = 0.0, 0, 0, 0
        for batch in batches:
            batch = to_device(batch, device)
            scores = self._scores(model, batch)
            s, n = self._loss_sum(model, scores, batch)
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
        self.last_report = rep
        return {k: rep[k] for k in ("loss", "f1", "precision", "recall", "accuracy")}

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict]:
        """One {"tags": [...]} per sentence of `batch`, a tag for every word; the words
        themselves are the input records (`prediction_data`) the predictions go beside."""
        batch = to_device(batch, next(model.parameters()).device)
        scores = self._scores(model, batch)
        return [{"tags": [self.label_names[t] for t in tags]} for tags in self._word_tags(model, scores, batch)]

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        from zerolm.eval.plots import plot_entity_scores

        head = "CRF, " if report.get("crf") else ""
        return [plot_entity_scores(report["per_type"], out_dir / "entities.png",
                                   title=f"{title}: {head}entity F1 {report['f1']:.4f}")]


def format_report(report: dict) -> str:
    return (format_entity_report(report) + f"\n\ntoken accuracy {report['accuracy']:.4f}   "
            f"loss {report['loss']:.4f}   ({report['sentences']:,} sentences, {report['words']:,} words"
            f"{', CRF' if report.get('crf') else ''})")


def _model(body, labels: list[str], crf: bool, dropout: float | None = None):
    from zerolm.models.crf import CRF, bio_constraints
    from zerolm.models.heads import TokenClassifier

    head = CRF(len(labels), constraints=bio_constraints(labels)) if crf else None
    return TokenClassifier(body, len(labels), dropout=dropout, crf=head)


def setup(cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
    """Read the CoNLL files, fix the tag set from train, add a tagging head (and CRF)."""
    from zerolm.data.conll import TaggingBatches, read_conll, tag_names

    d, tr = cfg.data, cfg.train
    cols = {"token_column": d.token_column, "tag_column": d.tag_column, "scheme": d.scheme}
    train_s, dev_s = read_conll(d.train, **cols), read_conll(d.dev, **cols)
    labels = tag_names(train_s)
    kw = {"max_length": max_length, "batch_size": tr.batch_size, "seed": tr.seed}
    train_data = TaggingBatches(train_s, labels, tokenizer, micro_per_step=micro_per_step, **kw)
    dev_data = TaggingBatches(dev_s, labels, tokenizer, **kw)
    torch.manual_seed(tr.seed)
    model = _model(body, labels, cfg.task.crf, cfg.task.head_dropout)
    meta = {"task": "tag", "labels": labels, "crf": cfg.task.crf, "token_column": d.token_column}
    return FinetuneSetup(model, TaggingTask(labels, crf=cfg.task.crf), train_data, dev_data, meta,
                         truncated=train_data.truncated)


def from_meta(meta: dict, body):
    """The tagger (and its CRF) and its task, rebuilt from task.json (weights are loaded after)."""
    crf = bool(meta.get("crf"))
    return _model(body, meta["labels"], crf), TaggingTask(meta["labels"], crf=crf)


def prediction_data(path, tokenizer, meta: dict, *, max_length: int, batch_size: int):
    """Batches of a file's sentences (a CoNLL file's word column, or one whitespace-split
    sentence per line) and the records {"tokens": words} the tags go beside."""
    from zerolm.data.conll import Sentence, TaggingBatches, is_conll, read_conll
    from zerolm.data.text import iter_lines, resolve_data_path
    from zerolm.errors import DataError

    p = resolve_data_path(path)
    if is_conll(p):
        sentences = read_conll(p, token_column=meta.get("token_column", 0), tag_column=None)
    else:
        sentences = [Sentence(line.split(), None, str(p), [n] * len(line.split()))
                     for n, line in iter_lines(p) if line.strip()]
    if not sentences:
        raise DataError(f"{p}: no sentences")
    data = TaggingBatches(sentences, meta["labels"], tokenizer, max_length=max_length,
                          batch_size=batch_size, seed=0)
    return data, [{"tokens": s.words} for s in sentences]


def write_predictions(records: list[dict], path: Path) -> str | None:
    """CoNLL columns (word<TAB>tag, a blank line after each sentence) for a .conll or .txt
    output; None leaves other formats to the generic writer."""
    if Path(path).suffix not in (".conll", ".txt"):
        return None
    return "".join("".join(f"{w}\t{t}\n" for w, t in zip(r["tokens"], r["tags"])) + "\n" for r in records)
