// Live captions: microphone -> AudioWorklet (16 kHz s16le, 100 ms chunks) -> run-task
// WebSocket on this server -> sentence in progress + final sentences.
//
// Auth: GET /api/v1/auth-info says whether an API key is needed.  If so, the key (typed once,
// kept in sessionStorage: this tab only) goes in the Authorization header of
// POST /api/v1/tokens; the WebSocket URL carries only the single-use token that returns.
// Every connection attempt gets a fresh token.
//
// Reconnect: after a drop the page keeps capturing (up to MAX_QUEUED_MS of audio waits),
// reconnects with capped exponential backoff and jitter, and starts a new task; its times are
// shifted by the audio that came before it, so the transcript stays one timeline.
"use strict";

(() => {
  const INFERENCE_PATH = "/api-ws/v1/inference";
  const TOKENS_PATH = "/api/v1/tokens";
  const AUTH_INFO_PATH = "/api/v1/auth-info";
  const VOCABULARY_PATH = "/api/v1/services/audio/asr/customization";
  const MODEL = "fun-asr-realtime";
  const RATE = 16000;
  const CHUNK_SAMPLES = 1600; // 100 ms
  const MAX_QUEUED_MS = 30000; // audio kept while disconnected; older audio is dropped
  const MAX_BUFFERED_BYTES = 256 * 1024; // WebSocket send buffer before we wait
  const BACKOFF_BASE_MS = 500;
  const BACKOFF_CAP_MS = 15000;
  const FINISH_TIMEOUT_MS = 20000;
  const KEY_STORAGE = "callscribe.apiKey"; // sessionStorage: this tab only
  const LARGE_STORAGE = "callscribe.largeText"; // localStorage: a display preference
  // task-failed codes after which a new task is worth trying; anything else is shown and stops
  const RETRYABLE = new Set(["ServerShuttingDown", "CLIENT_ERROR", "InternalError",
    "AudioTooLarge", "SilenceTimeout", "Throttling", "ServerBusy", "EngineError"]);

  const $ = (id) => document.getElementById(id);
  const ui = {
    state: $("state"), stateText: $("state-text"), error: $("error"),
    form: $("controls"), keyField: $("key-field"), key: $("api-key"),
    language: $("language"), silence: $("silence"), hotwords: $("hotwords"),
    start: $("start"), stop: $("stop"), large: $("large"), clear: $("clear"),
    firstDelay: $("first-delay"), lastDelay: $("last-delay"), audioSent: $("audio-sent"),
    captions: $("captions"), finals: $("finals"), partial: $("partial"), empty: $("empty"),
    dlSrt: $("dl-srt"), dlVtt: $("dl-vtt"), dlJson: $("dl-json"),
  };

  const st = {
    authRequired: false,
    running: false, // the user pressed Start and not Stop
    stopping: false,
    ws: null,
    taskId: null,
    taskStarted: false,
    taskBaseMs: null, // session time of this task's first audio
    taskSentSamples: 0,
    fatal: null, // a task-failed that must not be retried
    attempt: 0,
    reconnectTimer: null,
    queue: [], // {start: sample index in the session, buf: ArrayBuffer}
    queuedSamples: 0,
    capturedSamples: 0,
    droppedMs: 0,
    firstSentAt: null, firstResultAt: null, finishSentAt: null,
    finishWaiter: null,
    partial: null, // {text, begin_ms}
    lines: [], // final sentences of this page session
    sessionStartedAt: null,
    audio: null, // {ctx, stream, node, source, sink, flushed}
    vocab: { key: "", id: null },
  };

  // --- display ----------------------------------------------------------------------------

  const STATE_TEXT = {
    connecting: "Connecting…", live: "Live", reconnecting: "Reconnecting…",
    stopping: "Finishing…", stopped: "Stopped", error: "Error",
  };

  const stateHistory = [];

  function setState(name, detail) {
    if (stateHistory[stateHistory.length - 1] !== name) {
      stateHistory.push(name);
      if (stateHistory.length > 100) stateHistory.shift();
    }
    ui.state.dataset.state = name;
    ui.stateText.textContent = STATE_TEXT[name] + (detail ? ` ${detail}` : "");
    const busy = st.running || name === "stopping";
    ui.start.disabled = busy;
    ui.stop.disabled = !busy || name === "stopping";
    for (const el of [ui.key, ui.language, ui.silence, ui.hotwords]) el.disabled = busy;
    document.body.classList.toggle("busy", busy); // large text hides the settings meanwhile
    // a keyboard user whose button just became disabled lands on the other one
    const focused = document.activeElement;
    if (focused === ui.start && ui.start.disabled && !ui.stop.disabled) ui.stop.focus();
    else if (focused === ui.stop && ui.stop.disabled && !ui.start.disabled) ui.start.focus();
    else if ((focused === ui.stop || focused === ui.start) && focused.disabled) {
      parkedFocus = true; // while finishing: back to Start when it is enabled again
      ui.captions.focus();
    } else if (parkedFocus && !ui.start.disabled) {
      parkedFocus = false;
      if (focused === ui.captions) ui.start.focus();
    }
  }
  let parkedFocus = false;

  function showError(message) {
    ui.error.textContent = message;
    ui.error.hidden = !message;
  }

  function ms(v) {
    return v == null ? "–" : `${Math.round(v)} ms`;
  }

  function clock(msTotal) {
    const s = Math.max(0, Math.floor(msTotal / 1000));
    const h = Math.floor(s / 3600);
    const mm = String(Math.floor((s % 3600) / 60)).padStart(2, "0");
    const ss = String(s % 60).padStart(2, "0");
    return h ? `${h}:${mm}:${ss}` : `${mm}:${ss}`;
  }

  // The latest line stays in view while the reader is at the bottom; one who scrolled up to
  // reread is left there until they scroll back down.
  let stickToBottom = true;
  let autoScrolling = false;

  function nearBottom() {
    const c = ui.captions;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 64;
  }

  function keepInView() {
    if (!stickToBottom) return;
    autoScrolling = true;
    ui.captions.scrollTop = ui.captions.scrollHeight;
    requestAnimationFrame(() => { autoScrolling = false; });
  }

  function renderPartial(text) {
    ui.partial.textContent = text || "";
    ui.empty.hidden = st.lines.length > 0 || !!text;
    keepInView();
  }

  function renderLine(line) {
    const row = document.createElement("p");
    row.className = "line";
    row.dataset.emotion = line.emotion || "neutral";
    const time = document.createElement("span");
    time.className = "time";
    time.textContent = clock(line.start_ms);
    const meta = document.createElement("span");
    meta.className = "meta";
    const bits = [line.language || "?", line.emotion || "neutral"];
    if (line.interrupted) bits.push("cut off");
    meta.textContent = bits.join(" · ");
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = line.text;
    // a screen reader hears "00:03, en, neutral: text"
    const sep1 = document.createElement("span");
    sep1.className = "visually-hidden";
    sep1.textContent = ", ";
    const sep2 = document.createElement("span");
    sep2.className = "visually-hidden";
    sep2.textContent = ": ";
    row.append(time, sep1, meta, sep2, text);
    ui.finals.append(row);
    ui.empty.hidden = true;
    for (const b of [ui.dlSrt, ui.dlVtt, ui.dlJson]) b.disabled = false;
    keepInView();
  }

  // --- auth -------------------------------------------------------------------------------

  function apiKey() {
    return (ui.key.value || "").trim();
  }

  function authHeaders() {
    const k = apiKey();
    return st.authRequired && k ? { Authorization: `Bearer ${k}` } : {};
  }

  async function loadAuthInfo() {
    const r = await fetch(AUTH_INFO_PATH, { cache: "no-store" });
    if (!r.ok) throw new Error(`auth-info: HTTP ${r.status}`);
    const info = await r.json();
    st.authRequired = !!info.api_key_required;
    ui.keyField.hidden = !st.authRequired;
  }

  class Fatal extends Error {}

  async function fetchToken() {
    let r;
    try {
      r = await fetch(TOKENS_PATH, { method: "POST", headers: authHeaders(), cache: "no-store" });
    } catch (e) {
      throw new Error("server unreachable");
    }
    if (r.status === 401) throw new Fatal("The API key was refused. Check it and press Start.");
    if (!r.ok) throw new Error(`token request failed: HTTP ${r.status}`);
    const body = await r.json();
    return body.token;
  }

  // --- hotwords ---------------------------------------------------------------------------

  function hotwordEntries() {
    const lang = ui.language.value || undefined;
    const seen = new Set();
    const out = [];
    for (const raw of ui.hotwords.value.split(/\r?\n/)) {
      const text = raw.trim().replace(/\s+/g, " ");
      if (!text || seen.has(text.toLowerCase())) continue;
      seen.add(text.toLowerCase());
      out.push(lang ? { text, weight: 4, lang } : { text, weight: 4 });
    }
    return out;
  }

  async function vocabularyCall(input) {
    const r = await fetch(VOCABULARY_PATH, {
      method: "POST", cache: "no-store",
      headers: { "Content-Type": "application/json", ...authHeaders() },
      body: JSON.stringify({ model: "speech-biasing", input }),
    });
    const body = await r.json().catch(() => ({}));
    if (r.status === 401) throw new Fatal("The API key was refused. Check it and press Start.");
    if (!r.ok) throw new Fatal(`Hotwords: ${body.message || `HTTP ${r.status}`}`);
    return body.output || {};
  }

  async function ensureVocabulary() {
    const entries = hotwordEntries();
    const key = JSON.stringify(entries);
    if (key === st.vocab.key) return st.vocab.id;
    const old = st.vocab.id;
    st.vocab = { key: "", id: null };
    if (old) vocabularyCall({ action: "delete_vocabulary", vocabulary_id: old }).catch(() => {});
    if (!entries.length) return null;
    const out = await vocabularyCall({ action: "create_vocabulary", target_model: MODEL,
      prefix: "captions", vocabulary: entries });
    st.vocab = { key, id: out.vocabulary_id };
    return st.vocab.id;
  }

  // --- audio ------------------------------------------------------------------------------

  async function startCapture() {
    if (!navigator.mediaDevices || !window.AudioWorkletNode) {
      throw new Fatal("This browser cannot capture audio here (it needs https or localhost).");
    }
    let stream;
    try {
      stream = await navigator.mediaDevices.getUserMedia({
        audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false,
          autoGainControl: false },
      });
    } catch (e) {
      const why = e && e.name === "NotAllowedError" ? "permission was denied"
        : e && e.name === "NotFoundError" ? "no microphone was found" : String(e && e.message);
      throw new Fatal(`Microphone unavailable: ${why}.`);
    }
    const ctx = new AudioContext({ latencyHint: "interactive" });
    try {
      await ctx.audioWorklet.addModule("/static/pcm-worklet.js");
    } catch (e) {
      stream.getTracks().forEach((t) => t.stop());
      ctx.close();
      throw new Fatal(`Audio processing could not start: ${e.message}`);
    }
    const node = new AudioWorkletNode(ctx, "pcm-16k", {
      numberOfInputs: 1, numberOfOutputs: 1, channelCount: 1, channelCountMode: "explicit",
      processorOptions: { targetRate: RATE, chunkSamples: CHUNK_SAMPLES },
    });
    const source = ctx.createMediaStreamSource(stream);
    const sink = ctx.createGain(); // keeps the graph pulled; silent
    sink.gain.value = 0;
    source.connect(node).connect(sink).connect(ctx.destination);
    const audio = { ctx, stream, node, source, sink, flushed: null };
    node.port.onmessage = (e) => {
      if (e.data instanceof ArrayBuffer) onChunk(e.data);
      else if (e.data && e.data.type === "flushed" && audio.flushed) audio.flushed();
    };
    if (ctx.state !== "running") await ctx.resume();
    st.audio = audio;
    // a microphone unplugged mid-session ends the track
    stream.getAudioTracks().forEach((t) => t.addEventListener("ended", () => {
      if (st.running) { showError("The microphone stopped."); stop(); }
    }));
  }

  async function stopCapture() {
    const a = st.audio;
    if (!a) return;
    st.audio = null;
    await new Promise((resolve) => {
      a.flushed = resolve;
      a.node.port.postMessage({ type: "flush" });
      setTimeout(resolve, 300);
    });
    a.node.port.postMessage({ type: "stop" });
    a.stream.getTracks().forEach((t) => t.stop());
    a.source.disconnect();
    a.node.disconnect();
    await a.ctx.close().catch(() => {});
  }

  function onChunk(buf) {
    const n = buf.byteLength / 2;
    st.queue.push({ start: st.capturedSamples, buf });
    st.capturedSamples += n;
    st.queuedSamples += n;
    while (st.queuedSamples > (MAX_QUEUED_MS * RATE) / 1000 && st.queue.length > 1) {
      const dropped = st.queue.shift();
      st.queuedSamples -= dropped.buf.byteLength / 2;
      st.droppedMs += (dropped.buf.byteLength / 2 / RATE) * 1000;
    }
    pump();
  }

  let pumpTimer = null;
  function pump(force) {
    const ws = st.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN || !st.taskStarted || st.finishSentAt) return;
    while (st.queue.length) {
      if (!force && ws.bufferedAmount > MAX_BUFFERED_BYTES) {
        if (!pumpTimer) pumpTimer = setTimeout(() => { pumpTimer = null; pump(); }, 50);
        return;
      }
      const chunk = st.queue.shift();
      const n = chunk.buf.byteLength / 2;
      st.queuedSamples -= n;
      if (st.taskBaseMs == null) st.taskBaseMs = (chunk.start / RATE) * 1000;
      ws.send(chunk.buf);
      st.taskSentSamples += n;
      if (st.firstSentAt == null) st.firstSentAt = performance.now();
    }
    ui.audioSent.textContent = `${(st.taskSentSamples / RATE).toFixed(1)} s`;
  }

  // --- the run-task protocol --------------------------------------------------------------

  function newTaskId() {
    const b = new Uint8Array(16);
    crypto.getRandomValues(b);
    return Array.from(b, (x) => x.toString(16).padStart(2, "0")).join("");
  }

  function wsUrl(token) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const q = token ? `?token=${encodeURIComponent(token)}` : "";
    return `${scheme}//${location.host}${INFERENCE_PATH}${q}`;
  }

  function send(ws, header, payload) {
    ws.send(JSON.stringify({ header: { streaming: "duplex", task_id: st.taskId, ...header },
      payload }));
  }

  function runTaskParameters() {
    const p = { format: "pcm", sample_rate: RATE, heartbeat: true,
      max_sentence_silence: Number(ui.silence.value) };
    if (ui.language.value) p.language_hints = [ui.language.value];
    if (st.vocab.id) p.vocabulary_id = st.vocab.id;
    return p;
  }

  async function connect() {
    st.reconnectTimer = null;
    if (!st.running) return;
    setState(st.attempt ? "reconnecting" : "connecting");
    let token = null;
    try {
      if (st.attempt) await loadAuthInfo(); // the server may have been restarted with keys
      if (st.authRequired && !apiKey()) throw new Fatal("Enter the API key and press Start.");
      if (st.authRequired) token = await fetchToken();
    } catch (e) {
      if (e instanceof Fatal) return fail(e.message);
      return scheduleReconnect(e.message);
    }
    if (!st.running) return;
    const ws = new WebSocket(wsUrl(token));
    ws.binaryType = "arraybuffer";
    st.ws = ws;
    st.taskStarted = false;
    st.taskId = newTaskId();
    st.taskBaseMs = null;
    st.taskSentSamples = 0;
    st.firstSentAt = st.firstResultAt = st.finishSentAt = null;
    st.fatal = null;
    ui.firstDelay.textContent = ui.lastDelay.textContent = "–";
    ws.onopen = () => {
      send(ws, { action: "run-task" }, { model: MODEL, task_group: "audio", task: "asr",
        function: "recognition", input: {}, parameters: runTaskParameters() });
    };
    ws.onmessage = (ev) => { if (ws === st.ws) onMessage(ev); };
    ws.onclose = (ev) => onClose(ws, ev);
  }

  function onMessage(ev) {
    if (typeof ev.data !== "string") return;
    let msg;
    try { msg = JSON.parse(ev.data); } catch (e) { return; }
    const h = msg.header || {};
    const now = performance.now();
    if (h.event === "task-started") {
      st.taskStarted = true;
      st.attempt = 0;
      showError("");
      setState("live", st.droppedMs ? `(${(st.droppedMs / 1000).toFixed(1)} s of audio lost)` : "");
      pump();
    } else if (h.event === "result-generated") {
      const s = ((msg.payload || {}).output || {}).sentence;
      if (!s || s.heartbeat) return;
      if (s.text && st.firstResultAt == null && st.firstSentAt != null) {
        st.firstResultAt = now;
        ui.firstDelay.textContent = ms(st.firstResultAt - st.firstSentAt);
      }
      if (s.sentence_end) addFinal(s);
      else {
        st.partial = { text: s.text, begin_ms: (st.taskBaseMs || 0) + (s.begin_time || 0) };
        renderPartial(s.text);
      }
    } else if (h.event === "task-finished") {
      if (st.finishSentAt != null) ui.lastDelay.textContent = ms(now - st.finishSentAt);
      if (st.finishWaiter) st.finishWaiter();
      st.ws.close(1000, "done");
    } else if (h.event === "task-failed") {
      const code = h.error_code || "Error";
      const text = `${code}: ${h.error_message || "the task failed"}`;
      if (!RETRYABLE.has(code)) st.fatal = text;
      showError(text);
      if (code === "VocabularyNotFound") st.vocab = { key: "", id: null };
    }
  }

  function addFinal(s) {
    st.partial = null;
    renderPartial("");
    if (!s.text) return;
    const base = st.taskBaseMs || 0;
    const line = {
      start_ms: Math.round(base + (s.begin_time || 0)),
      end_ms: Math.round(base + (s.end_time || s.begin_time || 0)),
      text: s.text,
      language: s.language || ui.language.value || "",
      emotion: (s.emotion && s.emotion.polarity) || "neutral",
      emo_confidence: s.emotion ? s.emotion.confidence : null,
      task_id: st.taskId,
      sentence_id: s.sentence_id,
    };
    st.lines.push(line);
    renderLine(line);
  }

  function keepPartialAsLine() {
    // the connection died mid-sentence: keep what was shown
    const p = st.partial;
    if (!p || !p.text) return;
    const end = (st.taskBaseMs || 0) + (st.taskSentSamples / RATE) * 1000;
    const line = { start_ms: Math.round(p.begin_ms), end_ms: Math.round(Math.max(end, p.begin_ms)),
      text: p.text, language: ui.language.value || "", emotion: "neutral",
      emo_confidence: null, task_id: st.taskId, sentence_id: null, interrupted: true };
    st.partial = null;
    renderPartial("");
    st.lines.push(line);
    renderLine(line);
  }

  function onClose(ws, ev) {
    if (ws !== st.ws) return;
    st.ws = null;
    if (st.finishWaiter) st.finishWaiter();
    keepPartialAsLine();
    if (!st.running) return;
    if (st.fatal) return fail(st.fatal);
    scheduleReconnect(ev.code === 1006 ? "connection lost" : `closed (${ev.code})`);
  }

  function scheduleReconnect(reason) {
    if (!st.running) return;
    st.attempt += 1;
    const ceiling = Math.min(BACKOFF_CAP_MS, BACKOFF_BASE_MS * 2 ** (st.attempt - 1));
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // "equal jitter"
    setState("reconnecting", `in ${(delay / 1000).toFixed(1)} s (attempt ${st.attempt}; ${reason})`);
    st.reconnectTimer = setTimeout(connect, delay);
  }

  // --- start / stop -----------------------------------------------------------------------

  async function start() {
    if (st.running || st.stopping) return;
    showError("");
    if (st.authRequired && !apiKey()) {
      showError("Enter the API key first.");
      ui.key.focus();
      return;
    }
    if (st.authRequired) sessionStorage.setItem(KEY_STORAGE, apiKey());
    st.running = true;
    st.attempt = 0;
    st.droppedMs = 0;
    st.queue = [];
    st.queuedSamples = 0;
    setState("connecting");
    try {
      await ensureVocabulary();
      await startCapture();
    } catch (e) {
      return fail(e instanceof Fatal ? e.message : `Could not start: ${e.message}`);
    }
    if (!st.running) return stopCapture();
    if (st.sessionStartedAt == null) st.sessionStartedAt = new Date();
    connect();
  }

  async function stop() {
    if (!st.running) return;
    st.running = false;
    st.stopping = true;
    clearTimeout(st.reconnectTimer);
    st.reconnectTimer = null;
    setState("stopping");
    await stopCapture(); // the last partial chunk is in the queue now
    const ws = st.ws;
    if (ws && ws.readyState === WebSocket.OPEN && st.taskStarted) {
      pump(true);
      const done = new Promise((resolve) => {
        st.finishWaiter = resolve;
        setTimeout(resolve, FINISH_TIMEOUT_MS);
      });
      send(ws, { action: "finish-task" }, { input: {} });
      st.finishSentAt = performance.now();
      await done;
      st.finishWaiter = null;
      if (st.ws === ws) ws.close(1000, "stopped");
    } else if (ws) {
      st.ws = null;
      ws.close(1000, "stopped");
    }
    st.queue = [];
    st.queuedSamples = 0;
    st.stopping = false;
    setState("stopped");
  }

  function fail(message) {
    st.running = false;
    clearTimeout(st.reconnectTimer);
    st.reconnectTimer = null;
    const ws = st.ws;
    st.ws = null;
    if (ws) ws.close(1000, "error");
    stopCapture();
    showError(message);
    setState("error");
  }

  // --- transcript files -------------------------------------------------------------------

  function stamp(v, sep) {
    const t = Math.max(0, Math.round(v));
    const h = String(Math.floor(t / 3600000)).padStart(2, "0");
    const m = String(Math.floor((t % 3600000) / 60000)).padStart(2, "0");
    const s = String(Math.floor((t % 60000) / 1000)).padStart(2, "0");
    return `${h}:${m}:${s}${sep}${String(t % 1000).padStart(3, "0")}`;
  }

  function cueText(text) {
    return text.replace(/\s*\n\s*/g, " ").replace(/-->/g, "→").trim();
  }

  function toSrt(lines) {
    return lines.map((l, i) => `${i + 1}\n${stamp(l.start_ms, ",")} --> `
      + `${stamp(l.end_ms, ",")}\n${cueText(l.text)}\n`).join("\n");
  }

  function toVtt(lines) {
    const esc = (t) => cueText(t).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    return "WEBVTT\n\n" + lines.map((l, i) => `${i + 1}\n${stamp(l.start_ms, ".")} --> `
      + `${stamp(l.end_ms, ".")}\n${esc(l.text)}\n`).join("\n");
  }

  function toJson(lines) {
    return JSON.stringify({
      model: MODEL,
      started_at: st.sessionStartedAt ? st.sessionStartedAt.toISOString() : null,
      sentences: lines,
    }, null, 2) + "\n";
  }

  function download(kind) {
    const [body, type] = kind === "srt" ? [toSrt(st.lines), "application/x-subrip"]
      : kind === "vtt" ? [toVtt(st.lines), "text/vtt"]
        : [toJson(st.lines), "application/json"];
    const d = st.sessionStartedAt || new Date();
    const p2 = (n) => String(n).padStart(2, "0");
    const name = `captions-${d.getFullYear()}${p2(d.getMonth() + 1)}${p2(d.getDate())}-`
      + `${p2(d.getHours())}${p2(d.getMinutes())}${p2(d.getSeconds())}.${kind}`;
    const url = URL.createObjectURL(new Blob([body], { type: `${type};charset=utf-8` }));
    const a = document.createElement("a");
    a.href = url;
    a.download = name;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // --- wiring -----------------------------------------------------------------------------

  function setLarge(on) {
    document.body.classList.toggle("large", on);
    keepInView();
    ui.large.setAttribute("aria-pressed", String(on));
    try { localStorage.setItem(LARGE_STORAGE, on ? "1" : "0"); } catch (e) { /* private mode */ }
  }

  ui.captions.addEventListener("scroll", () => {
    if (!autoScrolling) stickToBottom = nearBottom();
  });
  // a new font size or window size moves the bottom: follow it
  new ResizeObserver(() => keepInView()).observe(ui.captions);
  new ResizeObserver(() => keepInView()).observe(ui.finals);
  ui.form.addEventListener("submit", (e) => { e.preventDefault(); start(); });
  ui.stop.addEventListener("click", () => stop());
  ui.large.addEventListener("click", () => setLarge(!document.body.classList.contains("large")));
  ui.clear.addEventListener("click", () => {
    st.lines = [];
    ui.finals.replaceChildren();
    renderPartial(st.partial ? st.partial.text : "");
    for (const b of [ui.dlSrt, ui.dlVtt, ui.dlJson]) b.disabled = true;
  });
  ui.dlSrt.addEventListener("click", () => download("srt"));
  ui.dlVtt.addEventListener("click", () => download("vtt"));
  ui.dlJson.addEventListener("click", () => download("json"));
  ui.key.addEventListener("change", () => sessionStorage.setItem(KEY_STORAGE, apiKey()));
  document.addEventListener("keydown", (e) => {
    // Escape stops from anywhere on the page
    if (e.key === "Escape" && st.running) { e.preventDefault(); stop(); }
  });

  ui.key.value = sessionStorage.getItem(KEY_STORAGE) || "";
  let large = false;
  try { large = localStorage.getItem(LARGE_STORAGE) === "1"; } catch (e) { /* ignore */ }
  setLarge(large);
  setState("stopped");
  loadAuthInfo().catch((e) => showError(`Cannot reach the server: ${e.message}`));

  // for tests and the curious: the transcript so far
  window.callscribeCaptions = { lines: () => st.lines.slice(), states: () => stateHistory.slice(),
    delays: () => ({ first: ui.firstDelay.textContent, last: ui.lastDelay.textContent }) };
})();
