"""A customer-service assistant in a few lines: intent and slots from a joint model,
out-of-scope detection, and answers from a FAQ index (zerolm.assistant does the work).

    python examples/assistant/assistant.py --joint runs/atis_joint_minilm --oos runs/clinc150_minilm \
        --index runs/faq_index "i need a flight from boston to denver tomorrow morning"
    python examples/assistant/assistant.py --joint ... --index ...      # then type, one utterance a line

See examples/assistant/README.md for how to make the three parts.
"""

from __future__ import annotations

import argparse
import json
import sys

from zerolm.assistant import Assistant, AssistantSettings


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("utterances", nargs="*", help="what the user says (none: read lines from stdin)")
    ap.add_argument("--joint", required=True, help="an intent_slots model (configs/atis_joint_minilm.yaml)")
    ap.add_argument("--oos", help="a classifier with out-of-scope detection (configs/clinc150_minilm.yaml); "
                                  "without one, a low intent probability means out of scope")
    ap.add_argument("--index", help="a FAQ index (zerolm index build MODEL --input faq.jsonl --out DIR)")
    ap.add_argument("--min-faq-score", type=float, default=AssistantSettings.min_faq_score)
    ap.add_argument("--min-intent-score", type=float, default=AssistantSettings.min_intent_score)
    ap.add_argument("--json", action="store_true", help="print each answer as one JSON line")
    args = ap.parse_args(argv)

    bot = Assistant(args.joint, oos=args.oos, index=args.index,
                    settings=AssistantSettings(min_intent_score=args.min_intent_score,
                                               min_faq_score=args.min_faq_score))
    lines = args.utterances or (line.strip() for line in sys.stdin)
    for text in lines:
        if not text:
            continue
        answer = bot.answer(text)[0]
        if args.json:
            print(json.dumps(answer, ensure_ascii=False), flush=True)
        else:
            print(f"> {text}\n{answer['reply']}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
