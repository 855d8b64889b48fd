"""The customer-service assistant: one utterance in, one answer out, from three parts.

1. **Out of scope?** An intent classifier with out-of-scope detection (a `classify`
   model fine-tuned with `task.oos_label`, e.g. configs/clinc150_minilm.yaml) says whether
   the request is one the system was trained for. The joint model's intent probability
   counts too (the maximum-softmax-probability rule of the CLINC150 paper): below
   `min_intent_score`, a request no FAQ entry answers is out of scope.
2. **What and with what**: the joint model (`intent_slots`, e.g.
   configs/atis_joint_minilm.yaml) names the intent and fills the slots (typed spans with
   character offsets).
3. **An answer**: the FAQ index (`zerolm index build`) gives the closest question. An
   entry is used when its cosine score reaches `min_faq_score`, or the lower
   `min_faq_score_same_intent` when its `intent` field is the predicted intent (the intent
   is evidence that the match is right).

`Assistant.answer(text)` runs the parts with the library; `compose(...)` is the decision
alone, which `zerolm serve --assistant` feeds from its micro-batched models. Both return
{"text", "in_scope", "oos_score", "intent", "intent_score", "slots", "faq", "reply"}.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zerolm.errors import ConfigError

FAQ_CANDIDATES = 5  # FAQ entries looked at per utterance


@dataclass
class AssistantSettings:
    min_intent_score: float = 0.6  # a lower intent probability is "unsure" (out of scope unless the FAQ answers)
    min_faq_score: float = 0.6  # cosine score at which any FAQ entry answers
    min_faq_score_same_intent: float = 0.4  # ... and one whose intent is the predicted intent


def compose(text: str, parse: dict[str, Any], oos: dict[str, Any] | None, faq_hits: list[dict[str, Any]],
            settings: AssistantSettings | None = None) -> dict[str, Any]:
    """The assistant's answer to `text` from the joint model's prediction `parse`, the
    out-of-scope classifier's prediction `oos` (None: judge by the intent probability) and
    the FAQ index's hits for the text, best first.

    Out of scope: when the out-of-scope classifier says so, or when the joint model is
    unsure of the intent (below `min_intent_score`) and no FAQ entry matches either: the
    assistant then has nothing to offer. A request the joint model is unsure of but the FAQ
    answers is served, named by the FAQ entry's intent."""
    s = settings or AssistantSettings()
    sure = parse["intent_score"] >= s.min_intent_score
    faq = _faq_match(faq_hits, parse["intent"], s)
    if oos is not None:
        in_scope, oos_score = bool(oos.get("in_scope", True)), oos.get("oos_score")
    else:  # the joint model's own confidence, as maximum softmax probability
        in_scope, oos_score = sure, 1.0 - parse["intent_score"]
    in_scope = in_scope and (sure or faq is not None)
    out: dict[str, Any] = {"text": text, "in_scope": in_scope, "oos_score": oos_score,
                           "intent": parse["intent"], "intent_score": parse["intent_score"],
                           "slots": parse.get("slots", []), "faq": None}
    if not in_scope:
        out["reply"] = ("Sorry, I can't help with that: it is not something I was trained to handle. "
                        "Try asking about flights, fares, baggage or your account.")
        return out
    out["faq"] = faq
    slots = ", ".join(f"{sl['type']}: {sl['text']}" for sl in out["slots"])
    if sure:
        reply = f"Intent: {parse['intent']} ({parse['intent_score']:.0%})."
    else:
        reply = f"Intent: {faq['intent'] or 'a question from the FAQ'} (from the FAQ)."
    reply += f" Details: {slots}." if slots else " No details given."
    reply += f"\n{faq['answer']}" if faq else "\nI have no answer to that in my FAQ; a colleague will follow up."
    out["reply"] = reply
    return out


def _faq_match(hits: list[dict[str, Any]], intent: str, s: AssistantSettings) -> dict[str, Any] | None:
    """The FAQ entry that answers: the best hit past `min_faq_score`, unless a hit of the
    predicted intent past `min_faq_score_same_intent` ranks first among those of its intent."""
    same = [h for h in hits if h.get("intent") == intent and h["score"] >= s.min_faq_score_same_intent]
    best = same[0] if same else (hits[0] if hits and hits[0]["score"] >= s.min_faq_score else None)
    if best is None:
        return None
    return {"question": best.get("question"), "answer": best.get("answer"), "intent": best.get("intent"),
            "score": round(float(best["score"]), 6)}


class Assistant:
    """The three parts loaded: `joint` (an intent_slots model), `oos` (a classifier with
    out-of-scope detection, or None) and `index` (a FAQ index, or None), each a
    directory or an already loaded object."""

    def __init__(self, joint, *, oos=None, index=None, settings: AssistantSettings | None = None):
        import zerolm
        from zerolm.index import Index

        self.joint = zerolm.load(joint) if not hasattr(joint, "predict") else joint
        if getattr(self.joint.task, "name", None) != "intent_slots":
            raise ConfigError(f"{joint}: the assistant's joint model must be an intent_slots model "
                              f"(fine-tuned with task.name intent_slots), not {getattr(self.joint.task, 'name', None)}")
        self.oos = zerolm.load(oos) if oos is not None and not hasattr(oos, "predict") else oos
        if self.oos is not None and getattr(self.oos.task, "oos", None) is None:
            raise ConfigError(f"{oos}: the out-of-scope model must be a classifier fine-tuned with "
                              "task.oos_label (it says in_scope for every prediction)")
        self.index = Index.load(index) if index is not None and not hasattr(index, "search") else index
        self.settings = settings or AssistantSettings()

    def answer(self, texts: str | list[str]) -> list[dict[str, Any]]:
        """The answer to each utterance, in order."""
        items = [texts] if isinstance(texts, str) else list(texts)
        parses = self.joint.predict(items)
        oos = self.oos.predict(items) if self.oos is not None else [None] * len(items)
        hits = self.index.search(items, k=FAQ_CANDIDATES) if self.index is not None else [[] for _ in items]
        return [compose(t, p, o, h, self.settings) for t, p, o, h in zip(items, parses, oos, hits)]
