"use strict";
// The console page: tabs, the live feed (server-sent events), agents, dead letters and the chat.
// Text from the runtime is only ever set as text (textContent), never parsed as HTML.

const $ = (selector) => document.querySelector(selector);
const SVG = "http://www.w3.org/2000/svg";
const STEPS = ["blueprint", "history", "idempotency", "memory", "llm", "tools", "budget", "post", "store"];
const MAX_ROWS = 200; // rows the page keeps: the server's ring holds more
const entries = new Map(); // id -> outcome entry, for the rows on the page
let info = {};
let selected = null;

function el(tag, attrs = {}, ...children) {
  const node = tag.startsWith("svg:") ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value !== null && value !== undefined && value !== false) node.setAttribute(name, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

async function api(path, options) {
  const response = await fetch(path, options);
  if (response.status === 401) {
    location.reload(); // the session ended: the login form
    throw new Error("logged out");
  }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.error || `HTTP ${response.status}`);
  return body;
}

function post(path, body) {
  return api(path, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
}

const time = (at) => (at ? new Date(at * 1000).toLocaleTimeString() : "—");
function ms(v) {
  if (v === null || v === undefined) return "—";
  if (v < 10) return `${v.toFixed(1)} ms`;
  return v < 1000 ? `${Math.round(v)} ms` : `${(v / 1000).toFixed(2)} s`;
}
const short = (id) => (id ? id.slice(0, 8) : "—");
const count = (n) => (n >= 10000 ? `${(n / 1000).toFixed(1)}k` : String(n));

function why(e) {
  if (e.reason) return e.reason;
  if (e.error) return e.step ? `${e.step}: ${e.error}` : e.error;
  return e.notes.join(", ");
}

// --- tabs ---------------------------------------------------------------------------------

const tabs = [...document.querySelectorAll('[role="tab"]')];
const onShow = {};

function show(tab, focus = false) {
  for (const t of tabs) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    t.tabIndex = on ? 0 : -1;
    $(`#${t.getAttribute("aria-controls")}`).hidden = !on;
  }
  if (focus) tab.focus();
  history.replaceState(null, "", `#${tab.id.slice(4)}`);
  onShow[tab.id]?.();
}

tabs.forEach((tab, i) => {
  tab.addEventListener("click", () => show(tab));
  tab.addEventListener("keydown", (event) => {
    const to = { ArrowRight: i + 1, ArrowLeft: i - 1, Home: 0, End: tabs.length - 1 }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    show(tabs[(to + tabs.length) % tabs.length], true);
  });
});

const visible = (id) => !$(id).hidden;

// --- live invocations ---------------------------------------------------------------------

function row(e) {
  const open = el("button", { type: "button", class: "link", "aria-label": `steps of ${e.agent_id || "?"} at ${time(e.at)}` }, time(e.at));
  const status = e.attempt > 1 ? `${e.status} (try ${e.attempt})` : e.status;
  const tr = el(
    "tr",
    { "data-id": e.id },
    el("td", {}, open),
    el("td", {}, e.agent_id || "—"),
    el("td", { class: "wide mono", title: e.channel_id || "" }, short(e.channel_id)),
    el("td", {}, el("span", { class: `status s-${e.status}` }, status)),
    el("td", { class: "why" }, why(e)),
    el("td", { class: "wide" }, e.llm_source || "—"),
    el("td", { class: "num" }, ms(e.total_ms)),
  );
  tr.addEventListener("click", () => detail(e.id));
  return tr;
}

function add(e) {
  if (entries.has(e.id)) return;
  entries.set(e.id, e);
  const body = $("#feed tbody");
  const tr = row(e);
  tr.classList.add("new");
  for (const ended of ["animationend", "animationcancel"]) {
    tr.addEventListener(ended, () => tr.classList.remove("new"), { once: true }); // not again when shown again
  }
  body.prepend(tr);
  while (body.rows.length > MAX_ROWS) {
    const last = body.rows[body.rows.length - 1];
    entries.delete(Number(last.dataset.id));
    last.remove();
  }
  $("#feed-empty").hidden = true;
}

function detail(id) {
  const e = entries.get(id);
  if (!e) return;
  selected = id;
  for (const tr of $("#feed tbody").rows) tr.classList.toggle("selected", Number(tr.dataset.id) === id);
  $("#detail").hidden = false;
  $("#detail-title").textContent = `${e.agent_id || "?"} · ${e.status}`;
  waterfall(e);
  const fields = [
    ["trace id", e.trace_id, true],
    ["when", new Date(e.at * 1000).toLocaleString()],
    ["channel", e.channel_id, true],
    ["message", e.trigger_message_id, true],
    ["reply", e.message_id, true],
    ["reason", e.reason],
    ["error", e.error],
    ["step", e.step && `${e.step}${e.kind ? ` (${e.kind})` : ""}${e.retryable === null ? "" : e.retryable ? ", retryable" : ", not retryable"}`],
    ["attempt", e.attempt],
    ["HTTP", e.http_status],
    ["LLM", e.llm_source],
    ["tokens", e.usage && `${e.usage.input_tokens} in · ${e.usage.output_tokens} out${e.usage.model ? ` · ${e.usage.model}` : ""}${e.usage.estimated ? " (estimated)" : ""}`],
    ["tools", e.tool_calls.map((c) => `${c.tool}: ${c.result}`).join(", ")],
    ["notes", e.notes.join(", ")],
  ];
  $("#detail-fields").replaceChildren(
    ...fields
      .filter(([, value]) => value !== null && value !== undefined && value !== "")
      .flatMap(([name, value, code]) => [el("dt", {}, name), el("dd", {}, code ? el("code", {}, value) : value)]),
  );
  $("#detail-title").focus();
}

function waterfall(e) {
  const box = $("#waterfall");
  const t = e.timings_ms || {};
  const steps = [...STEPS.filter((s) => s in t), ...Object.keys(t).filter((s) => s !== "total" && !STEPS.includes(s))];
  const sum = steps.reduce((a, s) => a + t[s], 0);
  const total = Math.max(t.total || 0, sum);
  if (!steps.length || !total) {
    box.replaceChildren(el("p", { class: "muted" }, "No step timings: the function refused it before any run, or did not answer."));
    return;
  }
  const bar = (name, start, length, cls) => {
    const fill = el("div", { class: `wf-bar s-${cls}` });
    fill.style.left = `${(start / total) * 100}%`;
    fill.style.width = `${(length / total) * 100}%`;
    return el(
      "div",
      { class: "wf-row", role: "listitem", "data-step": name },
      el("span", {}, name),
      el("div", { class: "wf-track", "aria-hidden": "true" }, fill),
      el("span", { class: "wf-ms" }, ms(length)),
    );
  };
  let offset = 0;
  const rows = steps.map((s) => {
    const r = bar(s, offset, t[s], s);
    offset += t[s];
    return r;
  });
  if (total - sum >= 1) rows.push(bar("between", sum, total - sum, "other"));
  rows.push(bar("total", 0, total, "total"));
  box.replaceChildren(...rows);
}

$("#detail-close").addEventListener("click", () => {
  $("#detail").hidden = true;
  const tr = $(`#feed tbody tr[data-id="${selected}"] button`);
  selected = null;
  for (const r of $("#feed tbody").rows) r.classList.remove("selected");
  tr?.focus();
});

function liveState(text, live) {
  $("#live-state").textContent = text;
  $("#live-state").classList.toggle("live", live);
}

function connect() {
  const source = new EventSource("/console/events");
  source.addEventListener("outcome", (message) => {
    add(JSON.parse(message.data));
    if (visible("#view-agents")) scheduleAgents();
  });
  source.addEventListener("open", () => liveState("live", true));
  source.addEventListener("error", () => {
    liveState("reconnecting…", false);
    if (source.readyState === EventSource.CLOSED) {
      // refused (logged out, or too many pages): ask why through the API, then try again
      api("/console/api/info").catch(() => {});
      setTimeout(connect, 3000);
    }
  });
}

// --- agents -------------------------------------------------------------------------------

let agentsTimer = null;

function scheduleAgents() {
  if (agentsTimer === null) agentsTimer = setTimeout(() => { agentsTimer = null; loadAgents(); }, 1000);
}

function chart(a) {
  const s = a.series;
  const n = s.replied.length;
  const width = 300, height = 80, w = width / n;
  const totals = s.replied.map((r, i) => r + s.handed_off[i] + s.skipped[i] + s.failed[i]);
  const top = Math.max(1, ...totals);
  const svg = el("svg:svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, preserveAspectRatio: "none", role: "img" });
  svg.append(el("svg:title", {}, `${a.agent_id}: invocations a minute over the last hour (at most ${top}); the line is p95 latency`));
  svg.append(el("svg:line", { class: "axis", x1: 0, y1: height - 0.5, x2: width, y2: height - 0.5 }));
  s.replied.forEach((_, i) => {
    let y = height;
    for (const kind of ["replied", "handed_off", "skipped", "failed"]) {
      const h = (s[kind][i] / top) * (height - 4);
      if (h > 0) {
        y -= h;
        svg.append(el("svg:rect", { class: kind, x: i * w + 0.5, y, width: Math.max(1, w - 1), height: h }));
      }
    }
  });
  const p95 = s.p95_ms.filter((v) => v !== null);
  if (p95.length > 1) {
    const slowest = Math.max(...p95);
    const points = s.p95_ms
      .map((v, i) => (v === null ? null : `${i * w + w / 2},${height - 2 - (v / slowest) * (height - 8)}`))
      .filter(Boolean)
      .join(" ");
    svg.append(el("svg:polyline", { class: "p95", points }));
  }
  return svg;
}

function card(a) {
  const tokens = a.with_usage ? null : "not reported";
  const numbers = [
    ["invocations", count(a.invocations)],
    ["replied", count(a.replied)],
    ["handed off", count(a.handed_off)],
    ["skipped", count(a.skipped)],
    ["failed", count(a.failed)],
    ["p50", ms(a.p50_ms)],
    ["p95", ms(a.p95_ms)],
    ["mock fallbacks", count(a.mock_fallbacks)],
    ["tool calls", count(a.tool_calls)],
    ["tokens in", tokens || count(a.input_tokens)],
    ["tokens out", tokens || count(a.output_tokens)],
  ];
  return el(
    "article",
    { class: "card", "aria-label": a.agent_id, "data-agent": a.agent_id },
    el("h3", {}, a.agent_id),
    el("div", { class: "numbers" }, ...numbers.map(([name, value]) => el("div", {}, el("b", {}, value), el("span", {}, name)))),
    chart(a),
  );
}

async function loadAgents() {
  try {
    const { agents } = await api("/console/api/agents");
    $("#agents").replaceChildren(...agents.map(card));
    $("#agents-empty").hidden = agents.length > 0;
  } catch (err) {
    $("#agents-empty").textContent = err.message;
    $("#agents-empty").hidden = false;
  }
}

onShow["tab-agents"] = loadAgents;
$("#agents-refresh").addEventListener("click", loadAgents);

// --- dead letters -------------------------------------------------------------------------

function lettersStatus(text) {
  $("#letters-status").textContent = text;
}

async function letterAction(button, path, body, said) {
  button.disabled = true;
  try {
    lettersStatus(said(await post(path, body)));
  } catch (err) {
    lettersStatus(err.message);
  } finally {
    button.disabled = false;
    await loadLetters();
  }
}

function letterRow(d) {
  const replay = el("button", { type: "button", class: "small", "aria-label": `replay dead letter ${d.seq}` }, "Replay");
  const discard = el("button", { type: "button", class: "small danger", "aria-label": `discard dead letter ${d.seq}` }, "Discard");
  replay.addEventListener("click", () =>
    letterAction(replay, "/console/api/dead-letters/replay", { seq: d.seq }, () => `Dead letter ${d.seq} replayed: its outcome shows in Live.`),
  );
  discard.addEventListener("click", () => {
    if (!confirm(`Discard dead letter ${d.seq}? It is deleted from the stream.`)) return;
    letterAction(discard, "/console/api/dead-letters/discard", { seq: d.seq }, () => `Dead letter ${d.seq} discarded.`);
  });
  return el(
    "tr",
    { "data-seq": d.seq },
    el("td", { class: "num" }, d.seq),
    el("td", {}, time(d.at)),
    el("td", {}, d.agent_id || "—"),
    el("td", { class: "wide mono", title: d.channel_id || "" }, short(d.channel_id)),
    el("td", { class: "why" }, d.reason || "—", el("br"), el("code", { class: "muted", title: d.preview }, `${d.bytes} bytes`)),
    el("td", { class: "num" }, d.status ?? "—"),
    el("td", { class: "num" }, d.attempts ?? "—"),
    el("td", { class: "num" }, el("div", { class: "actions" }, replay, discard)),
  );
}

async function loadLetters(countOnly = false) {
  if (info.mode !== "jetstream") {
    $("#letters-note").textContent = `Dead letters are kept in jetstream mode only (the stream <stream>_DLQ). In ${info.mode || "core"} mode they are published on ${info.dead_letter_subject || "the dead-letter subject"} and not kept.`;
    $("#letters-replay-all").disabled = true;
    return;
  }
  try {
    const body = await api(`/console/api/dead-letters${countOnly ? "?limit=0" : ""}`);
    $("#letters-count").textContent = body.count ? String(body.count) : "";
    if (countOnly) return;
    $("#letters-replay-all").disabled = !body.count;
    $("#letters-note").textContent = !body.count
      ? `No dead letter in ${info.dead_letter_stream}.`
      : body.count > body.letters.length
        ? `The oldest ${body.letters.length} of ${body.count} in ${info.dead_letter_stream}.`
        : `${body.count} in ${info.dead_letter_stream}. A replay publishes the original bytes onto ${info.subject}; one already answered is a duplicate, never a second reply.`;
    $("#letters tbody").replaceChildren(...body.letters.map(letterRow));
  } catch (err) {
    $("#letters-note").textContent = err.message;
  }
}

onShow["tab-letters"] = () => loadLetters();
$("#letters-refresh").addEventListener("click", () => loadLetters());
$("#letters-replay-all").addEventListener("click", () => {
  const button = $("#letters-replay-all");
  letterAction(button, "/console/api/dead-letters/replay", { all: true }, (r) => `${r.replayed} dead letters replayed.`);
});

// --- chat ---------------------------------------------------------------------------------

function line(kind, who, text) {
  const item = el("li", { class: kind }, el("span", { class: "who" }, who), el("span", { class: "text" }, text));
  $("#transcript").append(item);
  item.scrollIntoView({ block: "nearest" });
  return item;
}

function outcomeNote(o) {
  if (!o) return "no outcome seen in time (another runner may have taken it: watch the channel)";
  if (o.status === "skipped") return `did not answer: ${o.reason}`;
  if (o.status === "failed") return `could not answer: ${o.error} (step ${o.step}, ${o.kind})`;
  if (o.status === "replied") return "replied (the reply is not in the recent history)";
  if (o.status === "handed_off") return `handed the message to ${o.handed_off_to}, who answers it here`;
  return `${o.status}: ${o.error || ""}`;
}

$("#chat-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = $("#chat-text").value.trim();
  const agent = $("#chat-agent").value.trim();
  if (!text) return;
  const send = $("#chat-send");
  send.disabled = true;
  line("you", "you", text);
  const pending = line("agent", agent, "…");
  $("#chat-text").value = "";
  try {
    const said = await post("/console/api/chat", { agent_id: agent, channel_id: $("#chat-channel").value.trim(), text });
    const o = said.outcome;
    if (said.reply) {
      pending.querySelector(".text").textContent = said.reply;
    } else {
      pending.className = "note";
      pending.querySelector(".text").textContent = outcomeNote(o);
    }
    if (o) {
      const extra = [...o.tool_calls.map((c) => `tool ${c.tool}: ${c.result}`), ...o.notes.map((n) => `note: ${n}`)];
      const meta = `${o.llm_source || o.status} · ${ms(o.total_ms)}${extra.length ? ` · ${extra.join(" · ")}` : ""}`;
      pending.append(el("span", { class: "who" }, meta));
    }
  } catch (err) {
    pending.className = "note";
    pending.querySelector(".text").textContent = err.message;
  } finally {
    send.disabled = false;
    $("#chat-text").focus();
  }
});

$("#chat-text").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("#chat-form").requestSubmit();
  }
});

// --- start --------------------------------------------------------------------------------

async function start() {
  info = await api("/console/api/info");
  $("#where").textContent = `${info.mode} mode · ${info.subject}`;
  $("#open-warning").hidden = !info.open;
  $("#logout").hidden = info.open;
  $("#agent-list").replaceChildren(...info.agents.map((a) => el("option", { value: a })));
  $("#chat-channel").value = info.channel;
  connect();
  loadLetters(true);
  setInterval(() => {
    if (visible("#view-agents")) loadAgents();
    if (info.mode === "jetstream") loadLetters(!visible("#view-letters"));
  }, 10000);
  const wanted = tabs.find((t) => `#${t.id.slice(4)}` === location.hash);
  show(wanted || tabs[0]);
}

start().catch((err) => liveState(err.message, false));
