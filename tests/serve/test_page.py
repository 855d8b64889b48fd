"""The web page of `zerolm serve` in a real browser (Debian's chromium driven by
Playwright) against the real server on a loopback port: it asks for the API key, for
each kind of model shows what `zerolm.load(dir)` predicts for the same text, and chats
with the assistant (`--assistant`) as `zerolm.assistant.Assistant` answers.

Skipped when playwright or chromium is not installed (no browser is ever downloaded).
"""

from __future__ import annotations

import re
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

# Utterances shaped like the tiny joint model's training data (pkg:quickstart/slu_train.txt);
# the intent_slots test uses the first one it fills a slot in.
SLU_CANDIDATES = [
    "what is the weather in ashby cross tomorrow",
    "where is my order 12345",
    "find an italian restaurant for four people",
    "book a flight from boston to denver on monday",
]

# Messages for the assistant (its tiny out-of-scope model knows banking queries, the joint
# model travel and errands): whatever the tiny models make of them, the page must show
# what the library answers. OOS_CANDIDATES are ones that are likely out of scope.
ASSIST_MESSAGES = ["i lost my card", "book a flight from boston to denver on monday",
                   "find an italian restaurant for four people"]
OOS_CANDIDATES = ["tell me a joke about penguins", "set an alarm for 7 am", "play some jazz by miles davis",
                  "what is the weather in ashby cross tomorrow"]

ASSISTANT = "v1/assist"  # the assistant's entry in the model list (a route: no model's name has a "/")

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
def slu_models(joint_dir, oos_dir):
    """The assistant's models: the joint intent_slots model and the out-of-scope classifier."""
    import zerolm

    return {"slu": zerolm.load(joint_dir), "oos": zerolm.load(oos_dir)}


@pytest.fixture(scope="module")
def assistant_url(slu_models, faq_index):
    """A second server: the joint and out-of-scope models, with the assistant on (FAQ index
    included) and an API key."""
    from zerolm.serve import ServeSettings, create_app

    settings = ServeSettings(api_key=API_KEY, assistant=("slu", "oos"), faq_index=str(faq_index))
    with live(create_app(slu_models, settings)) as url:
        yield url


@pytest.fixture(scope="module")
def assistant(slu_models, faq_index):
    from zerolm.assistant import Assistant

    return Assistant(slu_models["slu"], oos=slu_models["oos"], index=faq_index)


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
        shown = "\n".join(self.page.locator(where).text_content() or "" for where in ("#result", "#chat"))
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


@pytest.fixture
def assistant_tab(browser, assistant_url):
    t = Tab(browser, assistant_url, with_key=True)
    yield t
    t.close()


def marked(locator) -> list[list[str]]:
    """[type, text] of each <mark> under `locator`, in order."""
    return locator.locator("mark").evaluate_all(
        "ms => ms.map(m => [m.dataset.type, m.querySelector('.entity-text').textContent])")


def unmarked(locator) -> str:
    """The text of a marked-up paragraph without the type labels of its marks."""
    return locator.evaluate(
        "p => { const c = p.cloneNode(true); c.querySelectorAll('.entity-type').forEach(x => x.remove());"
        " return c.textContent; }")


def spans(found: list[dict]) -> list[list[str]]:
    return [[e["type"], e["text"]] for e in sorted(found, key=lambda e: e["start"])]


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


@pytest.fixture(scope="module")
def t5_url(tiny_run):
    """A third server: the tiny English -> German T5, no API key."""
    import zerolm
    from zerolm.serve import ServeSettings, create_app

    pred = zerolm.load(tiny_run("seq2seq_translate.yaml", "train.max_steps=40") / "best")
    with live(create_app({"t5": pred}, ServeSettings())) as url:
        yield url, pred


def test_an_encoder_decoder_shows_its_target_decoded_with_beams(browser, t5_url):
    url, pred = t5_url
    t = Tab(browser, url, with_key=False)
    page = t.page
    t.choose("t5")
    sync_api.expect(page.locator("#model-info")).to_contain_text("decoding: greedy, up to 32 tokens")
    sync_api.expect(page.locator("#text-label")).to_have_text("Source")
    assert page.locator("#temperature").is_hidden() and page.locator("#num-beams").input_value() == "1"
    source = "Two dogs are playing in the snow."
    page.fill("#text", source)
    page.fill("#num-beams", "3")
    with page.expect_response(lambda r: r.url.endswith("/v1/generate")) as answer:
        page.click("#run")
    sent = answer.value.request.post_data_json
    assert sent["num_beams"] == 3 and "temperature" not in sent and sent["stream"] is True
    sync_api.expect(page.get_by_test_id("finish-reason")).to_have_attribute("data-reason", re.compile("stop|length"))
    assert page.get_by_test_id("completion").text_content() == pred.generate(source, num_beams=3)[0]
    assert source not in page.get_by_test_id("generation").text_content()  # the target alone, not source + target
    t.close()


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


def test_intent_slots_show_the_librarys_intent_and_slots(assistant_tab, slu_models):
    joint = slu_models["slu"]
    preds = joint.predict(SLU_CANDIDATES)
    found = [(text, p) for text, p in zip(SLU_CANDIDATES, preds) if p["slots"]]
    assert found, f"the tiny joint model filled no slot in any of {SLU_CANDIDATES}: {preds}"
    text, expected = found[0]
    page = assistant_tab.page
    assistant_tab.choose("slu", "intent_slots")
    page.fill("#text", text)
    page.click("#run")

    sync_api.expect(page.get_by_test_id("intent")).to_have_text(expected["intent"])
    sync_api.expect(page.get_by_test_id("intent-score")).to_have_text(f"{100 * expected['intent_score']:.1f}%")
    bars = page.get_by_test_id("prob")  # the classifier's bars, for the top intents
    sync_api.expect(bars).to_have_count(len(expected["intent_probs"]))
    shown = bars.evaluate_all(
        "rows => rows.map(r => [r.dataset.label, r.querySelector('.bar-value').textContent])")
    ranked = sorted(expected["intent_probs"].items(), key=lambda kv: -kv[1])
    assert shown == [[intent, f"{100 * p:.1f}%"] for intent, p in ranked]

    tagged = page.get_by_test_id("tagged")  # slots are marked as the tagger's entities are
    sync_api.expect(tagged.locator("mark")).to_have_count(len(expected["slots"]))
    assert marked(tagged) == spans(expected["slots"])
    assert unmarked(tagged) == text
    sync_api.expect(page.get_by_test_id("slot-row")).to_have_count(len(expected["slots"]))
    assert page.locator("#error").is_hidden()


def test_assistant_chat_shows_the_librarys_replies_newest_last(assistant_tab, assistant, faq_index):
    want = assistant.answer(ASSIST_MESSAGES)
    page = assistant_tab.page
    first = page.locator("#model option").first
    sync_api.expect(first).to_have_attribute("value", ASSISTANT)  # offered first, and chosen
    sync_api.expect(first).to_contain_text("Assistant")
    sync_api.expect(page.locator("#model")).to_have_value(ASSISTANT)
    sync_api.expect(page.locator("#model-info")).to_contain_text(str(faq_index))
    assert page.locator("#mode-field").is_hidden() and page.locator("#chat").is_visible()

    turns = page.get_by_test_id("turn")
    for n, text in enumerate(ASSIST_MESSAGES, 1):
        page.fill("#text", text)
        with page.expect_response(lambda r: r.url.endswith("/v1/assist")) as answer:
            if n == 1:
                page.press("#text", "Enter")  # Enter alone sends in the chat
            else:
                page.click("#run")
        assert answer.value.request.post_data_json == {"input": text}  # no "model": the server's choice
        sync_api.expect(turns).to_have_count(n)
        sync_api.expect(page.locator("#text")).to_have_value("")  # ready for the next message

    assert page.locator("#error").is_hidden()
    for turn, w in zip(turns.all(), want):  # the history, oldest first
        utterance = turn.get_by_test_id("utterance")
        assert unmarked(utterance) == w["text"]
        assert marked(utterance) == spans(w["slots"])
        assert turn.get_by_test_id("reply").text_content() == w["reply"]
        assert turn.get_by_test_id("turn-intent").get_attribute("data-intent") == w["intent"]
        assert turn.get_by_test_id("oos-badge").count() == (0 if w["in_scope"] else 1)
        if w["faq"]:
            assert turn.get_by_test_id("faq-question").text_content() == w["faq"]["question"]
            assert f"score {w['faq']['score']:.2f}" in turn.get_by_test_id("faq").text_content()
        else:
            assert turn.get_by_test_id("faq").count() == 0
    assert any(w["in_scope"] for w in want), f"the tiny assistant put none of {ASSIST_MESSAGES} in scope: {want}"

    page.reload()  # the conversation is kept for the tab
    sync_api.expect(turns).to_have_count(len(ASSIST_MESSAGES))
    assert [t.get_by_test_id("reply").text_content() for t in turns.all()] == [w["reply"] for w in want]
    page.click("#chat-clear")
    sync_api.expect(turns).to_have_count(0)


def test_assistant_marks_an_out_of_scope_answer(assistant_tab, assistant):
    answers = assistant.answer(OOS_CANDIDATES)
    out = [a for a in answers if not a["in_scope"]]
    if not out:  # a tiny model: which messages it rules out may change with training
        pytest.skip(f"the tiny out-of-scope model keeps all of {OOS_CANDIDATES} in scope")
    w = out[0]
    page = assistant_tab.page
    sync_api.expect(page.locator("#model")).to_have_value(ASSISTANT)
    page.fill("#text", w["text"])
    page.click("#run")

    turn = page.get_by_test_id("turn")
    sync_api.expect(turn).to_have_count(1)
    sync_api.expect(turn).to_have_attribute("data-in-scope", "false")
    sync_api.expect(turn.get_by_test_id("oos-badge")).to_be_visible()
    sync_api.expect(turn.get_by_test_id("oos-badge")).to_contain_text("out of scope")
    assert turn.get_by_test_id("reply").text_content() == w["reply"]
    assert turn.get_by_test_id("faq").count() == 0
