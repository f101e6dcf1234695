// oi web UI: plain DOM, no framework, no build step, no request to anything but this server.
// Honest display: everything from the model, a block, a record or a file name is put on the
// page with textContent (never innerHTML), and hidden characters are shown as escapes by the
// rules of orchestrator/safe_text.py (the terminal's sanitizer).
"use strict";

// --- the rules of safe_text.py -------------------------------------------------------------
const BIDI = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069";
const FORMAT = "\u00ad\u0600-\u0605\u06dd\u070f\u0890\u0891\u08e2\u180e\u200b-\u200d\u2060-\u2064" +
  "\u206a-\u206f\ufeff\ufff9-\ufffb\\u{110bd}\\u{110cd}\\u{13430}-\\u{1343f}\\u{1bca0}-\\u{1bca3}" +
  "\\u{1d173}-\\u{1d17a}\\u{e0000}-\\u{e007f}";
const FILLERS = "\u034f\u115f\u1160\u17b4\u17b5\u180b-\u180d\u180f\u2800\u3164\uffa0\\u{e0100}-\\u{e01ef}";
const SEPARATORS = "\u2028\u2029";
const CONTROLS = "\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f";
const HIDDEN = new RegExp(`[${CONTROLS}${BIDI}${FORMAT}${FILLERS}${SEPARATORS}]|[\\ud800-\\udfff]`, "gu");
const HIDDEN_OUTPUT = new RegExp(`[${BIDI}${FORMAT}${FILLERS}${SEPARATORS}]`, "gu");
// Every escape sequence in one pass (OSC/DCS/SOS/PM/APC strings, CSI, other ESC, a lone ESC).
const SEQUENCE = /\x1b[\]P^_X][\s\S]*?(?:\x07|\x1b\\|$)|\x1b\[[0-?]*[ -/]*[@-~]|\x1b[ -/]*[0-~]|\x1b/g;
const OUTPUT_CONTROLS = /[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f-\x9f]/g;

function escapeChar(ch) {
  const code = ch.codePointAt(0);
  if (ch === "\r") return "\\r";
  if (code <= 0xff) return "\\x" + code.toString(16).padStart(2, "0");
  if (code <= 0xffff) return "\\u" + code.toString(16).padStart(4, "0");
  return "\\U" + code.toString(16).padStart(8, "0");
}

// Append `text` to `parent`, hidden characters as highlighted escapes (prose and code).
function putText(parent, text, pattern = HIDDEN) {
  let last = 0;
  const s = String(text);
  for (const m of s.matchAll(pattern)) {
    if (m.index > last) parent.append(document.createTextNode(s.slice(last, m.index)));
    const esc = document.createElement("span");
    esc.className = "esc";
    esc.textContent = escapeChar(m[0]);
    esc.title = "a hidden character, shown as its escape";
    parent.append(esc);
    last = m.index + m[0].length;
  }
  if (last < s.length) parent.append(document.createTextNode(s.slice(last)));
  return parent;
}

// Block output: sequences and controls dropped (no colours here), \r\n kept as a line break.
function cleanOutput(text) {
  return String(text).replace(SEQUENCE, "").replace(/\r\n/g, "\n").replace(/\r/g, "\n")
    .replace(OUTPUT_CONTROLS, "");
}

function hiddenWarnings(code) {
  const kinds = new Map();
  String(code).split("\n").forEach((line, i) => {
    for (const m of line.matchAll(HIDDEN)) {
      const c = m[0].codePointAt(0);
      const kind = new RegExp(`[${BIDI}]`, "u").test(m[0]) ? "bidi control (the code may display in another order than it runs)"
        : (c < 0x20 || (c >= 0x7f && c <= 0x9f)) ? "control character (a terminal would act on it)"
        : "invisible character (it is in the code but shows as nothing)";
      if (!kinds.has(kind)) kinds.set(kind, new Set());
      kinds.get(kind).add(i + 1);
    }
  });
  return [...kinds].map(([kind, lines]) => `line ${[...lines].slice(0, 6).join(", ")}: ${kind}`);
}

// --- small helpers ---------------------------------------------------------------------------
const $ = (id) => document.getElementById(id);
function el(tag, cls, text) {
  const node = document.createElement(tag);
  if (cls) node.className = cls;
  if (text !== undefined) putText(node, text);
  return node;
}
const state = { token: sessionStorage.getItem("oi-token"), session: null, busy: false,
  pending: null, card: null, reply: null, blockStart: 0, seenFiles: new Map(), perf: [],
  vision: false, attached: [] };

async function api(method, path, body, raw) {
  const headers = { Authorization: "Bearer " + state.token };
  const init = { method, headers };
  if (body !== undefined && !raw) { headers["Content-Type"] = "application/json"; init.body = JSON.stringify(body); }
  if (raw) init.body = body;
  const reply = await fetch(path, init);
  if (reply.status === 401 && path !== "/api/whoami") signOut("your token was refused; sign in again");
  if (!reply.ok && reply.status !== 204) {
    let detail = reply.statusText;
    try { const j = await reply.json(); detail = typeof j.detail === "string" ? j.detail : JSON.stringify(j.detail); } catch (e) { /* not JSON */ }
    throw new Error(`${reply.status}: ${detail}`);
  }
  return reply;
}
const q = (s) => encodeURIComponent(s);

// --- sign in -----------------------------------------------------------------------------------
async function signIn(token) {
  state.token = token;
  try {
    const who = await (await api("GET", "/api/whoami")).json();
    sessionStorage.setItem("oi-token", token);
    $("signin").hidden = true;
    $("app").hidden = false;
    $("who").textContent = "";
    putText($("who"), `${who.user}${who.auto_run ? " · auto-run (sandboxed)" : ""}`);
    await refreshSessions();
    $("message").focus();
  } catch (err) {
    sessionStorage.removeItem("oi-token");
    state.token = null;
    $("signin-error").textContent = "That token was refused (" + err.message.split(":")[0] + ").";
  }
}
function signOut(why) {
  sessionStorage.removeItem("oi-token");
  state.token = null;
  $("app").hidden = true;
  $("signin").hidden = false;
  $("signin-error").textContent = why || "";
}

// --- sessions ----------------------------------------------------------------------------------
async function refreshSessions() {
  const rows = await (await api("GET", "/api/sessions")).json();
  const list = $("sessions");
  list.replaceChildren();
  for (const row of rows) {
    const item = el("li", row.id === state.session ? "current" : "");
    item.dataset.id = row.id;
    item.append(el("span", "title", row.title || "(new session)"));
    item.append(el("span", "meta", `${row.state} · ${new Date(row.created * 1000).toLocaleString()} · ${row.workdir}`));
    const del = el("button", "delete quiet", "✕");
    del.title = "delete this session, its record and its workdir";
    del.type = "button";
    del.addEventListener("click", async (ev) => {
      ev.stopPropagation();
      if (!confirm("Delete this session, its record and its workdir?")) return;
      await api("DELETE", `/api/sessions/${q(row.id)}`);
      if (state.session === row.id) closeSession();
      refreshSessions();
    });
    item.append(del);
    item.addEventListener("click", () => openSession(row.id));
    list.append(item);
  }
}
function closeSession() {
  state.session = null;
  state.attached = [];
  showAttachments();
  $("conversation").replaceChildren();
  $("session-title").textContent = "No session open";
  $("session-workdir").textContent = "";
  setBusy(false);
}
async function newSession() {
  const row = await (await api("POST", "/api/sessions", {})).json();
  await openSession(row.id);
}
async function openSession(id) {
  const info = await (await api("GET", `/api/sessions/${q(id)}`)).json();
  state.session = id;
  state.seenFiles = new Map();
  state.vision = Boolean(info.vision);
  state.attached = [];
  showAttachments();
  $("conversation").replaceChildren();
  $("session-title").replaceChildren();
  putText($("session-title"), info.title || "(new session)");
  $("session-workdir").replaceChildren();
  putText($("session-workdir"), info.workdir);
  $("message").disabled = false;
  $("send").disabled = false;
  await showHistory(id);
  await refreshFiles(true);
  refreshSessions();
  if (info.turn && info.turn.running) follow(`/api/sessions/${q(id)}/events`, "GET");
  else setBusy(false);
}
async function showHistory(id) {
  let records = [];
  try { records = await (await api("GET", `/api/sessions/${q(id)}/record`)).json(); } catch (e) { return; }
  for (const r of records) {
    if (r.type === "message" && r.message.role === "user" && !String(r.message.content).startsWith("[oi] ")) {
      $("conversation").append(el("div", "msg user", r.message.content));
    } else if (r.type === "message" && r.message.role === "assistant" && r.message.content) {
      const box = el("div", "msg model");
      renderMarkdown(box, r.message.content);
      $("conversation").append(box);
    } else if (r.type === "event" && ["code_proposed", "decision", "result"].includes(r.event)) {
      handle({ ...r, awaits_approval: false }, true);
    }
  }
}

// --- the conversation --------------------------------------------------------------------------
function setBusy(busy) {
  state.busy = busy;
  $("send").disabled = busy || !state.session;
  $("session-state").textContent = busy ? "working…" : "";
}
function scrollDown() { const c = $("conversation"); c.scrollTop = c.scrollHeight; }
function note(text, cls) { $("conversation").append(el("div", "note " + (cls || ""), text)); scrollDown(); }

async function send(text) {
  if (!state.session || state.busy || !text.trim()) return;
  const images = [...state.attached];
  const shown = el("div", "msg user", text);
  if (images.length) shown.append(el("div", "attached", "with images: " + images.join(", ")));
  $("conversation").append(shown);
  $("message").value = "";
  scrollDown();
  const body = images.length ? { text, images } : { text };
  // the attachments are cleared once the server took the message (a refusal keeps them)
  await follow(`/api/sessions/${q(state.session)}/messages`, "POST", body,
    () => { state.attached = []; showAttachments(); });
}

// Read a stream of Server-Sent Events (fetch: EventSource cannot send the token in a header).
async function follow(path, method, body, accepted) {
  setBusy(true);
  state.stopping = false;
  state.reply = null;
  const session = state.session;
  try {
    const reply = await api(method, path, body);
    if (accepted) accepted();
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const chunk = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        for (const line of chunk.split("\n")) {
          if (line.startsWith("data: ")) handle(JSON.parse(line.slice(6)), false, performance.now());
        }
      }
    }
  } catch (err) {
    note("oi: " + err.message, "error");
  } finally {
    setBusy(false);
    state.pending = null;
    await refreshVision(session);
    await refreshSessions();
    const row = document.querySelector(`#sessions li.current .title`);
    if (row) { $("session-title").replaceChildren(); putText($("session-title"), row.textContent); }
  }
}

function handle(ev, fromRecord, arrived) {
  switch (ev.event) {
    case "model_waiting": state.reply = null; break;
    case "model_text": modelText(ev.text, arrived); break;
    case "model_restarted": if (state.reply) { state.reply.raw = ""; renderMarkdown(state.reply.box, ""); } break;
    case "code_proposed": proposed(ev); break;
    case "decision": decided(ev); break;
    case "output": output(ev); break;
    case "result": result(ev, fromRecord); break;
    case "notice": note("oi: " + ev.message); break;
    case "error": note("oi: error: " + ev.message, "error"); break;
    case "end": if (ev.status !== "finished") note(`oi: ${ev.status}: ${ev.reason}`); break;
    default: break;
  }
}

function modelText(text, arrived) {
  if (!state.reply) {
    const box = el("div", "msg model");
    $("conversation").append(box);
    state.reply = { box, raw: "" };
  }
  state.reply.raw += text;
  renderMarkdown(state.reply.box, state.reply.raw);
  if (arrived !== undefined) {
    // for the browser tests' latency figures: when each piece reached the screen
    const marker = text;
    requestAnimationFrame(() => state.perf.push({ text: marker, shown: performance.timeOrigin + performance.now() }));
  }
  scrollDown();
}

// --- proposed blocks ---------------------------------------------------------------------------
function sandboxLine(box) {
  const head = el("div", "card-head");
  head.append(el("span", "", `image ${box.image}`), el("span", "", `memory ${box.memory}`),
    el("span", "", `${box.cpus} CPU`), el("span", "", `timeout ${box.timeout_s} s`),
    el("span", "", `isolation ${box.isolation}`));
  const words = { none: "no network", allowlist: "network: only " + (box.allow_hosts || []).join(", "),
    open: "network OPEN: the internet and your LAN" };
  head.append(el("span", box.network === "open" ? "net-open" : "", words[box.network] || box.network));
  head.append(el("span", "", `workdir ${box.workdir}`));
  for (const mount of box.mounts || []) head.append(el("span", "", `mount ${mount}`));
  if ((box.env || []).length) head.append(el("span", "", `env ${box.env.join(", ")}`));
  return head;
}

function proposed(ev) {
  state.reply = null;
  const card = el("div", "card");
  card.dataset.index = ev.index;
  card.append(el("div", "card-head", `block ${ev.index} · ${ev.language} · sha256 ${ev.sha256.slice(0, 16)}…`));
  card.append(sandboxLine(ev.sandbox));
  for (const warning of hiddenWarnings(ev.code)) card.append(el("div", "warning", "⚠ " + warning));
  const pre = el("pre");
  pre.append(highlight(ev.code, ev.language));
  card.append(pre);
  const actions = el("div", "actions");
  card.append(actions);
  card.append(el("div", "status"));
  $("conversation").append(card);
  state.card = card;
  if (ev.awaits_approval) {
    state.pending = ev;
    proposedButtons(card, ev);
    actions.querySelector("button.primary").focus();
  }
  scrollDown();
}

async function answer(action, code) {
  const ev = state.pending;
  if (!ev) return;
  const body = { action, sha256: ev.sha256 };  // the hash of exactly the code shown
  if (code !== undefined) body.code = code;
  const card = state.card;
  // Buttons go at once: the events this answer causes (a Stop button, an edit's new card) may
  // arrive before the reply to this request.
  if (card) card.querySelector(".actions").replaceChildren();
  try {
    await api("POST", `/api/sessions/${q(state.session)}/approval`, body);
    if (state.pending === ev) state.pending = null;
  } catch (err) {
    note("oi: " + err.message, "error");
    if (card && state.pending === ev) proposedButtons(card, ev);
  }
}

function startEdit(card, ev) {
  const actions = card.querySelector(".actions");
  const area = el("textarea");
  area.value = ev.code;
  area.spellcheck = false;
  area.setAttribute("aria-label", "edited code");
  const submit = el("button", "primary", "Show edited code");
  const cancel = el("button", "", "Cancel");
  submit.addEventListener("click", () => answer("edit", area.value));
  cancel.addEventListener("click", () => { area.remove(); actions.replaceChildren(); proposedButtons(card, ev); });
  actions.replaceChildren(submit, cancel);
  card.insertBefore(area, actions);
  area.focus();
}
function proposedButtons(card, ev) {
  const actions = card.querySelector(".actions");
  const approve = el("button", "primary", "Approve (a)");
  const edit = el("button", "", "Edit (e)");
  const deny = el("button", "danger", "Deny (d)");
  approve.addEventListener("click", () => answer("approve"));
  edit.addEventListener("click", () => startEdit(card, ev));
  deny.addEventListener("click", () => answer("deny"));
  actions.append(approve, edit, deny);
}

function decided(ev) {
  const card = cardFor(ev.index);
  if (!card) return;
  const words = { run: "approved: running", declined: "denied: not run", edited: "edited: shown again below",
    quit: "stopped: not run", skipped: "skipped" };
  const status = card.querySelector(".status");
  status.replaceChildren();
  putText(status, `${words[ev.decision] || ev.decision}${ev.by === "auto" ? " (auto-run)" : ""}${ev.reason ? " – " + ev.reason : ""}`);
  const area = card.querySelector("textarea");
  if (area) area.remove();
  card.querySelector(".actions").replaceChildren();
  if (ev.decision === "run") {
    state.blockStart = Date.now() / 1000;
    const stop = el("button", "danger", "Stop (s)");
    stop.addEventListener("click", stopTurn);
    card.querySelector(".actions").append(stop);
  }
}
function cardFor(index) {
  const cards = [...document.querySelectorAll(`.card[data-index="${Number(index)}"]`)];
  return cards[cards.length - 1];
}
async function stopTurn() {
  state.stopping = true;
  try { await api("POST", `/api/sessions/${q(state.session)}/stop`); } catch (err) { note("oi: " + err.message, "error"); }
}

function output(ev) {
  const card = cardFor(ev.index);
  if (!card) return;
  let pre = card.querySelector(".output." + ev.stream);
  if (!pre) {
    pre = el("pre", "output " + ev.stream);
    card.insertBefore(pre, card.querySelector(".actions"));
  }
  putText(pre, cleanOutput(ev.text), HIDDEN_OUTPUT);
  scrollDown();
}

function limitWords(ev) {
  const r = ev.result || {};
  const parts = [];
  if (ev.interrupted || state.stopping) parts.push("stopped by you: the block was killed and its container removed");
  if (ev.timed_out) parts.push("timed out (wall-clock limit)");
  if (ev.oom_killed) parts.push("killed: memory limit");
  if (r.workdir_overrun) parts.push("stopped: the workdir limit was reached");
  if (r.stdout_cut || r.stderr_cut) parts.push(`output trimmed (${(r.stdout_cut || 0) + (r.stderr_cut || 0)} bytes cut)`);
  return parts;
}

function result(ev, fromRecord) {
  const card = cardFor(ev.index);
  if (!card) return;
  card.querySelector(".actions").replaceChildren();
  if (fromRecord && ev.result) {
    for (const stream of ["stdout", "stderr"]) {
      if (ev.result[stream]) output({ index: ev.index, stream, text: ev.result[stream] });
    }
  }
  const status = card.querySelector(".status");
  status.replaceChildren();
  const ok = ev.exit_code === 0 && !ev.timed_out && !ev.oom_killed;
  const code = ev.exit_code === null ? "no exit code" : `exit code ${ev.exit_code}`;
  status.append(el("span", ok ? "ok" : "bad", code), document.createTextNode(` · ${Number(ev.duration_s).toFixed(2)} s`));
  for (const words of limitWords(ev)) status.append(el("div", "bad", words));
  if (!fromRecord) refreshFiles(false, card);
}

// --- markdown, as DOM (never HTML) ---------------------------------------------------------------
function renderMarkdown(box, raw) {
  box.replaceChildren();
  const lines = String(raw).split("\n");
  let para = null;
  let list = null;
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    const fenceMatch = line.match(/^\s*(`{3,}|~{3,})\s*([\w+-]*)/);
    if (fenceMatch) {
      const body = [];
      let j = i + 1;
      while (j < lines.length && !lines[j].trim().startsWith(fenceMatch[1])) body.push(lines[j++]);
      const pre = el("pre");
      pre.append(highlight(body.join("\n"), fenceMatch[2]));
      box.append(pre);
      i = j;
      para = list = null;
      continue;
    }
    const heading = line.match(/^(#{1,6})\s+(.*)$/);
    const item = line.match(/^\s*(?:[-*+]|\d+[.)])\s+(.*)$/);
    if (!line.trim()) { para = list = null; continue; }
    if (heading) {
      const h = el("h" + Math.min(6, heading[1].length + 2));
      inline(h, heading[2]);
      box.append(h);
      para = list = null;
    } else if (item) {
      if (!list) { list = el(/^\s*\d/.test(line) ? "ol" : "ul"); box.append(list); }
      const li = el("li");
      inline(li, item[1]);
      list.append(li);
      para = null;
    } else {
      if (!para) { para = el("p"); box.append(para); } else para.append(document.createTextNode(" "));
      inline(para, line);
      list = null;
    }
  }
}
function inline(parent, text) {
  const pattern = /(`+)([\s\S]*?)\1|\*\*([^*]+)\*\*|\*([^*\s][^*]*)\*/g;
  let last = 0;
  for (const m of text.matchAll(pattern)) {
    if (m.index > last) putText(parent, text.slice(last, m.index));
    if (m[1]) parent.append(el("code", "", m[2]));
    else if (m[3]) parent.append(el("strong", "", m[3]));
    else parent.append(el("em", "", m[4]));
    last = m.index + m[0].length;
  }
  if (last < text.length) putText(parent, text.slice(last));
}

// --- syntax highlighting: a small tokenizer, spans with textContent -----------------------------
const KEYWORDS = {
  python: "and as assert async await break class continue def del elif else except False finally for from global if import in is lambda None nonlocal not or pass raise return True try while with yield print",
  javascript: "async await break case catch class const continue default delete do else export extends false finally for function if import in instanceof let new null return switch this throw true try typeof undefined var void while yield console require",
  shell: "if then else elif fi for in do done while until case esac function return local export echo cd exit set test",
};
const ALIASES = { py: "python", python3: "python", js: "javascript", node: "javascript", sh: "shell", bash: "shell", zsh: "shell" };
function highlight(code, language) {
  const lang = ALIASES[language] || language;
  const frag = document.createDocumentFragment();
  const words = new Set((KEYWORDS[lang] || "").split(" "));
  const comment = lang === "javascript" ? "//[^\\n]*|/\\*[\\s\\S]*?\\*/" : "#[^\\n]*";
  const token = new RegExp(`(${comment})|("(?:\\\\.|[^"\\\\])*"|'(?:\\\\.|[^'\\\\])*'|\`(?:\\\\.|[^\`\\\\])*\`)|(\\b\\d[\\d_.]*\\b)|([A-Za-z_$][\\w$]*)`, "g");
  let last = 0;
  for (const m of String(code).matchAll(token)) {
    if (m.index > last) putText(frag, code.slice(last, m.index));
    const cls = m[1] ? "tok-c" : m[2] ? "tok-s" : m[3] ? "tok-n" : words.has(m[4]) ? "tok-k" : "";
    if (cls) { const span = el("span", cls); putText(span, m[0]); frag.append(span); } else putText(frag, m[0]);
    last = m.index + m[0].length;
  }
  if (last < code.length) putText(frag, code.slice(last));
  return frag;
}

// --- images for a vision model ---------------------------------------------------------------------
const IMAGE_EXTS = ["png", "jpg", "jpeg", "webp"];  // what the server sends (vision.py)
const isImage = (name) => IMAGE_EXTS.includes(name.split(".").pop().toLowerCase());
function attach(name) {
  const status = $("upload-status");
  if (!state.vision) {
    status.replaceChildren();
    putText(status, `${name} is not attached: images are not sent to the model in this session ` +
      "(the server runs without --vision). It stays in the workdir, where a block can read it.");
    status.className = "hint error";
    return;
  }
  if (!state.attached.includes(name)) state.attached.push(name);
  status.replaceChildren();  // the chips by the message box say it now
  showAttachments();
  $("message").focus();
}
function showAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  box.hidden = state.attached.length === 0;
  if (box.hidden) return;
  box.append(el("span", "hint", "Sent with your next message:"));
  for (const name of state.attached) {
    const chip = el("span", "chip", name);
    const drop = el("button", "quiet detach", "✕");
    drop.type = "button";
    drop.title = "do not send this image";
    drop.addEventListener("click", () => { state.attached = state.attached.filter((n) => n !== name); showAttachments(); });
    chip.append(drop);
    box.append(chip);
  }
}
async function refreshVision(id) {
  if (!id || id !== state.session) return;
  try {
    const info = await (await api("GET", `/api/sessions/${q(id)}`)).json();
    if (id === state.session) state.vision = Boolean(info.vision);
  } catch (e) { return; }
  $("vision-note").hidden = state.vision;
}
function attachButton(name) {
  const button = el("button", "attach", "attach");
  button.type = "button";
  button.title = state.vision ? "attach to the next message (sent to the vision model)"
    : "images are not sent to the model in this session (no --vision)";
  button.addEventListener("click", () => attach(name));
  return button;
}

// --- files -------------------------------------------------------------------------------------
async function refreshFiles(initial, card) {
  if (!state.session) return;
  const files = await (await api("GET", `/api/sessions/${q(state.session)}/files`)).json();
  const list = $("file-list");
  list.replaceChildren();
  $("vision-note").hidden = state.vision;
  for (const f of files) {
    const li = el("li");
    li.append(el("span", "name", f.name), el("span", "hint", `${f.size} B`));
    const get = el("button", "", "⬇");
    get.title = "download";
    get.addEventListener("click", () => download(f.name));
    li.append(get);
    if (isImage(f.name)) li.append(attachButton(f.name));
    list.append(li);
    const before = state.seenFiles.get(f.name);
    if (!initial && card && (before === undefined || before < f.mtime)) showInline(card, f.name);
    state.seenFiles.set(f.name, f.mtime);
  }
}
async function fileBlob(name, inline) {
  const reply = await api("GET", `/api/sessions/${q(state.session)}/files/content?path=${q(name)}${inline ? "&inline=1" : ""}`);
  return reply.blob();
}
async function download(name) {
  const url = URL.createObjectURL(await fileBlob(name, false));
  const a = document.createElement("a");
  a.href = url;
  a.download = name.split("/").pop();
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}
async function showInline(card, name) {
  const ext = name.split(".").pop().toLowerCase();
  const place = card.nextSibling ? (n) => card.parentNode.insertBefore(n, card.nextSibling) : (n) => card.parentNode.append(n);
  if (["png", "jpg", "jpeg", "svg"].includes(ext)) {
    const blob = await fileBlob(name, true);
    const fig = el("figure", "figure");
    const img = document.createElement("img");
    img.alt = name;
    if (ext === "svg") {
      // An SVG is only ever an image here (no script runs in <img>), and a data: URL cannot
      // be opened as a page of this origin.
      const bytes = new Uint8Array(await blob.arrayBuffer());
      let bin = "";
      bytes.forEach((b) => { bin += String.fromCharCode(b); });
      img.src = "data:image/svg+xml;base64," + btoa(bin);
    } else {
      img.src = URL.createObjectURL(new Blob([blob], { type: ext === "png" ? "image/png" : "image/jpeg" }));
    }
    fig.append(img, el("figcaption", "", name));
    place(fig);
  } else if (ext === "csv") {
    const text = await (await fileBlob(name, false)).slice(0, 65536).text();
    const table = el("table", "csv");
    table.append(el("caption", "", `${name} (first rows)`));
    const rows = parseCsv(text).slice(0, 21);
    rows.forEach((row, i) => {
      const tr = el("tr");
      for (const cell of row) tr.append(el(i === 0 ? "th" : "td", "", cell));
      table.append(tr);
    });
    place(table);
  }
  scrollDown();
}
function parseCsv(text) {
  const rows = [];
  let row = [], cell = "", quoted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') { cell += '"'; i++; } else if (c === '"') quoted = false; else cell += c;
    } else if (c === '"') quoted = true;
    else if (c === ",") { row.push(cell); cell = ""; }
    else if (c === "\n") { row.push(cell.replace(/\r$/, "")); rows.push(row); row = []; cell = ""; if (rows.length > 21) break; }
    else cell += c;
  }
  if (cell || row.length) { row.push(cell); rows.push(row); }
  return rows;
}
async function upload(files) {
  if (!state.session) { $("upload-status").textContent = "open a session first"; return; }
  for (const file of files) {
    $("upload-status").className = "hint";
    $("upload-status").textContent = "uploading " + file.name + "…";
    try {
      await api("PUT", `/api/sessions/${q(state.session)}/files?path=${q(file.name)}`, file, true);
      $("upload-status").textContent = "";
      $("upload-status").className = "hint";
      putText($("upload-status"), "uploaded " + file.name);
      if (isImage(file.name)) {
        const offer = el("button", "attach-offer", "attach to next message");
        offer.type = "button";
        offer.addEventListener("click", () => attach(file.name));
        $("upload-status").append(" ", offer);
      }
    } catch (err) { $("upload-status").textContent = "not uploaded: " + err.message; }
  }
  refreshFiles(true);
}

// --- wiring ------------------------------------------------------------------------------------
function isTyping(target) { return ["TEXTAREA", "INPUT"].includes(target.tagName); }
document.addEventListener("DOMContentLoaded", () => {
  $("signin-form").addEventListener("submit", (ev) => { ev.preventDefault(); signIn($("token").value.trim()); $("token").value = ""; });
  $("signout").addEventListener("click", () => signOut(""));
  $("new-session").addEventListener("click", () => newSession().catch((err) => note("oi: " + err.message, "error")));
  $("composer").addEventListener("submit", (ev) => { ev.preventDefault(); send($("message").value); });
  $("message").addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey && !ev.isComposing) { ev.preventDefault(); send($("message").value); }
  });
  document.addEventListener("keydown", (ev) => {
    if (isTyping(ev.target) || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (state.pending && ev.key === "a") { ev.preventDefault(); answer("approve"); }
    else if (state.pending && ev.key === "d") { ev.preventDefault(); answer("deny"); }
    else if (state.pending && ev.key === "e" && state.card) { ev.preventDefault(); startEdit(state.card, state.pending); }
    else if (state.busy && !state.pending && ev.key === "s") { ev.preventDefault(); stopTurn(); }
  });
  const zone = $("dropzone");
  zone.addEventListener("dragover", (ev) => { ev.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (ev) => { ev.preventDefault(); zone.classList.remove("over"); upload(ev.dataTransfer.files); });
  $("file-input").addEventListener("change", (ev) => upload(ev.target.files));
  if (state.token) signIn(state.token);
});
window.oiPerf = state.perf;
window.oiHidden = HIDDEN;  // the browser tests compare it with safe_text.py's table
