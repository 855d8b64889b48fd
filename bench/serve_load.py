"""Serving under load: `zerolm serve` (dynamic micro-batching) side by side with the same
server without batching and with the FastAPI + transformers server a user would write.

Every server is a subprocess of this script on a free loopback port, started, waited for
(/readyz) and stopped (SIGTERM) by it, one at a time. The load comes from this process:
asyncio + aiohttp (a pool of as many connections as clients), each client sending
its requests one after another, one SST-2 dev sentence per request (cycled), POST
/v1/classify {"input": TEXT}. The model: the MiniLM-L6 SST-2 classifier of the shipped recipe
configs/sst2_minilm.yaml (default runs/bench_distill/teacher/best).

  a  batched    zerolm serve MODEL --threads 2 (default batching knobs unless given here),
                2,000 requests from 64 clients: errors, req/s, p50 / p95 / p99 latency
  b  unbatched  the same with --max-batch-size 1            target: a >= 3x b in req/s
  c  baseline   FastAPI app calling a transformers text-classification pipeline per request
                in a plain `def` endpoint (FastAPI's thread pool), torch.set_num_threads(2),
                uvicorn; the same model in Hugging Face format; its labels must equal
                zerolm's                                    target: a >= 3x c, p95 a < p95 c
  d  latency    16 clients against a's server: p95 <= max-wait-ms + 2 batch times (the mean
                classify batch time of this part, zerolm_batch_seconds sum / count of /metrics)
  e  memory     VmRSS of a fresh batched server after its first 1,000 and after 20,000
                requests (64 clients)                       target: change within 5 %
  f  fuzz       1,000 hypothesis-made bodies (random JSON, wrong types, missing and unknown
                fields, huge / empty / unicode / lone-surrogate texts, odd options, broken
                JSON) to every POST route of a server of tiny classifier + tagger + GPT
                (trained into --fuzz-dir when missing)      target: 0 answers 5xx
Every part: 0 errors (non-200 answers or failed connections) under load.

`zerolm convert --to hf` exports pretraining models only (it refuses a fine-tuned model's
task head), so the baseline's model is built here: the body through zerolm.convert.hf.
export_hf, plus the classifier's weights under BertForSequenceClassification's names and
the labels in config.json. BertForSequenceClassification pools with the [CLS] pooler; the
recipe's classifier was trained on the mean of the final states (task.pooling: mean), so the
baseline loads it into a 6-line subclass whose forward pools that way (same weights, same
cost up to one 384 x 384 pooler product it skips).

Run it on a quiet machine (every count is an option; --parts picks parts):

    ZEROLM_DATA=/work/shared/data python bench/serve_load.py --model runs/bench_distill/teacher/best

Development (tiny model, short): --model runs/tiny_classify_reviews/best --requests 200
--clients 16 --mem-first 100 --mem-requests 400 --fuzz-examples 50
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import BaseModel

from common import cpu_name, emit, environment

REPO = Path(__file__).resolve().parent.parent
ROUTES = ("/v1/classify", "/v1/tag", "/v1/generate", "/v1/embeddings")
# the fuzz server's tiny models: (recipe in configs/tiny, overrides, the model's folder in its run)
TINY = {"clf": ("classify_reviews.yaml", (), "best"), "ner": ("tag_ner.yaml", ("task.crf=true",), "best"),
        "gpt": ("gpt_char.yaml", (), "final")}
FUZZ_MAX_NEW_TOKENS = 32  # the fuzz server's generation limit (short generations keep it quick)


# ---------------------------------------------------------------------- servers
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def zerolm_command() -> list[str]:
    exe = Path(sys.executable).with_name("zerolm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "zerolm.cli.main"]


class Server:
    """A server subprocess on a free loopback port: started and waited for on enter,
    SIGTERM on exit. Its output goes to `log`."""

    def __init__(self, name: str, argv: list[str], log: Path, cpus: set[int] | None = None):
        self.name, self.log, self.cpus = name, log, cpus
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.argv = [a.replace("{port}", str(self.port)) for a in argv]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> Server:
        cpus = self.cpus
        self._out = open(self.log, "w")
        print(f"[{self.name}] {' '.join(self.argv)}", flush=True)
        self.proc = subprocess.Popen(self.argv, stdout=self._out, stderr=subprocess.STDOUT,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
        deadline = time.monotonic() + 600
        while True:
            if self.proc.poll() is not None:
                self.__exit__()
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode} before it was ready:\n"
                                   + self.tail())
            try:
                if httpx.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError(f"{self.name} was not ready within 600 s:\n" + self.tail())
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(90)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()

    def rss_mb(self) -> float:
        """Resident memory of the server process (VmRSS), MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS line")

    def metrics(self) -> list[tuple[str, dict[str, str], float]]:
        """The samples of /metrics: (name, labels, value)."""
        out = []
        for line in httpx.get(self.url + "/metrics", timeout=30).text.splitlines():
            m = re.match(r"^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)$", line)
            if m and not line.startswith("#"):
                labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
                out.append((m.group(1), labels, float(m.group(3))))
        return out

    def tail(self, n: int = 40) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-n:])

    def tracebacks(self) -> list[str]:
        """The tracebacks the server logged (each from 'Traceback' to its exception line)."""
        found, cur = [], None
        for line in self.log.read_text(errors="replace").splitlines():
            if line.startswith("Traceback"):
                cur = [line]
            elif cur is not None:
                cur.append(line)
                if line and not line.startswith((" ", "\t")):
                    found.append("\n".join(cur))
                    cur = None
        return found


def metric(samples, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples if n == name and all(lab.get(k) == x for k, x in labels.items()))


def batches(before, after) -> tuple[float, float]:
    """Mean rows and milliseconds of the classify batches run between two /metrics samples."""
    def delta(name: str) -> float:
        return metric(after, name, work="classify") - metric(before, name, work="classify")

    n = max(1.0, delta("zerolm_batch_seconds_count"))
    return delta("zerolm_batch_size_sum") / n, 1000 * delta("zerolm_batch_seconds_sum") / n


# ---------------------------------------------------------------------- load
@dataclass
class Load:
    requests: int
    clients: int
    wall_s: float
    latencies_ms: list[float]  # sorted
    statuses: Counter

    @property
    def errors(self) -> int:
        return sum(n for s, n in self.statuses.items() if s != "200")

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.wall_s

    def p(self, q: float) -> float:
        xs = self.latencies_ms
        return xs[min(len(xs) - 1, max(0, math.ceil(q / 100 * len(xs)) - 1))]

    def summary(self) -> dict:
        return {"requests": self.requests, "clients": self.clients, "errors": self.errors,
                "statuses": dict(self.statuses), "wall_s": round(self.wall_s, 2), "req_per_s": round(self.rps, 1),
                "p50_ms": round(self.p(50), 1), "p95_ms": round(self.p(95), 1), "p99_ms": round(self.p(99), 1)}

    def line(self) -> str:
        return (f"{self.rps:.1f} req/s, p50/p95/p99 {self.p(50):.0f}/{self.p(95):.0f}/{self.p(99):.0f} ms, "
                f"{self.errors} errors")


async def _client(session, url: str, texts: list[str], todo, latencies: list[float], statuses: Counter) -> None:
    """One client: requests one after another while `todo` (shared by the clients) lasts."""
    import aiohttp

    for i in todo:
        t = time.perf_counter()
        try:
            async with session.post(url + "/v1/classify", json={"input": texts[i % len(texts)]}) as r:
                await r.read()
                status = str(r.status)
        except (aiohttp.ClientError, asyncio.TimeoutError) as e:
            status = type(e).__name__
        latencies.append((time.perf_counter() - t) * 1000)
        statuses[status] += 1


async def _drive(url: str, texts: list[str], chunks: list[int], clients: int, start: int,
                 after_chunk=None) -> list[Load]:
    """Run `chunks` of requests one after another, each from `clients` concurrent clients;
    `after_chunk(i)` is called between chunks, with no request in flight. The load comes
    from aiohttp (its HTTP parser is C), so that the client takes as little of the
    machine's two cores from the server as a Python client can."""
    import aiohttp

    out = []
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        for k, n in enumerate(chunks):
            todo = iter(range(start, start + n))
            start += n
            latencies: list[float] = []
            statuses: Counter = Counter()
            t0 = time.perf_counter()
            await asyncio.gather(*(_client(session, url, texts, todo, latencies, statuses)
                                   for _ in range(min(clients, n))))
            out.append(Load(n, clients, time.perf_counter() - t0, sorted(latencies), statuses))
            if after_chunk is not None:
                after_chunk(k)
    return out


def drive(url: str, texts: list[str], requests: int, clients: int, warmup: int) -> Load:
    """`warmup` requests (not counted), then `requests` timed ones, from `clients` clients."""
    chunks = ([warmup] if warmup else []) + [requests]
    return asyncio.run(_drive(url, texts, chunks, clients, 0))[-1]


def sst2_texts() -> list[str]:
    from zerolm.data.text import resolve_data_path

    lines = resolve_data_path("sst2/dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [ln.split("\t")[0] for ln in lines if ln.strip()]


# ---------------------------------------------------------------------- the baseline
class ClassifyBody(BaseModel):
    input: str
    model: str | None = None


def export_hf_classifier(model_dir: str, out: Path) -> tuple[dict, object]:
    """The zerolm classifier as a Hugging Face BERT directory (see the docstring for why
    not `zerolm convert --to hf`); returns its config and the zerolm Predictor."""
    from safetensors.torch import load_file, save_file

    import zerolm
    from zerolm.convert.hf import export_hf
    from zerolm.models import build_model

    pred = zerolm.load(model_dir)
    clf = pred.model
    if getattr(pred.task, "name", None) != "classify" or clf.config.family != "bert":
        raise SystemExit(f"{model_dir}: the baseline needs a BERT-family classifier")
    pre = build_model(clf.config)
    pre.body.load_state_dict(clf.body.state_dict())
    export_hf(pre, out, tokenizer=pred.tokenizer)
    # the untrained masked-LM head (cls.*) is no part of the classifier; its head is
    sd = {k: v for k, v in load_file(str(out / "model.safetensors")).items() if not k.startswith("cls.")}
    sd["classifier.weight"] = clf.classifier.weight.detach().contiguous()
    sd["classifier.bias"] = clf.classifier.bias.detach().contiguous()
    save_file(sd, str(out / "model.safetensors"), metadata={"format": "pt"})
    labels = list(pred.task.label_names)
    pooling = clf.pooling if clf.pooling == "mean" or clf.config.pooler else "cls"  # "first" without a pooler
    cfg = json.loads((out / "config.json").read_text())
    cfg.update(architectures=["BertForSequenceClassification"], id2label=dict(enumerate(labels)),
               label2id={name: i for i, name in enumerate(labels)}, zerolm_pooling=pooling,
               zerolm_max_length=pred.task.max_length)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return cfg, pred


def hf_classifier(hf_dir: str):
    """The exported classifier as transformers loads it: the stock BertForSequenceClassification
    for [CLS]-pooler pooling, else a subclass that pools as the zerolm model was trained."""
    import transformers
    from transformers.modeling_outputs import SequenceClassifierOutput

    pooling = getattr(transformers.AutoConfig.from_pretrained(hf_dir), "zerolm_pooling", "first")
    if pooling == "first":
        return transformers.BertForSequenceClassification.from_pretrained(hf_dir)

    # named as its parent, so that the pipeline's check of supported models knows it
    class BertForSequenceClassification(transformers.BertForSequenceClassification):
        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, **kwargs):
            h = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
            if pooling == "cls":
                pooled = h[:, 0]  # (B, D)
            else:  # the mean over real tokens
                m = attention_mask[:, :, None].to(h.dtype)  # (B, T, 1)
                pooled = (h * m).sum(1) / m.sum(1).clamp(min=1.0)  # (B, D)
            return SequenceClassifierOutput(logits=self.classifier(self.dropout(pooled)))

    return BertForSequenceClassification.from_pretrained(hf_dir)


def run_baseline_app(hf_dir: str, port: int, threads: int) -> None:
    """The server a user would write: a transformers pipeline called per request in a plain
    `def` endpoint (FastAPI runs it in its thread pool), served by uvicorn."""
    import torch
    import uvicorn
    from fastapi import FastAPI
    from transformers import AutoTokenizer, pipeline

    torch.set_num_threads(threads)
    model = hf_classifier(hf_dir)
    max_length = model.config.zerolm_max_length
    classifier = pipeline("text-classification", model=model, tokenizer=AutoTokenizer.from_pretrained(hf_dir),
                          device="cpu")
    app = FastAPI()

    @app.post("/v1/classify")
    def classify(body: ClassifyBody):
        out = classifier(body.input, truncation=True, max_length=max_length)[0]
        return {"data": [{"label": out["label"], "score": out["score"]}]}

    @app.get("/readyz")
    def readyz():
        return {"status": "ready"}

    uvicorn.run(app, host="127.0.0.1", port=port)


# ---------------------------------------------------------------------- fuzz
def fuzz_strategies(models: list[str], max_body: int):
    """route -> strategy of (content type, body bytes): well-formed bodies of the route (odd
    values included), the same with one field set to any JSON value, objects of any fields,
    any JSON value, and bytes that may not be JSON at all."""
    from hypothesis import strategies as st

    surrogate = st.integers(0xD800, 0xDFFF).map(chr)  # valid as a JSON escape, not as UTF-8
    text = st.one_of(
        st.text(min_size=1, max_size=60),
        st.text(st.characters() | surrogate, min_size=1, max_size=10),
        st.sampled_from(["", " ", "\t\n", "\u200b", "\x00", "[CLS] [SEP] [PAD] [MASK] [UNK]", "a gripping film",
                         "<|endoftext|>", "\U0001f600" * 3, "\u0301" * 50]),
        st.integers(0, 2 * max_body).map(lambda n: "great film " * (n // 11)),  # long, and over --max-body
    )
    js = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                      lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                                   max_size=4),
                      max_leaves=10)
    texts = text | st.lists(text, min_size=1, max_size=6)
    generate = {"temperature": st.floats(0, 2) | st.floats(), "top_k": st.integers(0, 50) | st.integers(),
                "top_p": st.floats(0, 1) | st.floats(), "repetition_penalty": st.floats(0.5, 2) | st.floats(),
                "greedy": st.booleans(), "stop": texts, "seed": st.none() | st.integers(0, 2**32) | st.integers(),
                "stream": st.booleans()}
    embeddings = {"encoding_format": st.sampled_from(["float", "base64", "int8"]),
                  "dimensions": st.none() | st.sampled_from([32, 384]) | st.integers(), "user": st.none() | text}
    options = {"/v1/generate": generate, "/v1/embeddings": embeddings}
    required = {"/v1/generate": {"max_new_tokens": st.integers(-1, FUZZ_MAX_NEW_TOKENS + 4)}}
    fields = ["model", "input", "max_new_tokens", *generate, *embeddings, "inputs", ""]
    raw = st.sampled_from([b"", b"{", b'{"input": "a"', b'{"input": "a"}}', b"\xff\xfe{}", b"null", b"[]", b"NaN",
                           b'{"input": "\\ud800"}', b'{"input": "a", "input": 3}']) | st.binary(max_size=80)
    own = {"/v1/classify": "clf", "/v1/tag": "ner", "/v1/generate": "gpt", "/v1/embeddings": "clf"}

    def bodies(route: str):
        valid = st.fixed_dictionaries({"model": st.just(own[route]) | st.sampled_from(models), "input": texts,
                                       **required.get(route, {})}, optional=options.get(route, {}))
        spoilt = st.tuples(valid, st.sampled_from(fields) | st.text(max_size=8), js).map(
            lambda t: {**t[0], t[1]: t[2]})
        odd = st.dictionaries(st.sampled_from(fields) | st.text(max_size=8), js | texts, max_size=5)
        as_json = st.one_of(valid, valid, spoilt, odd, js).map(lambda b: ("application/json", json.dumps(b).encode()))
        return as_json | st.tuples(st.sampled_from(["application/json", "text/plain", None]), raw)

    return st.fixed_dictionaries({route: bodies(route) for route in ROUTES})


EDGES = [  # odd values at the edges of what the model code takes: sent first, every run
    ("/v1/classify", {"model": "clf", "input": "a lone surrogate \ud800"}),
    ("/v1/tag", {"model": "ner", "input": ["fine", "\udfff"]}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "temperature": 1e-40}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "temperature": 1e-300, "stream": True}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "repetition_penalty": 1e-300}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "seed": 2**64}),
    ("/v1/generate", {"model": "gpt", "input": "a", "max_new_tokens": 2, "top_k": 2**70, "top_p": 5e-324}),
    ("/v1/generate", {"model": "gpt", "input": "long " * 5000, "max_new_tokens": 2}),
    ("/v1/embeddings", {"model": "gpt", "input": "a", "dimensions": 2**70}),
]


def verdict(r: httpx.Response) -> str:
    """'5xx', 'bad shape' (a non-200 answer without {"error": {"message", "type", "code"}} and
    code == status) or 'ok'; a 200 stream with an error event of code >= 500 is '5xx'."""
    if r.status_code >= 500:
        return "5xx"
    if r.status_code == 200:
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            for line in r.text.splitlines():
                if line.startswith("data: {") and json.loads(line[6:]).get("error", {}).get("code", 0) >= 500:
                    return "5xx"
        return "ok"
    try:
        e = r.json()["error"]
        good = isinstance(e["message"], str) and isinstance(e["type"], str) and e["code"] == r.status_code
    except (ValueError, KeyError, TypeError):
        good = False
    return "ok" if good else "bad shape"


def fuzz(url: str, examples: int, seed: int, max_body: int) -> dict:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hseed

    found: dict[str, list[str]] = {"5xx": [], "bad shape": [], "no answer": []}
    counts: Counter = Counter()
    statuses: Counter = Counter()
    client = httpx.Client(base_url=url, timeout=120)

    def send(route: str, content_type: str | None, content: bytes) -> None:
        try:
            r = client.post(route, content=content, headers={"content-type": content_type} if content_type else {})
            v = verdict(r)
            statuses[f"{route} {r.status_code}"] += 1
            answer = f"{r.status_code} {r.text[:600]}"
        except httpx.HTTPError as e:
            v, answer = "no answer", repr(e)
        counts[v] += 1
        if v != "ok":
            found[v].append(f"POST {route} {content[:400]!r}\n  -> {answer}")

    for route, body in EDGES:
        send(route, "application/json", json.dumps(body).encode())

    @hseed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(cases=fuzz_strategies(list(TINY), max_body))
    def run(cases):
        for route, (content_type, content) in cases.items():
            send(route, content_type, content)

    t = time.perf_counter()
    run()
    client.close()
    return {"examples": examples, "requests": sum(counts.values()), "edges": len(EDGES),
            "seconds": round(time.perf_counter() - t, 1), "5xx": counts["5xx"], "bad_shape": counts["bad shape"],
            "no_answer": counts["no answer"], "statuses": dict(sorted(statuses.items())),
            "found": {k: v[:20] for k, v in found.items() if v}}


def tiny_models(fuzz_dir: Path, given: list[str]) -> list[str]:
    """NAME=PATH of the fuzz server's models: the given ones, the others trained (once) into
    fuzz_dir from the shipped tiny recipes."""
    specs = dict(s.split("=", 1) for s in given)
    for name, (recipe, overrides, sub) in TINY.items():
        if name in specs:
            continue
        run = fuzz_dir / name
        if not (run / sub).is_dir():
            verb = "pretrain" if recipe.startswith("gpt") else "finetune"
            argv = [*zerolm_command(), verb, str(REPO / "configs" / "tiny" / recipe), f"out_dir={run}",
                    "train.progress=false", *overrides]
            print(f"[fuzz] training {name}: {' '.join(argv)}", flush=True)
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        specs[name] = str(run / sub)
    return [f"{n}={p}" for n, p in specs.items()]


# ---------------------------------------------------------------------- main
def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("zerolm", "torch", "transformers", "tokenizers", "fastapi", "starlette", "uvicorn", "pydantic",
                "httpx", "hypothesis"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="runs/bench_distill/teacher/best", help="the classifier to serve")
    ap.add_argument("--serve-model", default=None,
                    help="what zerolm serves (default --model): e.g. the ONNX export of --model, the same model "
                         "run by onnxruntime; the baseline always runs --model through transformers")
    ap.add_argument("--parts", default="abcdef", help="which parts to run (letters of the docstring)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every server")
    ap.add_argument("--clients", type=int, default=64, help="concurrent clients of parts a, b, c, e")
    ap.add_argument("--requests", type=int, default=2000, help="timed requests of parts a, b, c")
    ap.add_argument("--warmup", type=int, default=128, help="untimed requests before each timed run")
    ap.add_argument("--latency-clients", type=int, default=16, help="clients of part d")
    ap.add_argument("--latency-requests", type=int, default=1000, help="timed requests of part d")
    ap.add_argument("--mem-first", type=int, default=1000, help="part e: RSS after this many requests ...")
    ap.add_argument("--mem-requests", type=int, default=20000, help="... and after this many in all")
    ap.add_argument("--check", type=int, default=32, help="sentences whose baseline labels must equal zerolm's")
    ap.add_argument("--fuzz-examples", type=int, default=1000, help="part f: hypothesis examples (x 4 routes)")
    ap.add_argument("--fuzz-seed", type=int, default=0)
    ap.add_argument("--fuzz-dir", default="runs/bench_serve_fuzz", help="where the tiny fuzz models are trained")
    ap.add_argument("--fuzz-model", action="append", default=[], metavar="NAME=PATH",
                    help="a fuzz model instead of training it (NAME: clf, ner or gpt)")
    ap.add_argument("--fuzz-max-body", type=int, default=200_000, help="--max-body of the fuzz server")
    ap.add_argument("--max-batch-size", type=int, default=None, help="zerolm serve knob for parts a, d, e")
    ap.add_argument("--max-wait-ms", type=float, default=None, help="zerolm serve knob for parts a, d, e (default 5)")
    ap.add_argument("--max-batch-tokens", type=int, default=None, help="zerolm serve knob for parts a, d, e")
    ap.add_argument("--server-cpus", default=None, help="pin every server to these CPUs (e.g. 0,1); default: none")
    ap.add_argument("--work-dir", default=None, help="server logs and the HF export (default: a temp folder)")
    ap.add_argument("--baseline-app", default=None, help=argparse.SUPPRESS)  # internal: run the baseline server
    ap.add_argument("--port", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.baseline_app:
        run_baseline_app(args.baseline_app, args.port, args.threads)
        return 0

    t_start = time.perf_counter()
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="serve_load_"))
    work.mkdir(parents=True, exist_ok=True)
    cpus = {int(c) for c in args.server_cpus.split(",")} if args.server_cpus else None
    texts = sst2_texts()
    knobs = [f"--{k}={v}" for k, v in (("max-batch-size", args.max_batch_size), ("max-wait-ms", args.max_wait_ms),
                                       ("max-batch-tokens", args.max_batch_tokens)) if v is not None]
    max_wait_ms = args.max_wait_ms if args.max_wait_ms is not None else 5.0
    served = args.serve_model or args.model
    serve = [*zerolm_command(), "serve", served, "--port", "{port}", "--threads", str(args.threads)]
    rows: list[list[str]] = []
    res: dict = {}
    ok: dict[str, bool] = {}
    print(f"{len(texts)} SST-2 dev sentences; CPU {cpu_name()}, {os.cpu_count()} cores; logs in {work}", flush=True)

    def row(part, what, result, target="", passed=None):
        rows.append([part, what, result, target, "" if passed is None else ("PASS" if passed else "FAIL")])

    if "a" in args.parts or "d" in args.parts:
        with Server("batched", [*serve, *knobs], work / "batched.log", cpus) as srv:
            if "a" in args.parts:
                drive(srv.url, texts, args.warmup, args.clients, 0)
                m0 = srv.metrics()
                a = drive(srv.url, texts, args.requests, args.clients, 0)
                rows_per_batch, batch_ms = batches(m0, srv.metrics())
                res["a"] = {**a.summary(), "rss_mb": round(srv.rss_mb(), 1), "rows_per_batch": round(rows_per_batch, 1),
                            "batch_ms": round(batch_ms, 2)}
                ok["a"] = a.errors == 0
                row("a", f"zerolm batched, {args.clients} clients", a.line()
                    + f", {rows_per_batch:.1f} rows/batch of {batch_ms:.1f} ms", "0 errors", ok["a"])
            if "d" in args.parts:
                drive(srv.url, texts, args.warmup, args.latency_clients, 0)
                m0 = srv.metrics()
                d = drive(srv.url, texts, args.latency_requests, args.latency_clients, 0)
                rows_per_batch, batch_ms = batches(m0, srv.metrics())
                bound = max_wait_ms + 2 * batch_ms
                ok["d"] = d.errors == 0 and d.p(95) <= bound
                res["d"] = {**d.summary(), "rows_per_batch": round(rows_per_batch, 1), "batch_ms": round(batch_ms, 2),
                            "max_wait_ms": max_wait_ms,
                            "p95_bound_ms": round(bound, 2)}
                row("d", f"zerolm batched, {args.latency_clients} clients", d.line(),
                    f"p95 {d.p(95):.1f} <= {max_wait_ms:g} + 2 x {batch_ms:.1f} = {bound:.1f} ms", ok["d"])

    if "b" in args.parts:
        with Server("unbatched", [*serve, *knobs, "--max-batch-size", "1"], work / "unbatched.log", cpus) as srv:
            b = drive(srv.url, texts, args.requests, args.clients, args.warmup)
        res["b"] = b.summary()
        ok["b"] = b.errors == 0 and "a" in res and res["a"]["req_per_s"] >= 3 * b.rps
        ratio = res["a"]["req_per_s"] / b.rps if "a" in res else float("nan")
        res["b"]["a_over_b"] = round(ratio, 2)
        row("b", "zerolm --max-batch-size 1", b.line(), f"a/b {ratio:.2f}x >= 3x", ok["b"])

    if "c" in args.parts:
        hf_dir = work / "hf_classifier"
        _, pred = export_hf_classifier(args.model, hf_dir)
        sample = texts[:args.check]
        want = pred.predict(sample)
        del pred
        argv = [sys.executable, str(Path(__file__).resolve()), "--baseline-app", str(hf_dir), "--port", "{port}",
                "--threads", str(args.threads)]
        with Server("baseline", argv, work / "baseline.log", cpus) as srv:
            got = [httpx.post(srv.url + "/v1/classify", json={"input": t}, timeout=60).json()["data"][0]
                   for t in sample]
            c = drive(srv.url, texts, args.requests, args.clients, args.warmup)
            res["c_rss_mb"] = round(srv.rss_mb(), 1)
        same = sum(g["label"] == w["label"] for g, w in zip(got, want))
        score_diff = max(abs(g["score"] - w["score"]) for g, w in zip(got, want))
        res["c"] = {**c.summary(), "labels_equal": f"{same}/{len(sample)}", "max_score_diff": score_diff}
        ratio = res["a"]["req_per_s"] / c.rps if "a" in res else float("nan")
        res["c"]["a_over_c"] = round(ratio, 2)
        ok["c"] = (c.errors == 0 and same == len(sample) and "a" in res and ratio >= 3
                   and res["a"]["p95_ms"] < c.p(95))
        row("c", "FastAPI + transformers pipeline", c.line(),
            f"a/c {ratio:.2f}x >= 3x; p95 a {res.get('a', {}).get('p95_ms', float('nan')):.0f} < "
            f"{c.p(95):.0f} ms; labels {same}/{len(sample)} equal (score diff {score_diff:.1e})", ok["c"])
        shutil.rmtree(hf_dir, ignore_errors=True)

    if "e" in args.parts:
        first = min(args.mem_first, args.mem_requests)
        rest = args.mem_requests - first
        chunks = [first] + ([rest // 4] * 3 + [rest - 3 * (rest // 4)] if rest >= 4 else [rest] if rest else [])
        with Server("memory", [*serve, *knobs], work / "memory.log", cpus) as srv:
            trace = [(0, round(srv.rss_mb(), 1))]
            done = [0]

            def sample_rss(k: int) -> None:
                done[0] += chunks[k]
                trace.append((done[0], round(srv.rss_mb(), 1)))

            loads = asyncio.run(_drive(srv.url, texts, chunks, args.clients, 0, sample_rss))
        rss_first, rss_last = trace[1][1], trace[-1][1]
        change = 100 * (rss_last - rss_first) / rss_first
        errors = sum(x.errors for x in loads)
        ok["e"] = errors == 0 and abs(change) <= 5
        res["e"] = {"rss_trace": trace, "rss_first_mb": rss_first, "rss_last_mb": rss_last,
                    "change_pct": round(change, 2), "errors": errors,
                    "req_per_s": round(sum(x.requests - x.errors for x in loads) / sum(x.wall_s for x in loads), 1)}
        row("e", f"zerolm batched, {args.clients} clients", f"RSS {rss_first:.0f} MB after {first}, {rss_last:.0f} MB "
            f"after {args.mem_requests} ({change:+.1f} %), {errors} errors", "change within 5 %", ok["e"])

    if "f" in args.parts:
        specs = tiny_models(Path(args.fuzz_dir), args.fuzz_model)
        argv = [*zerolm_command(), "serve", *specs, "--port", "{port}", "--threads", str(args.threads),
                "--max-new-tokens", str(FUZZ_MAX_NEW_TOKENS), "--max-inputs", "16", "--max-body",
                str(args.fuzz_max_body)]
        with Server("fuzz", argv, work / "fuzz.log", cpus) as srv:
            f = fuzz(srv.url, args.fuzz_examples, args.fuzz_seed, args.fuzz_max_body)
            alive = httpx.get(srv.url + "/healthz", timeout=10).status_code == 200
        distinct: dict[str, list] = {}  # the server's tracebacks by where they ended and how
        for tb in srv.tracebacks():
            lines = tb.splitlines()
            where = next((ln.strip() for ln in reversed(lines) if ln.strip().startswith("File ")), "")
            distinct.setdefault(where + " | " + lines[-1], [0, tb])[0] += 1
        f["tracebacks"] = [{"count": n, "where": k.split(" | ")[0], "error": k.split(" | ", 1)[1]}
                           for k, (n, _) in distinct.items()]
        f["server_alive"] = alive
        res["f"] = f
        ok["f"] = f["5xx"] == 0 and f["bad_shape"] == 0 and f["no_answer"] == 0 and alive
        row("f", "zerolm, tiny clf + ner + gpt", f"{f['requests']} requests ({f['examples']} examples x 4 routes + "
            f"{f['edges']} edges): {f['5xx']} 5xx, {f['bad_shape']} bad error shape, {f['no_answer']} no answer",
            "0 5xx", ok["f"])
        for kind, items in f["found"].items():
            print(f"\n--- fuzz: {kind} (the first {min(10, len(items))})")
            for it in items[:10]:
                print(it)
        if f["no_answer"]:
            print("(a connection reset right after an unhandled server exception on the same keep-alive "
                  "connection is a consequence of that exception)")
        for n, tb in distinct.values():
            print(f"\n--- fuzz server traceback, {n} times:\n{tb}")
        print()

    emit(rows, ["part", "server", "result", "target", "ok"],
         {"bench": "serve_load", "model": args.model, "served": args.serve_model or args.model, "parts": args.parts, "threads": args.threads,
          "knobs": knobs, "server_cpus": args.server_cpus, "results": res, "pass": ok,
          "cpu": cpu_name(), "cores": os.cpu_count(), "versions": versions(), "env": environment(),
          "wall_s": round(time.perf_counter() - t_start, 1)})
    return 0 if all(ok.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
