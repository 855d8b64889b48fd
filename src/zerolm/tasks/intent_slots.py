"""Joint intent detection and slot filling (Chen et al., "BERT for Joint Intent
Classification and Slot Filling", 2019): one encoder, an utterance-level intent head on
its pooled vector and a word-level slot head on each word's first sub-token, optionally
with a CRF over the slot tags (BIO constraints, as the tagging task).

The loss is `task.intent_weight` x the intent cross-entropy (mean per utterance) +
`task.slot_weight` x the slot loss (mean per word: cross-entropy, or the CRF's negative
log-likelihood), both computed in the model's forward (`IntentSlotClassifier`). The slot
side reuses the tagging task's pieces: batches, word-level decoding, entity spans.

Report: intent accuracy; slot entity precision / recall / F1, micro and per type, as
seqeval (and conlleval) score them; semantic frame accuracy, the share of utterances
whose intent and every slot tag are right (the headline `frame_accuracy`, Goo et al.,
2018); the intents and slot tags the data has but training had not (scored as errors:
no prediction can be one of them); the per-intent report and its confusion matrix.

Inputs: a text (split on whitespace; slots then carry character offsets into it), a list
of words, or an utterance of a joint file. Predictions: {"intent", "intent_score",
"intent_probs" (the top 5), "tokens", "tags", "slots": [{"type", "text", "start", "end",
"words"}]}.

Shape letters: B batch, T tokens, I intents, C slot tags.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from zerolm.data.conll import Sentence, tag_names
from zerolm.data.masking import IGNORE_INDEX
from zerolm.data.slu import (
    INTENT_PREFIX,
    IntentSlotBatches,
    Labels,
    Utterance,
    is_intent_slots,
    read_intent_slots,
)
from zerolm.errors import DataError
from zerolm.eval.entities import entity_report, format_entity_report
from zerolm.eval.metrics import classification_report, format_report
from zerolm.models.heads import word_loss_sum
from zerolm.tasks.base import FinetuneSetup, device_of, to_device
from zerolm.tasks.tag import crf_of, spans, word_offsets, word_tags

TOP_INTENTS = 5  # intents (with their probabilities) in a prediction's intent_probs


class IntentSlotTask:
    name: ClassVar[str] = "intent_slots"
    metric: ClassVar[str] = "frame_accuracy"
    loss_unit: ClassVar[str] = "weighted nats (intent / utterance + slots / word)"

    def __init__(self, intents: list[str], tags: list[str], tokenizer=None, *, crf: bool = False,
                 intent_weight: float = 1.0, slot_weight: float = 1.0, text_column: str = "text",
                 scheme: str = "iob2", max_length: int = 512):
        # the trained labels; names met later in dev / test data get ids past them (Labels)
        self.intents, self.tags = Labels(intents), Labels(tags)
        self.intent_names, self.tag_names = list(intents), list(tags)
        self.outside = self.tag_names.index("O") if "O" in self.tag_names else 0
        self.crf = crf  # for the report; the loss and decoding follow the model's `crf` module
        self.intent_weight, self.slot_weight = intent_weight, slot_weight
        self.tokenizer = tokenizer
        self.text_column, self.scheme = text_column, scheme
        self.max_length = max_length

    # ---------------------------------------------------------------- objective
    @staticmethod
    def _outputs(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """(intent logits (B, I), slot scores (B, T, C)) in float32."""
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    token_type_ids=batch.get("token_type_ids"))
        return out.intent_logits.float(), out.slot_scores.float()

    def loss(self, model, batch):
        # both losses run inside the (possibly DDP-wrapped) model's forward, the CRF's too
        out = model(batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    token_type_ids=batch.get("token_type_ids"), intent_labels=batch["intent_labels"],
                    labels=batch["labels"], word_ids=batch["word_ids"])
        loss = self.intent_weight * out.intent_loss + self.slot_weight * out.slot_loss
        labelled = batch["intent_labels"] != IGNORE_INDEX
        hits = (out.intent_logits.argmax(-1) == batch["intent_labels"]) & labelled
        return loss, {"intent_loss": out.intent_loss.detach(), "slot_loss": out.slot_loss.detach(),
                      "intent_accuracy": (hits.sum() / labelled.sum().clamp(min=1)).detach()}

    def _predicted(self, model, batch) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """(intent logits, slot scores, predicted tag ids of every word) of a batch on the
        model's device."""
        logits, scores = self._outputs(model, batch)
        tags = word_tags(scores, batch["word_ids"], batch["n_words"], crf_of(model), self.outside)
        return logits, scores, tags

    @torch.no_grad()
    def evaluate(self, model, batches) -> dict[str, Any]:
        device = device_of(model)
        gold_intents: list[int] = []
        pred_intents: list[int] = []
        y_true: list[list[str]] = []
        y_pred: list[list[str]] = []
        frames = word_hits = words = 0
        intent_sum, n_intents, slot_sum, n_slots = 0.0, 0, 0.0, 0
        for batch in batches:
            batch = to_device(batch, device)
            logits, scores, tags = self._predicted(model, batch)
            intent_sum += float(F.cross_entropy(logits, batch["intent_labels"], ignore_index=IGNORE_INDEX,
                                                reduction="sum"))
            n_intents += int((batch["intent_labels"] != IGNORE_INDEX).sum())
            s, n = word_loss_sum(scores, batch["labels"], batch["word_ids"], crf_of(model))
            slot_sum, n_slots = slot_sum + float(s), n_slots + n
            for gi, pi, pred, gold, n_words in zip(batch["intent_ids"].tolist(), logits.argmax(-1).tolist(),
                                                   tags, batch["word_labels"].tolist(), batch["n_words"].tolist()):
                gold = gold[:n_words]
                hits = sum(p == g for p, g in zip(pred, gold))
                frames += gi == pi and hits == n_words
                word_hits, words = word_hits + hits, words + n_words
                gold_intents.append(gi)
                pred_intents.append(pi)
                y_true.append([self.tags.names[g] for g in gold])
                y_pred.append([self.tags.names[p] for p in pred])
        # the intents of this data that training had not: rows of their own (never predicted)
        unseen_intents = sorted({g for g in gold_intents if g >= self.intents.known})
        rows = {g: self.intents.known + k for k, g in enumerate(unseen_intents)}
        intent_rep = classification_report([rows.get(g, g) for g in gold_intents], pred_intents,
                                           self.intent_names + [self.intents.names[g] for g in unseen_intents])
        slot_rep = entity_report(y_true, y_pred)
        known_tags = set(self.tag_names)
        intent_loss, slot_loss = intent_sum / max(n_intents, 1), slot_sum / max(n_slots, 1)
        n = len(gold_intents)
        return {
            "frame_accuracy": frames / max(n, 1),
            "intent_accuracy": intent_rep["accuracy"],
            "slot_f1": slot_rep["micro"]["f1"],
            "slot_precision": slot_rep["micro"]["precision"],
            "slot_recall": slot_rep["micro"]["recall"],
            "slot_accuracy": word_hits / max(words, 1),  # per word, O included
            "loss": self.intent_weight * intent_loss + self.slot_weight * slot_loss,
            "intent_loss": intent_loss,
            "slot_loss": slot_loss,
            "utterances": n,
            "words": words,
            "crf": self.crf,
            "unseen": {  # labels of the data that training had not: each occurrence is an error
                "intents": dict(Counter(self.intents.names[g] for g in gold_intents if g >= self.intents.known)),
                "tags": dict(Counter(t for s in y_true for t in s if t not in known_tags)),
            },
            "intents": intent_rep,  # per intent, with the confusion matrix and its labels
            "slots": slot_rep,  # per slot type, micro / macro / weighted
        }

    @torch.no_grad()
    def predict(self, model, batch) -> list[dict[str, Any]]:
        """One {"intent", "intent_score", "intent_probs", "tags"} per utterance of `batch`."""
        batch = to_device(batch, device_of(model))
        logits, _, tags = self._predicted(model, batch)
        probs = logits.softmax(-1)  # (B, I)
        top_p, top_i = probs.topk(min(TOP_INTENTS, probs.shape[-1]), dim=-1)  # (B, k)
        out = []
        for ps, ids, row in zip(top_p.tolist(), top_i.tolist(), tags):
            out.append({"intent": self.intent_names[ids[0]], "intent_score": round(ps[0], 6),
                        "intent_probs": {self.intent_names[i]: round(p, 6) for i, p in zip(ids, ps)},
                        "tags": [self.tag_names[t] for t in row]})
        return out

    # ------------------------------------------------------------------- build
    @classmethod
    def _model(cls, body, intents: list[str], tags: list[str], crf: bool, dropout: float | None = None,
               pooling: str = "first"):
        from zerolm.models.crf import CRF, bio_constraints
        from zerolm.models.heads import IntentSlotClassifier

        head = CRF(len(tags), constraints=bio_constraints(tags)) if crf else None
        return IntentSlotClassifier(body, len(intents), len(tags), dropout=dropout, pooling=pooling, crf=head)

    @classmethod
    def setup(cls, cfg, body, tokenizer, *, max_length: int, micro_per_step: int = 1) -> FinetuneSetup:
        """Read the joint files, fix the intents and slot tags from train, add both heads."""
        d, t, tr = cfg.data, cfg.task, cfg.train
        train_u = read_intent_slots(d.train, scheme=d.scheme)
        dev_u = read_intent_slots(d.dev, scheme=d.scheme)
        intents = sorted({u.intent for u in train_u})
        tags = tag_names([u.sentence for u in train_u])
        opts = {"crf": t.crf, "intent_weight": t.intent_weight, "slot_weight": t.slot_weight,
                "text_column": d.text_column, "scheme": d.scheme, "max_length": max_length}
        task = cls(intents, tags, tokenizer, **opts)
        kw = {"max_length": max_length, "batch_size": tr.batch_size, "seed": tr.seed}
        train_data = IntentSlotBatches(train_u, task.intents, task.tags, tokenizer, micro_per_step=micro_per_step,
                                       **kw)
        dev_data = IntentSlotBatches(dev_u, task.intents, task.tags, tokenizer, **kw)
        torch.manual_seed(tr.seed)
        model = cls._model(body, intents, tags, t.crf, t.head_dropout, t.pooling)
        meta = {"task": cls.name, "intents": intents, "tags": tags, "pooling": t.pooling, **opts}
        return FinetuneSetup(model, task, train_data, dev_data, meta, truncated=train_data.truncated)

    @classmethod
    def from_meta(cls, meta: dict, body, tokenizer):
        crf = bool(meta.get("crf"))
        task = cls(meta["intents"], meta["tags"], tokenizer, crf=crf, intent_weight=meta.get("intent_weight", 1.0),
                   slot_weight=meta.get("slot_weight", 1.0), text_column=meta.get("text_column", "text"),
                   scheme=meta.get("scheme", "iob2"), max_length=meta.get("max_length", body.config.max_seq_len))
        return cls._model(body, meta["intents"], meta["tags"], crf, pooling=meta.get("pooling", "first")), task

    # --------------------------------------------------------------------- I/O
    def read_inputs(self, path):
        """A joint file's utterances (gold intent and tags kept as `intent` / `tags` where
        the file has them), a table's rows (the text column, every column kept), or one
        utterance per line of plain text (split on whitespace)."""
        from zerolm.data.text import is_table, iter_lines, iter_rows, resolve_data_path

        p = resolve_data_path(path)
        inputs: list[Any] = []
        rows: list[dict[str, Any]] = []
        if is_table(p):
            for lineno, row in iter_rows(p, raw=True):
                if self.text_column not in row:
                    raise DataError(f"{p}:{lineno}: no column {self.text_column!r} (columns: {', '.join(row)})")
                inputs.append(str(row[self.text_column] or ""))
                rows.append(dict(row))
        elif is_intent_slots(p):
            for u in read_intent_slots(p, labelled=False, scheme=self.scheme):
                inputs.append(Utterance(None, Sentence(u.words, None, u.sentence.source, u.sentence.lines)))
                rows.append({"tokens": u.words, **({"intent": u.intent} if u.intent is not None else {}),
                             **({"tags": u.sentence.tags} if u.sentence.tags is not None else {})})
        else:
            for _, line in iter_lines(p):
                if line.strip():
                    inputs.append(line)
                    rows.append({"text": line, "tokens": line.split()})
        if not inputs:
            raise DataError(f"{p}: no utterances")
        return inputs, rows

    def _utterance(self, x: Any, i: int) -> Utterance:
        if isinstance(x, Utterance):
            return Utterance(None, Sentence(x.words, None, x.sentence.source, x.sentence.lines))
        if isinstance(x, str):
            words = x.split()
        elif isinstance(x, (list, tuple)) and all(isinstance(w, str) for w in x):
            words = list(x)
        else:
            raise DataError(f"input {i}: an intent_slots input is a text or a list of words, got "
                            f"{type(x).__name__}")
        return Utterance(None, Sentence(words, None, f"input {i}", [0] * len(words)))

    def batches(self, inputs, *, batch_size: int, max_length: int | None = None):
        utterances = [self._utterance(x, i) for i, x in enumerate(inputs)]
        # fresh label maps: prediction inputs carry no labels, and must not touch the task's
        return IntentSlotBatches(utterances, Labels(self.intent_names), Labels(self.tag_names), self.tokenizer,
                                 max_length=max_length or self.max_length, batch_size=batch_size, seed=0)

    def labelled_batches(self, path, *, batch_size: int, max_length: int | None = None, seed: int = 0,
                         micro_per_step: int = 1):
        utterances = read_intent_slots(path, scheme=self.scheme)
        return IntentSlotBatches(utterances, self.intents, self.tags, self.tokenizer,
                                 max_length=max_length or self.max_length, batch_size=batch_size, seed=seed,
                                 micro_per_step=micro_per_step)

    def describe(self, x: Any, prediction: dict[str, Any]) -> dict[str, Any]:
        """An in-memory prediction with its words and slots (character offsets into the
        text when the input was a text, into the words joined by spaces otherwise)."""
        found, text = word_offsets(x.words if isinstance(x, Utterance) else x)
        return {"intent": prediction["intent"], "intent_score": prediction["intent_score"],
                "intent_probs": prediction["intent_probs"], "tokens": [w for w, _, _ in found],
                "tags": prediction["tags"], "slots": spans(prediction["tags"], found, text)}

    def output_columns(self, prediction: dict) -> dict:
        return {"pred_intent": prediction["intent"], "pred_intent_score": prediction["intent_score"],
                "pred_tags": prediction["tags"]}

    @staticmethod
    def write_predictions(records: list[dict], path: Path) -> str | None:
        """The joint format itself (`# intent = PREDICTED`, then word<TAB>predicted tag, a
        blank line after each utterance) for a .txt output of an input with words; None
        leaves other outputs to the generic TSV / JSONL writer."""
        if Path(path).suffix != ".txt" or not records or "tokens" not in records[0]:
            return None
        return "".join(f"{INTENT_PREFIX}{r['pred_intent']}\n"
                       + "".join(f"{w}\t{t}\n" for w, t in zip(r["tokens"], r["pred_tags"])) + "\n"
                       for r in records)

    @staticmethod
    def format_report(report: dict) -> str:
        lines = [f"frame accuracy {report['frame_accuracy']:.4f}   intent accuracy {report['intent_accuracy']:.4f}   "
                 f"slot F1 {report['slot_f1']:.4f} (P {report['slot_precision']:.4f}, R {report['slot_recall']:.4f})",
                 f"slot word accuracy {report['slot_accuracy']:.4f}   loss {report['loss']:.4f} (intent "
                 f"{report['intent_loss']:.4f}, slots {report['slot_loss']:.4f})   ({report['utterances']:,} "
                 f"utterances, {report['words']:,} words{', CRF' if report.get('crf') else ''})"]
        unseen = report.get("unseen", {})
        for kind, unit in (("intents", "utterance"), ("tags", "word")):
            if unseen.get(kind):
                listed = ", ".join(f"{n} ({c} {unit}{'s' * (c > 1)})" for n, c in sorted(unseen[kind].items()))
                lines.append(f"{kind} unseen in training (scored as errors): {listed}")
        return "\n".join([*lines, "", "slots (entities):", format_entity_report(report["slots"]), "",
                          "intents:", format_report(report["intents"])])

    def write_plots(self, report: dict, out_dir: Path, title: str) -> list[Path]:
        from zerolm.eval.plots import plot_confusion_matrix

        rep = report["intents"]
        return [plot_confusion_matrix(rep["confusion_matrix"], rep["labels"], out_dir / "confusion.png",
                                      title=f"{title}: intent accuracy {report['intent_accuracy']:.4f}\n"
                                            f"(frame accuracy {report['frame_accuracy']:.4f})",
                                      drop_empty=True)]
