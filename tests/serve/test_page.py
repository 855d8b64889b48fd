"""The web page of `zerolm serve` in a real browser (Debian's chromium driven by
Playwright) against the real server on a loopback port: it asks for the API key, and for
each kind of model shows what `zerolm.load(dir)` predicts for the same text.

Skipped when playwright or chromium is not installed (no browser is ever downloaded).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from serve_helpers import live

sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the page test needs playwright (pip install playwright; no browser download)")

API_KEY = "page-test-key"
TIMEOUT_MS = 15_000  # per browser wait; the tiny models answer in milliseconds

# Sentences shaped like the tiny tagger's training data; the test uses the first one the
# tagger finds an entity in (it is a tiny model: which ones it gets right may change).
TAG_CANDIDATES = [
    "The new station in Marrow Hill was opened by Orchard Lane Bakery on Monday.",
    "The cooks in Lake Venn use fresh herbs from the hills.",
    "Nobody at Saltmere City Council expected the snow.",
    "John Smith visited Lake Venn on Monday.",
]

CORPUS = [
    "The rain fell softly on the roofs of the village.",
    "A grey cloud came over the hills by noon.",
    "The vacuum cleaner makes cleaning almost enjoyable.",
    "The story is simple, but the telling is wonderful.",
    "Children dropped leaves into the water and followed them.",
    "This jacket kept me dry on a long hike.",
]


def chromium_path() -> str | None:
    found = shutil.which("chromium") or "/usr/bin/chromium"
    return found if Path(found).exists() else None


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def server_url(predictors):
    """The real app with an API key (tests/serve/conftest.py's tiny models), served by
    uvicorn in a thread."""
    from zerolm.serve import ServeSettings, create_app

    with live(create_app(predictors, ServeSettings(api_key=API_KEY))) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    path = chromium_path()
    if path is None:
        pytest.skip("the page test needs chromium (apt-get install chromium); browsers are never downloaded")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A browser tab on the page that records what would make the page broken though it
    looks fine: script errors, and requests to anywhere but the server."""

    def __init__(self, browser, url: str, *, with_key: bool):
        self.context = browser.new_context()
        if with_key:  # as if the user had entered the key in this tab before
            self.context.add_init_script(f"sessionStorage.setItem('zerolm.apiKey', {API_KEY!r})")
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.errors: list[str] = []
        self.outside: list[str] = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("request", lambda r: None if r.url.startswith(url) else self.outside.append(r.url))
        self.page.goto(url + "/")

    def choose(self, model: str, mode: str | None = None) -> None:
        self.page.locator(f"#model option[value='{model}']").wait_for(state="attached")
        self.page.select_option("#model", model)
        if mode is not None:
            self.page.select_option("#mode", mode)

    def close(self) -> None:
        shown = self.page.locator("#result").text_content() or ""
        self.context.close()
        leaked = [w for w in ("undefined", "null", "NaN", "[object") if w in shown]
        assert not leaked, f"the result shows {leaked}: {shown!r}"
        assert not self.errors, f"script errors on the page: {self.errors}"
        assert not self.outside, f"the page fetched from outside the server: {self.outside}"


@pytest.fixture
def tab(browser, server_url):
    t = Tab(browser, server_url, with_key=True)
    yield t
    t.close()


# ---------------------------------------------------------------- tests


def test_page_asks_for_the_api_key_then_lists_the_models(browser, server_url, predictors):
    t = Tab(browser, server_url, with_key=False)
    page = t.page
    sync_api.expect(page.locator("#error")).to_contain_text("API key")
    sync_api.expect(page.locator("#auth")).to_have_attribute("open", "")

    page.fill("#api-key", API_KEY)
    page.click("#api-key-save")
    sync_api.expect(page.locator("#error")).to_be_hidden()
    options = page.locator("#model option")
    sync_api.expect(options).to_have_count(len(predictors))
    assert sorted(options.evaluate_all("os => os.map(o => o.value)")) == sorted(predictors)
    sync_api.expect(page.locator("#model option[value='ner']")).to_have_text("ner (tag)")
    t.close()


def test_classifier_label_and_probability_bars_match_the_library(tab, predictors):
    text = "The soup was cold and the service was painfully slow."
    expected = predictors["clf"].predict(text)[0]
    page = tab.page
    tab.choose("clf", "classify")
    page.fill("#text", text)
    page.click("#run")

    sync_api.expect(page.get_by_test_id("label")).to_have_text(expected["label"])
    bars = page.get_by_test_id("prob")
    sync_api.expect(bars).to_have_count(len(expected["probs"]))
    shown = bars.evaluate_all(
        "rows => rows.map(r => [r.dataset.label, r.querySelector('.bar-value').textContent])")
    ranked = sorted(expected["probs"].items(), key=lambda kv: -kv[1])
    assert shown == [[label, f"{100 * p:.1f}%"] for label, p in ranked]
    assert page.locator("#error").is_hidden()


def test_tagger_entities_are_marked_inline_and_listed(tab, predictors):
    preds = predictors["ner"].predict(TAG_CANDIDATES)
    found = [(text, p["entities"]) for text, p in zip(TAG_CANDIDATES, preds) if p["entities"]]
    assert found, f"the tiny tagger found no entity in any of {TAG_CANDIDATES}: {preds}"
    text, entities = found[0]
    page = tab.page
    tab.choose("ner")
    page.fill("#text", text)
    page.press("#text", "Control+Enter")  # the keyboard shortcut runs too

    marks = page.locator("[data-testid=tagged] mark")
    sync_api.expect(marks).to_have_count(len(entities))
    shown = marks.evaluate_all(
        "ms => ms.map(m => [m.dataset.type, m.querySelector('.entity-text').textContent])")
    assert shown == [[e["type"], e["text"]] for e in sorted(entities, key=lambda e: e["start"])]
    # the marked text still reads as the input, entity labels aside
    plain = page.get_by_test_id("tagged").evaluate(
        "p => { const c = p.cloneNode(true); c.querySelectorAll('.entity-type').forEach(x => x.remove());"
        " return c.textContent; }")
    assert plain == text
    sync_api.expect(page.get_by_test_id("entity-row")).to_have_count(len(entities))


def test_generation_streams_the_librarys_greedy_continuation(tab, predictors):
    prompt = "In the valley, the weather"
    expected = predictors["gpt"].generate(prompt, max_new_tokens=24, temperature=0)[0]
    page = tab.page
    tab.choose("gpt")
    page.fill("#text", prompt)
    page.fill("#max-new-tokens", "24")
    page.fill("#temperature", "0")
    with page.expect_response(lambda r: r.url.endswith("/v1/generate")) as answer:
        page.click("#run")
    assert answer.value.request.post_data_json["stream"] is True
    assert answer.value.headers["content-type"].startswith("text/event-stream")

    sync_api.expect(page.get_by_test_id("finish-reason")).to_have_attribute("data-reason", "length")
    assert page.get_by_test_id("completion").text_content() == expected

    page.fill("#max-new-tokens", "100000")  # over the server's limit: its message is shown
    page.click("#run")
    sync_api.expect(page.locator("#error")).to_contain_text("max_new_tokens")


def test_embeddings_rank_the_corpus_by_similarity(tab):
    page = tab.page
    tab.choose("clf", "embed")
    page.fill("#text", CORPUS[3])
    page.fill("#corpus", "\n".join(CORPUS) + "\n\n")  # blank lines are not sentences
    page.click("#run")

    rows = page.get_by_test_id("neighbour")
    sync_api.expect(rows).to_have_count(len(CORPUS))
    ranked = rows.evaluate_all(
        "rs => rs.map(r => [r.querySelector('.bar-label').textContent, Number(r.dataset.score)])")
    assert sorted(s for s, _ in ranked) == sorted(CORPUS)
    scores = [score for _, score in ranked]
    assert scores == sorted(scores, reverse=True)
    assert ranked[0][0] == CORPUS[3] and ranked[0][1] == pytest.approx(1.0, abs=1e-3)
