"""`zerolm serve`: serve models over HTTP (FastAPI + uvicorn) with dynamic micro-batching."""

from __future__ import annotations

from zerolm.cli.main import add_verb


def register(sub) -> None:
    p = add_verb(sub, "serve", "serve models over HTTP: classify, tag, generate, embeddings, a web page",
                 "zerolm serve runs/sst2_minilm ner=runs/conll2003_minilm --port 8000\n"
                 "  curl -s localhost:8000/v1/classify -H 'Content-Type: application/json' "
                 "-d '{\"model\": \"sst2_minilm\", \"input\": \"a gripping film\"}'",
                 description="Serve one or more models (any directory zerolm.load takes: a fine-tuned run, a "
                             "zerolm or Hugging Face directory, an ONNX export, a compressed model) under their "
                             "names. Routes: POST /v1/classify, /v1/tag, /v1/generate (\"stream\": true for "
                             "server-sent events), /v1/embeddings (OpenAI's shape); GET /v1/models, /healthz, "
                             "/readyz, /metrics (Prometheus), /docs (OpenAPI) and a web page at /. Concurrent "
                             "requests for a model run as one batch (--max-batch-size, --max-wait-ms, "
                             "--max-batch-tokens). Model paths come only from this command line. SIGTERM or "
                             "Ctrl+C stops accepting, finishes the requests in flight and exits.")
    p.add_argument("models", nargs="+", metavar="[NAME=]MODEL",
                   help="model directories; each is served under NAME (default: the directory's name, or "
                        "the run's name for a run's best/ or final/)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, default=None, help="torch threads of the model worker (default: torch's)")
    b = p.add_argument_group("batching")
    b.add_argument("--max-batch-size", type=int, default=32, help="rows per batch at most (1: no batching; default 32)")
    b.add_argument("--max-wait-ms", type=float, default=5.0,
                   help="how long a request waits for others to share its batch (default 5)")
    b.add_argument("--max-batch-tokens", type=int, default=16384,
                   help="rows x longest row of a batch at most (default 16384)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-queue", type=int, default=1024,
                     help="rows waiting per model at most; beyond, 429 with Retry-After (default 1024)")
    lim.add_argument("--timeout", type=float, default=30.0, help="seconds before a request gets 504 (default 30)")
    lim.add_argument("--max-body", type=int, default=1_000_000, help="request body bytes at most (413 beyond)")
    lim.add_argument("--max-inputs", type=int, default=256, help="texts per request at most (default 256)")
    lim.add_argument("--max-new-tokens", type=int, default=512, help="generation length a request may ask for")
    lim.add_argument("--max-num-beams", type=int, default=8,
                     help="beams a request may ask an encoder-decoder for (each beam costs a batch row)")
    lim.add_argument("--no-truncate", action="store_true",
                     help="answer 422 for an input over the model's length instead of truncating it")
    a = p.add_argument_group("assistant (POST /v1/assist: see zerolm.assistant and examples/assistant)")
    a.add_argument("--assistant", metavar="JOINT[,OOS]", default=None,
                   help="chain the served intent_slots model JOINT, the served out-of-scope classifier OOS "
                        "(optional) and --faq-index into POST /v1/assist and a panel on the page")
    a.add_argument("--faq-index", metavar="DIR", default=None, help="a FAQ index (zerolm index build) for the assistant")
    a.add_argument("--min-faq-score", type=float, default=0.6,
                   help="cosine score at which a FAQ entry answers (default 0.6; 0.4 when its intent is "
                        "the predicted one)")
    s = p.add_argument_group("security")
    s.add_argument("--api-key", default=None,
                   help="require 'Authorization: Bearer KEY' on every route but /healthz and the page "
                        "(default: $ZEROLM_API_KEY; none: open)")
    s.add_argument("--cors", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from ORIGIN (repeatable; default: CORS off)")
    p.set_defaults(func=run)


def model_name(spec: str) -> tuple[str, str]:
    """(name, path) of a command-line model: NAME=PATH, or the path named after its
    directory (a run's best/ or final/ after the run)."""
    from pathlib import Path

    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name:
        return name, path
    p = Path(spec.rstrip("/"))
    if p.name in ("best", "final") and p.parent.name:
        return p.parent.name, spec
    return (p.name or spec).removeprefix("python:"), spec


def _assistant(args) -> tuple[str, str | None] | None:
    from zerolm.errors import ZeroLMError

    if args.assistant is None:
        if args.faq_index is not None:
            raise ZeroLMError("--faq-index belongs to --assistant JOINT[,OOS]")
        return None
    names = [n.strip() for n in args.assistant.split(",")]
    if not 1 <= len(names) <= 2 or not all(names):
        raise ZeroLMError(f"--assistant {args.assistant!r}: give JOINT or JOINT,OOS (names of served models)")
    return names[0], names[1] if len(names) == 2 else None


def run(args) -> int:
    import logging

    try:
        import uvicorn
    except ImportError:
        from zerolm.errors import ZeroLMError

        raise ZeroLMError("zerolm serve needs FastAPI and uvicorn: pip install 'zerolm[serve]'") from None
    import zerolm
    from zerolm.errors import ZeroLMError
    from zerolm.serve import ServeSettings, create_app

    settings = ServeSettings(max_batch_size=args.max_batch_size, max_wait_ms=args.max_wait_ms,
                             max_batch_tokens=args.max_batch_tokens, max_queue=args.max_queue,
                             timeout_s=args.timeout, max_body=args.max_body, max_inputs=args.max_inputs,
                             max_new_tokens=args.max_new_tokens, max_num_beams=args.max_num_beams, truncate=not args.no_truncate,
                             api_key=args.api_key, cors=tuple(args.cors), threads=args.threads,
                             assistant=_assistant(args), faq_index=args.faq_index,
                             min_faq_score=args.min_faq_score)
    if args.threads:  # before loading: an ONNX session takes its thread count when it starts
        import torch

        torch.set_num_threads(args.threads)
    models = {}
    for spec in args.models:
        name, path = model_name(spec)
        if name in models:
            raise ZeroLMError(f"two models are named {name!r}; name them apart with NAME=PATH")
        models[name] = zerolm.load(path, device=args.device)
        print(f"loaded {name}: {path}")
    app = create_app(models, settings)
    if args.host not in ("127.0.0.1", "localhost", "::1") and not app.state.server.settings.api_key:
        logging.getLogger(__name__).warning("binding %s without --api-key: anyone who reaches this machine can "
                                            "use the models", args.host)
    print(f"serving on http://{args.host}:{args.port}/  (OpenAPI at /docs; Ctrl+C stops)")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info",
                timeout_graceful_shutdown=int(settings.timeout_s) + 1)
    return 0
