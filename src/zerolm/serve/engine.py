"""A served model: what it can do (its routes), how long its inputs may be, and the batch
functions the micro-batcher runs in the worker thread.

Every result comes from the same calls as `zerolm.load(dir).predict / .embed /
.generate`, so the server answers what the library answers.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Hashable, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from zerolm.generate import (
    GenerationConfig,
    decode_new,
    encode_prompts,
    generate_ids,
    generate_seq2seq_ids,
)
from zerolm.loading import Predictor
from zerolm.models import family

log = logging.getLogger(__name__)

# the work a model does, by the route that asks for it
ROUTES = {"classify": "/v1/classify", "tag": "/v1/tag", "intent_slots": "/v1/intent_slots", "generate": "/v1/generate",
          "embed": "/v1/embeddings"}
TASK_KINDS = ("classify", "tag", "intent_slots")  # fine-tuned encoders: their task, and embeddings


class Endpoint:
    """One served model. `kind` is what it was made for (classify, tag, generate, or embed
    for a model without a task head); `works` the kinds of work it accepts (a classifier
    or tagger also embeds with its body). A generating model either continues its prompt
    (a causal LM) or writes a target for its source (`seq2seq`: an encoder-decoder)."""

    def __init__(self, name: str, pred: Predictor):
        self.name, self.pred = name, pred
        task = pred.task.name if pred.task is not None else None
        self.tokenizer = pred.tokenizer
        self.seq2seq = task not in TASK_KINDS and pred.is_seq2seq
        if task in TASK_KINDS:
            self.kind = task
        elif self.seq2seq or task == "clm" or family(pred.model.config).objective == "clm":
            self.kind = "generate"
        else:
            self.kind = "embed"
        self.works = [self.kind] + (["embed"] if self.kind in TASK_KINDS else [])
        names = getattr(pred.task, "label_names", None) or getattr(pred.task, "intent_names", None)  # intent_slots
        self.labels = list(names or []) if self.kind in TASK_KINDS else []
        cfg = pred.model.config
        if self.seq2seq:
            self.max_length = pred.source_room
        else:
            task_limit = getattr(pred.task, "max_length", None) if self.kind in TASK_KINDS else None
            tok_limit = self.tokenizer.model_max_length if self.tokenizer is not None else None
            self.max_length = min(x for x in (task_limit, tok_limit, cfg.max_seq_len) if x)

    def describe(self, settings) -> dict[str, Any]:
        """The model card of /v1/models; `settings` (ServeSettings) caps the decoding shown."""
        out = {"id": self.name, "object": "model", "owned_by": "zerolm", "kind": self.kind,
               "routes": [ROUTES[w] for w in self.works], "max_length": self.max_length,
               "family": self.pred.model.config.family}
        if self.labels:
            out["labels"] = self.labels
        if self.seq2seq:  # how it decodes when a request says nothing else
            cfg = self.pred.generation_config()
            out["decoding"] = {k: getattr(cfg, k) for k in ("num_beams", "length_penalty", "no_repeat_ngram_size",
                                                            "max_new_tokens", "greedy")}
            # what a silent request gets: capped by the server's limit
            out["decoding"]["max_new_tokens"] = min(cfg.max_new_tokens, settings.max_new_tokens)
        return out

    @property
    def cuts_inputs(self) -> bool:
        """Whether an over-long input is cut to max_length (encoders read a prefix, a
        seq2seq model its source's start); a causal LM's prompt is never cut here."""
        return self.kind != "generate" or self.seq2seq

    def count_tokens(self, text: str) -> int:
        """Tokens of `text` as the model sees it (special tokens included for encoders and
        an encoder-decoder's source)."""
        return len(self.tokenizer.encode(text, add_special_tokens=self.kind != "generate" or self.seq2seq))

    # ------------------------------------------------ batch functions (worker thread)
    def run_batch(self, group: Hashable, items: list) -> Sequence[Any]:
        """Results of one batch, one per item, in order; `group` is (work, options)."""
        work, options = group
        texts = [it.payload for it in items]
        if work in TASK_KINDS:
            return self.pred.predict(texts, batch_size=len(texts))
        if work == "embed":
            return list(self.pred.embed(texts, batch_size=len(texts)))
        if work == "generate":
            return self._generate(items, GenerationConfig(**dict(options)))
        raise ValueError(f"unknown work {work!r}")

    def _generate(self, items: list, cfg: GenerationConfig) -> list[dict[str, Any]]:
        """Continuations of a batch of prompts (or targets of a batch of sources) through
        the KV cache; rows that stop leave the batch; each row's tokens go to its item's
        `on_token` as they come (a beam search's once it is over)."""
        tok = self.tokenizer
        texts = [it.payload for it in items]
        stopped: set[int] = set()
        counts = [0] * len(items)

        def on_step(rows: list[int], tokens: list[int], done: list[bool]) -> None:
            for r, t, d in zip(rows, tokens, done):
                counts[r] += 1
                if d:
                    stopped.add(r)
                if items[r].on_token is not None:
                    items[r].on_token(t)

        pad = tok.pad_id if tok.pad_id is not None else 0
        if self.seq2seq:
            new = generate_seq2seq_ids(self.pred.model, tok, texts, cfg, max_source_length=self.max_length,
                                       on_step=on_step)
        else:
            ids, mask = encode_prompts(tok, texts)
            new = generate_ids(self.pred.model, ids, cfg, attention_mask=mask, eos_id=tok.eos_id, pad_id=pad,
                               tokenizer=tok, on_step=on_step)
        return [{"text": decode_new(tok, row, cfg), "finish_reason": "stop" if r in stopped else "length",
                 "tokens": counts[r]} for r, row in enumerate(new.tolist())]


def generation_group(cfg: GenerationConfig) -> tuple:
    """The batching group of a generation request: rows share a batch only with rows of
    the same decoding settings."""
    d = asdict(cfg)
    d["stop"] = tuple(d["stop"])
    return ("generate", tuple(sorted(d.items())))


def encode_embedding(v: np.ndarray, fmt: str) -> list[float] | str:
    """An embedding as the OpenAI API sends it: a list of floats, or base64 of float32."""
    if fmt == "base64":
        return base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in v]


class TextStream:
    """The text of a generation as its tokens arrive, in pieces that add up to the final
    text: a piece is held back while it might still change (an unfinished UTF-8
    character, the start of a stop sequence)."""

    def __init__(self, tokenizer, cfg: GenerationConfig):
        self.tokenizer, self.cfg = tokenizer, cfg
        self.ids: list[int] = []
        self.sent = ""
        self.hold = max((len(s) for s in cfg.stop), default=1) - 1

    def push(self, token: int) -> str:
        """The new text that is safe to send after `token` ('' if none)."""
        self.ids.append(token)
        text = decode_new(self.tokenizer, self.ids, self.cfg)
        safe = text[: len(text) - self.hold] if self.hold else text
        safe = safe.rstrip("\ufffd")  # a multi-byte character still arriving
        if not safe.startswith(self.sent) or len(safe) <= len(self.sent):
            return ""
        piece, self.sent = safe[len(self.sent):], safe
        return piece

    def finish(self, final: str) -> str:
        """The rest of the final text (what `generate` returns) not sent yet."""
        if final.startswith(self.sent):
            piece = final[len(self.sent):]
        else:  # cannot happen with prefix-stable decoding; send what is missing anyway
            log.warning("streamed text %r is not a prefix of the final %r", self.sent, final)
            piece = final
        self.sent = final
        return piece
