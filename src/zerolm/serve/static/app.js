// The page of `zerolm serve`: lists the served models (GET v1/models), sends the text
// to the route of the chosen task and draws the answer. When the server runs the
// assistant (v1/models has an "assistant" object), "Assistant" comes first in the model
// list and the page is a small chat with it (POST v1/assist).
//
// Rules kept throughout:
// - every URL is relative to the page, so a server mounted under a prefix still works;
// - model output and error messages are shown with textContent, never parsed as HTML;
// - one request at a time: the run button waits for the answer; Stop aborts a generation.
"use strict";

// ---------------------------------------------------------------- constants

// Route -> task the page knows how to draw; routes it does not know are ignored.
const ROUTE_TASK = {
  "/v1/classify": "classify",
  "/v1/tag": "tag",
  "/v1/intent_slots": "intent_slots",
  "/v1/generate": "generate",
  "/v1/embeddings": "embed",
};

const TASK_TITLE = {
  classify: "Classify",
  tag: "Tag entities",
  intent_slots: "Intent and slots",
  generate: "Generate",
  embed: "Embeddings: nearest sentences",
  assist: "Assistant",
};

// What the text box is for, by task.
const TEXT_LABEL = {
  classify: "Text",
  tag: "Text",
  intent_slots: "Utterance",
  generate: "Prompt",
  seq2seq: "Source",
  embed: "Query",
  assist: "Message",
};

// Filled into an empty text box (or one still holding another task's example).
const EXAMPLES = {
  classify: "The story is simple, but the telling is wonderful.",
  tag: "The new station in Marrow Hill was opened by Orchard Lane Bakery on Monday.",
  intent_slots: "what is the weather in ashby cross tomorrow",
  generate: "In the valley, the weather",
  seq2seq: "Two dogs are playing in the snow.",
  embed: "It rained all morning in the hills.",
  assist: "book a flight from boston to denver on monday",
};

// The run button's words, by task.
const RUN_LABEL = {
  classify: "Classify",
  tag: "Tag",
  intent_slots: "Parse",
  generate: "Generate",
  embed: "Search",
  assist: "Send",
};

const EXAMPLE_CORPUS = [
  "The rain fell softly on the roofs of the village.",
  "A grey cloud came over the hills by noon.",
  "The vacuum cleaner makes cleaning almost enjoyable.",
  "The story is simple, but the telling is wonderful.",
  "Children dropped leaves into the water and followed them.",
  "The new station was opened on Monday.",
  "This jacket kept me dry on a long hike.",
  "The soup was cold and the service was slow.",
].join("\n");

// Entity types are coloured from a small palette by a stable hash of their name, so
// PER is always the same colour and an unseen type still gets one.
const PALETTE_SIZE = 8;

const KEY_STORAGE = "zerolm.apiKey";
const MODEL_STORAGE = "zerolm.model";
const CHAT_STORAGE = "zerolm.chat"; // the conversation with the assistant, for this tab
const CHAT_KEEP = 100; // turns kept at most (the oldest go first)

// The model list's value for the assistant: a route, which holds a "/" that no model
// name may hold (`zerolm serve` refuses one), so it never shadows a model.
const ASSISTANT = "v1/assist";

// ---------------------------------------------------------------- state and elements

const $ = (id) => document.getElementById(id);
const el = {
  form: $("form"),
  model: $("model"),
  modeField: $("mode-field"),
  mode: $("mode"),
  modelInfo: $("model-info"),
  text: $("text"),
  textLabel: $("text-label"),
  genOptions: $("gen-options"),
  maxNewTokens: $("max-new-tokens"),
  beamsField: $("beams-field"),
  numBeams: $("num-beams"),
  samplingFields: document.querySelectorAll(".sampling-field"),
  temperature: $("temperature"),
  topP: $("top-p"),
  seed: $("seed"),
  corpusField: $("corpus-field"),
  corpus: $("corpus"),
  run: $("run"),
  stop: $("stop"),
  status: $("status"),
  error: $("error"),
  result: $("result"),
  hint: $("hint"),
  chat: $("chat"),
  chatLog: $("chat-log"),
  chatEmpty: $("chat-empty"),
  chatClear: $("chat-clear"),
  auth: $("auth"),
  apiKey: $("api-key"),
  apiKeySave: $("api-key-save"),
};

let models = []; // the "data" list of GET v1/models
let assistant = null; // the "assistant" object of GET v1/models: {joint, oos, faq_index}, or null
let inFlight = null; // AbortController of the running request, or null

// ---------------------------------------------------------------- small helpers

/** An element with attributes and children (strings become text nodes, never HTML). */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "style") Object.assign(node.style, value);
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const percent = (p) => `${(100 * p).toFixed(1)}%`;

function paletteIndex(name) {
  let hash = 0;
  for (const ch of name) hash = (hash * 31 + ch.codePointAt(0)) >>> 0;
  return hash % PALETTE_SIZE;
}

/** The chosen model's card; for the assistant, a card made up from its settings. */
function currentModel() {
  if (assistant && el.model.value === ASSISTANT) {
    return { id: ASSISTANT, kind: "assist", routes: ["/v1/assist"] };
  }
  return models.find((m) => m.id === el.model.value) || null;
}

/** The tasks a model answers that the page can draw: its own kind first, then the
 *  other routes it lists (a classifier may also serve embeddings, say). */
function tasksOf(model) {
  const tasks = [model.kind, ...(model.routes || []).map((r) => ROUTE_TASK[r])];
  return [...new Set(tasks.filter((t) => t in TASK_TITLE))];
}

/** An encoder-decoder writes a target for its input (translation, summaries): its model
 *  card says how it decodes when a request is silent. */
function isSeq2seq(model) {
  return Boolean(model && model.decoding);
}

/** The key of TEXT_LABEL / EXAMPLES for a task of the chosen model. */
function textKey(task) {
  return task === "generate" && isSeq2seq(currentModel()) ? "seq2seq" : task;
}

function currentTask() {
  return el.mode.value || (currentModel() || {}).kind || "classify";
}

function setStatus(text) {
  el.status.textContent = text;
}

function showError(message) {
  el.error.textContent = message;
  el.error.hidden = !message;
}

// ---------------------------------------------------------------- talking to the API

/** An Error carrying the API's error object ({message, type, code, field}). */
class ApiError extends Error {
  constructor(status, body) {
    const err = (body && body.error) || {};
    super(err.message || `HTTP ${status}`);
    this.status = status;
    this.type = err.type;
    this.field = err.field;
  }
}

function authHeaders() {
  const key = sessionStorage.getItem(KEY_STORAGE);
  return key ? { Authorization: `Bearer ${key}` } : {};
}

/** fetch() with the API key; throws ApiError for a non-2xx answer. */
async function api(path, { body, signal } = {}) {
  const init = { headers: { Accept: "application/json", ...authHeaders() }, signal };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new Error(`Could not reach the server (${e.message}).`);
  }
  if (!response.ok) {
    let payload = null;
    try {
      payload = await response.json();
    } catch {
      // not JSON (a proxy's error page, say): the status line is all we have
    }
    throw new ApiError(response.status, payload);
  }
  return response;
}

/** A message for the page; a 401 also opens the API key box. */
function describeError(e) {
  if (e instanceof ApiError && (e.status === 401 || e.status === 403)) {
    el.auth.open = true;
    el.apiKey.focus();
    return `${e.message} — enter the server's API key above.`;
  }
  if (e instanceof ApiError && e.field) return `${e.message} (field: ${e.field})`;
  return e.message || String(e);
}

// ---------------------------------------------------------------- models and tasks

async function loadModels() {
  showError("");
  el.model.disabled = true;
  el.run.disabled = true;
  try {
    const response = await api("v1/models");
    const answer = await response.json();
    models = answer.data || [];
    assistant = answer.assistant && answer.assistant.joint ? answer.assistant : null;
  } catch (e) {
    models = [];
    assistant = null;
    el.model.replaceChildren(h("option", {}, "no models"));
    showError(describeError(e));
    return;
  }
  if (!models.length) {
    el.model.replaceChildren(h("option", {}, "no models"));
    showError("The server has no models loaded.");
    return;
  }
  const options = models.map((m) => h("option", { value: m.id }, `${m.id} (${m.kind})`));
  if (assistant) {
    const parts = [assistant.joint, assistant.oos, assistant.faq_index ? "FAQ" : null].filter(Boolean);
    el.model.replaceChildren(
      h("option", { value: ASSISTANT }, `Assistant (${parts.join(" + ")})`),
      h("optgroup", { label: "Models" }, options),
    );
  } else {
    el.model.replaceChildren(...options);
  }
  const remembered = sessionStorage.getItem(MODEL_STORAGE);
  if (models.some((m) => m.id === remembered)) el.model.value = remembered;
  el.model.disabled = false;
  el.run.disabled = false;
  onModelChange();
}

function onModelChange() {
  const model = currentModel();
  if (!model) return;
  sessionStorage.setItem(MODEL_STORAGE, model.id);
  const tasks = tasksOf(model);
  el.mode.replaceChildren(...tasks.map((t) => h("option", { value: t }, TASK_TITLE[t])));
  el.mode.value = tasks[0] || "";
  el.modeField.hidden = tasks.length < 2;

  const facts = model.kind === "assist" ? assistantFacts() : [`kind: ${model.kind}`];
  if (model.max_length) facts.push(`max length: ${model.max_length} tokens`);
  if (model.labels && model.labels.length) {
    const shown = model.labels.slice(0, 12).join(", ");
    facts.push(`labels: ${shown}${model.labels.length > 12 ? ", …" : ""}`);
  }
  const seq2seq = isSeq2seq(model);
  el.beamsField.hidden = !seq2seq;
  el.samplingFields.forEach((f) => { f.hidden = seq2seq; });
  if (seq2seq) {
    const d = model.decoding;
    el.numBeams.value = String(d.num_beams);
    el.maxNewTokens.value = String(d.max_new_tokens);
    const how = d.num_beams > 1 ? `${d.num_beams} beams` : d.greedy ? "greedy" : "sampling";
    facts.push(`decoding: ${how}, up to ${d.max_new_tokens} tokens`);
  }
  el.modelInfo.textContent = facts.join(" · ");
  onTaskChange();
}

function assistantFacts() {
  return [
    `intents and slots: ${assistant.joint}`,
    assistant.oos ? `out of scope: ${assistant.oos}` : "out of scope: by the intent's probability",
    assistant.faq_index ? `FAQ index: ${assistant.faq_index}` : "no FAQ index",
  ];
}

let lastExample = null; // the example text the page put in the box, if any

function onTaskChange() {
  const task = currentTask();
  el.textLabel.textContent = TEXT_LABEL[textKey(task)] || "Text";
  el.text.placeholder = task === "assist" ? "Ask the assistant something" : "Type or paste text here";
  el.genOptions.hidden = task !== "generate";
  el.corpusField.hidden = task !== "embed";
  el.chat.hidden = task !== "assist";
  el.hint.textContent = task === "assist" ? "Enter sends · Shift+Enter: new line · " : "";
  if (task === "embed" && !el.corpus.value.trim()) el.corpus.value = EXAMPLE_CORPUS;
  // Replace the text only if it is empty or still the example of another task.
  const text = el.text.value.trim();
  if (!text || text === lastExample) {
    el.text.value = EXAMPLES[textKey(task)] || "";
    lastExample = el.text.value;
  }
  el.run.textContent = RUN_LABEL[task] || "Run";
  clearResult();
}

function clearResult() {
  el.result.replaceChildren();
  el.result.hidden = true;
  showError("");
  setStatus("");
}

// ---------------------------------------------------------------- running

async function run() {
  const model = currentModel();
  if (!model) return;
  const text = el.text.value;
  if (!text.trim()) {
    showError("Type some text first.");
    el.text.focus();
    return;
  }
  if (inFlight) inFlight.abort();
  const controller = new AbortController();
  inFlight = controller;
  clearResult();
  setStatus("working…");
  el.run.disabled = true;
  const started = performance.now();
  try {
    const task = currentTask();
    const handlers = {
      classify: runClassify, tag: runTag, intent_slots: runIntentSlots, generate: runGenerate, embed: runEmbed,
      assist: runAssist,
    };
    await handlers[task](model.id, text, controller.signal);
    if (inFlight === controller) setStatus(`done in ${Math.round(performance.now() - started)} ms`);
  } catch (e) {
    if (e.name === "AbortError") {
      setStatus("stopped");
    } else {
      setStatus("");
      showError(describeError(e));
    }
  } finally {
    if (inFlight === controller) {
      inFlight = null;
      el.run.disabled = false;
      el.stop.hidden = true;
    }
  }
}

/** Show the result section with the given children (null ones left out). */
function showResult(...children) {
  el.result.replaceChildren(...children.filter((c) => c !== null && c !== undefined));
  el.result.hidden = false;
}

function truncationNote(record) {
  return record.truncated
    ? h("p", { class: "note small", "data-testid": "truncated" },
        "The input was longer than the model's context and was truncated.")
    : null;
}

function usageNote(usage) {
  return usage && usage.prompt_tokens !== undefined
    ? h("p", { class: "muted small" }, `${usage.prompt_tokens} input tokens`)
    : null;
}

/** The "out of scope" badge, with the out-of-scope score when there is one. */
function oosBadge(oosScore) {
  const scored = typeof oosScore === "number";
  return h("span", {
    class: "badge oos",
    "data-testid": "oos-badge",
    title: scored ? `out-of-scope score ${oosScore.toFixed(3)} (higher: more likely out of scope)` : null,
  }, "out of scope", scored ? ` · ${oosScore.toFixed(2)}` : "");
}

// ---- classify: the label, then one bar per class, most probable first

/** One bar per class of `probs` ({label: p}), most probable first; `top` is emphasised. */
function probBars(probs, top) {
  const ranked = Object.entries(probs).sort((a, b) => b[1] - a[1]);
  return h("ol", { class: "bars", "data-testid": "probs" },
    ranked.map(([label, p]) =>
      h("li", { class: label === top ? "bar-row top" : "bar-row", "data-testid": "prob", "data-label": label },
        h("span", { class: "bar-label" }, label),
        // The track is decorative: the percentage beside it carries the value.
        h("span", { class: "bar-track", "aria-hidden": "true" },
          h("span", { class: "bar-fill", style: { width: percent(p) } })),
        h("span", { class: "bar-value" }, percent(p)))));
}

async function runClassify(model, text, signal) {
  const response = await api("v1/classify", { body: { model, input: text }, signal });
  const answer = await response.json();
  const record = answer.data[0];
  showResult(
    h("h2", {}, "Prediction"),
    h("p", { class: "label-line" },
      h("strong", { class: "label", "data-testid": "label" }, record.label),
      " ",
      h("span", { class: "muted", "data-testid": "score" }, percent(record.score)),
      // a classifier with out-of-scope detection says so
      record.in_scope === false ? [" ", oosBadge(record.oos_score)] : null),
    probBars(record.probs || { [record.label]: record.score }, record.label),
    truncationNote(record),
    usageNote(answer.usage),
  );
}

// ---- tag: the text with entities marked inline, then a table of entities

/**
 * The text as nodes with each entity wrapped in <mark data-type=TYPE>.
 *
 * The server's start/end count Unicode code points (Python string offsets) while JS
 * strings count UTF-16 units, so the text is split into code points first. An entity
 * whose offsets do not match its text (the server normalised the input, say) is looked
 * up by its text after the previous entity instead; one that cannot be placed is left
 * to the table.
 */
function markEntities(text, entities) {
  const chars = Array.from(text);
  const nodes = [];
  let cursor = 0; // in code points
  const sorted = [...entities].sort((a, b) => a.start - b.start);
  for (const entity of sorted) {
    let start = entity.start;
    let end = entity.end;
    if (chars.slice(start, end).join("") !== entity.text) {
      const rest = chars.slice(cursor).join("");
      const at = rest.indexOf(entity.text); // in UTF-16 units of `rest`
      if (at < 0) continue;
      start = cursor + Array.from(rest.slice(0, at)).length;
      end = start + Array.from(entity.text).length;
    }
    if (start < cursor) continue; // overlaps the previous entity
    nodes.push(chars.slice(cursor, start).join(""));
    nodes.push(h("mark", {
      class: `entity c${paletteIndex(entity.type)}`,
      "data-type": entity.type,
      title: entity.type,
    }, h("span", { class: "entity-text" }, chars.slice(start, end).join("")),
       h("span", { class: "entity-type" }, entity.type)));
    cursor = end;
  }
  nodes.push(chars.slice(cursor).join(""));
  return nodes;
}

/** A table of entities (or slots): type, text, character and word offsets. */
function entityTable(entities, rowTestId, none) {
  if (!entities.length) return h("p", { class: "muted" }, none);
  return h("table", { class: "entities" },
    h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Type"), h("th", { scope: "col" }, "Text"),
                     h("th", { scope: "col" }, "Characters"), h("th", { scope: "col" }, "Words"))),
    h("tbody", {}, entities.map((e) =>
      h("tr", { "data-testid": rowTestId, "data-type": e.type },
        h("td", {}, h("span", { class: `swatch c${paletteIndex(e.type)}` }), e.type),
        h("td", {}, e.text),
        h("td", { class: "num" }, `${e.start}–${e.end}`),
        h("td", { class: "num" }, e.words ? `${e.words[0]}–${e.words[1]}` : "")))));
}

async function runTag(model, text, signal) {
  const response = await api("v1/tag", { body: { model, input: text }, signal });
  const answer = await response.json();
  const record = answer.data[0];
  const entities = record.entities || [];
  showResult(
    h("h2", {}, "Entities"),
    h("p", { class: "tagged", "data-testid": "tagged" }, markEntities(text, entities)),
    entityTable(entities, "entity-row", "No entities found."),
    truncationNote(record),
    usageNote(answer.usage),
  );
}

// ---- intent_slots: the intent with its probability and the runners-up as bars, then
// the utterance with its slots marked as the tagger's entities are, and a slot table

async function runIntentSlots(model, text, signal) {
  const response = await api("v1/intent_slots", { body: { model, input: text }, signal });
  const answer = await response.json();
  const record = answer.data[0];
  const slots = record.slots || [];
  const probs = record.intent_probs || { [record.intent]: record.intent_score };
  const card = models.find((m) => m.id === model);
  const shown = Object.keys(probs).length;
  const of = card && card.labels && card.labels.length > shown
    ? h("p", { class: "muted small" }, `the ${shown} most likely of ${card.labels.length} intents`)
    : null;
  showResult(
    h("h2", {}, "Intent"),
    h("p", { class: "label-line" },
      h("strong", { class: "label", "data-testid": "intent" }, record.intent),
      " ",
      h("span", { class: "muted", "data-testid": "intent-score" }, percent(record.intent_score))),
    probBars(probs, record.intent),
    of,
    h("h2", { class: "section" }, "Slots"),
    h("p", { class: "tagged", "data-testid": "tagged" }, markEntities(text, slots)),
    entityTable(slots, "slot-row", "No slots filled."),
    truncationNote(record),
    usageNote(answer.usage),
  );
}

// ---- generate: the prompt, then the continuation as it streams in

/** Read a text/event-stream body, calling onEvent with each `data:` payload. */
async function readEvents(response, onEvent) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
      // Events end with a blank line; the last piece may be an incomplete event.
      const events = buffer.split(/\r?\n\r?\n/);
      buffer = done ? "" : events.pop();
      for (const event of events) {
        const data = event.split(/\r?\n/)
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data && onEvent(data) === false) return;
      }
      if (done) return;
    }
  } finally {
    // Stop reading (and let the server stop generating) when done early or on an error.
    reader.cancel().catch(() => {});
  }
}

function numberOrNull(input) {
  return input.value.trim() === "" ? null : Number(input.value);
}

async function runGenerate(model, text, signal) {
  // An encoder-decoder writes a target (greedy or beams; the card's settings where the
  // boxes are empty); a causal LM continues the prompt with the sampling settings.
  const seq2seq = isSeq2seq(currentModel());
  const body = seq2seq ? {
    model,
    input: text,
    max_new_tokens: numberOrNull(el.maxNewTokens) ?? undefined,
    num_beams: numberOrNull(el.numBeams) ?? undefined,
    stream: true,
  } : {
    model,
    input: text,
    max_new_tokens: numberOrNull(el.maxNewTokens) ?? 32,
    temperature: numberOrNull(el.temperature) ?? 1.0,
    top_p: numberOrNull(el.topP) ?? 1.0,
    seed: numberOrNull(el.seed),
    stream: true,
  };
  const completion = h("span", { class: "completion", "data-testid": "completion" });
  const finish = h("p", { class: "muted small", "data-testid": "finish-reason" });
  const cursor = h("span", { class: "cursor", "aria-hidden": "true" });
  showResult(
    h("h2", {}, seq2seq ? "Target" : "Generation"),
    seq2seq
      ? h("p", { class: "generation", "data-testid": "generation" }, completion, cursor)
      : h("p", { class: "generation", "data-testid": "generation" },
        h("span", { class: "prompt" }, text), completion, cursor),
    finish,
  );
  el.stop.hidden = false;
  try {
    const response = await api("v1/generate", { body, signal });
    await readEvents(response, (data) => {
      if (data === "[DONE]") return false;
      const event = JSON.parse(data);
      if (event.error) throw new ApiError(event.error.code || 500, event);
      if (event.text) completion.append(event.text);
      if (event.finish_reason) {
        const why = { stop: "stopped (end of text or a stop sequence)", length: "reached max new tokens" };
        finish.textContent = `Finished: ${why[event.finish_reason] || event.finish_reason}`;
        finish.dataset.reason = event.finish_reason;
      }
      return true;
    });
  } finally {
    el.result.querySelector(".cursor")?.remove();
  }
}

// ---- embed: the corpus ranked by cosine similarity to the query

async function runEmbed(model, text, signal) {
  const corpus = el.corpus.value.split(/\r?\n/).map((s) => s.trim()).filter(Boolean);
  if (!corpus.length) throw new Error("Add some sentences to the corpus, one a line.");
  const response = await api("v1/embeddings", {
    body: { model, input: [text, ...corpus], encoding_format: "float" }, signal,
  });
  const answer = await response.json();
  const vectors = [];
  for (const item of answer.data) vectors[item.index] = item.embedding;
  const query = vectors[0];
  // The server L2-normalises the vectors, so the dot product is the cosine similarity.
  const dot = (a, b) => a.reduce((sum, x, i) => sum + x * b[i], 0);
  const ranked = corpus.map((sentence, i) => ({ sentence, score: dot(query, vectors[i + 1]) }))
    .sort((a, b) => b.score - a.score);
  showResult(
    h("h2", {}, "Nearest sentences"),
    h("ol", { class: "bars neighbours", "data-testid": "neighbours" },
      ranked.map(({ sentence, score }) =>
        h("li", { class: "bar-row", "data-testid": "neighbour", "data-score": score.toFixed(4) },
          h("span", { class: "bar-label" }, sentence),
          h("span", { class: "bar-track", "aria-hidden": "true" },
            h("span", { class: "bar-fill", style: { width: percent(Math.max(0, score)) } })),
          h("span", { class: "bar-value" }, score.toFixed(3))))),
    h("p", { class: "muted small" },
      `cosine similarity · ${query.length} dimensions`,
      answer.usage ? ` · ${answer.usage.prompt_tokens} input tokens` : ""),
  );
}

// ---- assist: a chat with the assistant, newest turn last, kept for this tab

let chat = []; // the v1/assist records of this conversation, oldest first

function loadChat() {
  try {
    const stored = JSON.parse(sessionStorage.getItem(CHAT_STORAGE) || "[]");
    chat = Array.isArray(stored) ? stored.filter((r) => r && typeof r.text === "string") : [];
  } catch {
    chat = []; // not ours, or damaged: start afresh
  }
  el.chatLog.replaceChildren(...chat.map(chatTurn));
  showChatState();
}

function saveChat() {
  chat = chat.slice(-CHAT_KEEP);
  try {
    sessionStorage.setItem(CHAT_STORAGE, JSON.stringify(chat));
  } catch {
    // storage full or off: the conversation still lives on the page
  }
}

function showChatState() {
  el.chatEmpty.hidden = el.chatLog.childElementCount > 0;
  el.chatClear.hidden = chat.length === 0;
}

function scrollChat() {
  el.chatLog.scrollTop = el.chatLog.scrollHeight;
}

/** The user's side of a turn: the utterance, slots marked when known. */
function userBubble(text, slots) {
  return h("div", { class: "bubble user" },
    h("span", { class: "who" }, "You"),
    h("p", { class: "tagged utterance", "data-testid": "utterance" }, markEntities(text, slots || [])));
}

/** One exchange: the utterance with its slots marked, then the assistant's reply with
 *  what it is based on (the intent, the FAQ entry it matched, or "out of scope"). */
function chatTurn(record) {
  const facts = [];
  if (record.in_scope === false) facts.push(oosBadge(record.oos_score));
  if (typeof record.intent === "string") {
    facts.push(h("span", { class: "chip", "data-testid": "turn-intent", "data-intent": record.intent },
      "intent ", h("strong", {}, record.intent),
      typeof record.intent_score === "number" ? ` ${percent(record.intent_score)}` : ""));
  }
  if (record.faq) {
    const score = typeof record.faq.score === "number" ? ` · score ${record.faq.score.toFixed(2)}` : "";
    facts.push(h("span", { class: "chip faq", "data-testid": "faq" },
      "FAQ: ", h("q", { "data-testid": "faq-question" }, record.faq.question || "(no question)"), score));
  }
  return h("li", { class: record.in_scope === false ? "turn oos" : "turn", "data-testid": "turn",
                   "data-in-scope": String(record.in_scope !== false) },
    userBubble(record.text, record.slots),
    h("div", { class: "bubble bot" },
      h("span", { class: "who" }, "Assistant"),
      h("p", { class: "reply", "data-testid": "reply" }, record.reply || ""),
      facts.length ? h("p", { class: "facts" }, facts) : null));
}

async function runAssist(_model, text, signal) {
  // The utterance shows at once, the reply when it comes; a failed turn is taken back.
  const pending = h("li", { class: "turn pending", "aria-busy": "true" },
    userBubble(text, []),
    h("div", { class: "bubble bot" }, h("span", { class: "who" }, "Assistant"),
      h("p", { class: "reply muted" }, "…")));
  el.chatLog.append(pending);
  showChatState();
  scrollChat();
  try {
    const response = await api("v1/assist", { body: { input: text }, signal });
    const record = (await response.json()).data[0];
    chat.push(record);
    saveChat();
    pending.replaceWith(chatTurn(record));
    while (el.chatLog.childElementCount > CHAT_KEEP) el.chatLog.firstElementChild.remove();
  } catch (e) {
    pending.remove();
    throw e;
  } finally {
    showChatState();
  }
  scrollChat();
  if (el.text.value === text) { // ready for the next message
    el.text.value = "";
    el.text.focus();
  }
}

// ---------------------------------------------------------------- wiring

el.model.addEventListener("change", onModelChange);
el.mode.addEventListener("change", onTaskChange);
el.form.addEventListener("submit", (event) => {
  event.preventDefault();
  run();
});
// Ctrl+Enter (Cmd+Enter on a Mac) runs from anywhere in the form.
// Talking to the assistant, Enter alone sends (Shift+Enter starts a new line).
el.form.addEventListener("keydown", (event) => {
  if (event.key !== "Enter" || event.isComposing) return;
  const chatting = event.target === el.text && currentTask() === "assist" && !event.shiftKey;
  if (event.ctrlKey || event.metaKey || chatting) {
    event.preventDefault();
    if (!el.run.disabled) run();
  }
});
el.stop.addEventListener("click", () => inFlight && inFlight.abort());
el.chatClear.addEventListener("click", () => {
  chat = [];
  saveChat();
  el.chatLog.replaceChildren();
  showChatState();
  el.text.focus();
});

el.apiKey.value = sessionStorage.getItem(KEY_STORAGE) || "";
function saveKey() {
  const key = el.apiKey.value.trim();
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  loadModels();
}
el.apiKeySave.addEventListener("click", saveKey);
el.apiKey.addEventListener("keydown", (event) => {
  if (event.key === "Enter") {
    event.preventDefault();
    saveKey();
  }
});

loadChat();
loadModels();
