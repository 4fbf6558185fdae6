// nixfarm's job page, live: the logs follow the job as it runs (Server-Sent Events).
//
// The page is complete without this script (the server draws each log's tail, coloured
// and numbered). While the job runs, the server names an event stream that starts where
// the drawn logs end (`data-events`); each event's id is how far the page is in every
// log, and a stream that drops is opened again from the last id (the browser sends it as
// Last-Event-ID, or this script as `from=` when it reopens the stream itself), so no
// line is drawn twice and none is skipped. Colours follow nixfarm/web/ansi.py's rules.
(function () {
  "use strict";
  const job = document.getElementById("job");
  if (!job || !job.dataset.events || !window.EventSource) return;

  const ESCAPE = /\x1b(?:\[([0-9;:?]*)([@-~])|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])/g;
  const CUT = /\x1b(?:\[[0-9;:?]*|\][^\x07\x1b]*)?$/;
  const ATTRS = ["bold", "dim", "italic", "underline"];

  function apply(style, params) {
    const s = Object.assign({}, style);
    const codes = (params || "0").replace(/:/g, ";").split(";").map((p) => parseInt(p, 10) || 0);
    for (let i = 0; i < codes.length; i++) {
      const c = codes[i];
      if (c === 0) { for (const k of Object.keys(s)) delete s[k]; }
      else if (c >= 1 && c <= 4) s[ATTRS[c - 1]] = true;
      else if (c === 22) { delete s.bold; delete s.dim; }
      else if (c === 23) delete s.italic;
      else if (c === 24) delete s.underline;
      else if ((c >= 30 && c <= 37) || (c >= 90 && c <= 97)) s.fg = c;
      else if (c === 39) delete s.fg;
      else if (c >= 40 && c <= 47) s.bg = c;
      else if (c >= 100 && c <= 107) s.bg = c - 60;
      else if (c === 49) delete s.bg;
      else if (c === 38 || c === 48) i += codes[i + 1] === 5 ? 2 : 4;
    }
    return s;
  }

  function classes(s) {
    const names = ATTRS.filter((a) => s[a]).map((a) => "ansi-" + a);
    if (s.fg) names.push("fg-" + s.fg);
    if (s.bg) names.push("bg-" + s.bg);
    return names.join(" ");
  }

  // Fill `el` with one line's text, coloured from `style`; returns the style after it.
  function draw(el, text, style) {
    text = text.replace(CUT, "");
    const trimmed = text.replace(/\r+$/, "");
    const cr = trimmed.lastIndexOf("\r");
    text = cr >= 0 ? trimmed.slice(cr + 1) : trimmed;
    let at = 0;
    let m;
    ESCAPE.lastIndex = 0;
    const put = (part) => {
      if (!part) return;
      const name = classes(style);
      if (!name) { el.appendChild(document.createTextNode(part)); return; }
      const span = document.createElement("span");
      span.className = name;
      span.textContent = part;
      el.appendChild(span);
    };
    while ((m = ESCAPE.exec(text)) !== null) {
      put(text.slice(at, m.index));
      if (m[2] === "m") style = apply(style, m[1]);
      at = ESCAPE.lastIndex;
    }
    put(text.slice(at));
    return style;
  }

  // One log on the page: its next line's number, and the line being written.
  const logs = new Map();
  for (const el of document.querySelectorAll(".log[data-anchor]")) {
    logs.set(el.dataset.log, {
      el: el, anchor: el.dataset.anchor, next: parseInt(el.dataset.nextLine, 10) || 1,
      open: null, text: "", style: {},
    });
  }

  function newLine(log) {
    const n = log.next++;
    const line = document.createElement("div");
    line.className = "line";
    line.id = log.anchor + "-L" + n;
    const a = document.createElement("a");
    a.className = "n";
    a.href = "#" + line.id;
    a.textContent = String(n);
    line.appendChild(a);
    log.el.appendChild(line);
    return line;
  }

  function append(log, text) {
    const pieces = text.split("\n");
    pieces.forEach((piece, i) => {
      const last = i === pieces.length - 1;
      if (last && piece === "") return;  // text that ends a line opens no new one
      if (log.open === null) { log.open = newLine(log); log.text = ""; }
      log.text += piece;
      const number = log.open.firstChild;
      log.open.replaceChildren(number);
      const after = draw(log.open, log.text, log.style);
      if (!last) { log.style = after; log.open = null; }
    });
  }

  function setStatus(el, status) {
    if (!el) return;
    el.textContent = status;
    el.className = "status " + status;
  }

  const state = { lastId: null, opened: 0, ended: false, source: null, lines: 0 };
  window.nixfarmLog = state;

  function connect() {
    let url = job.dataset.events;
    if (state.lastId !== null) url = url.replace(/([?&])from=[^&]*/, "$1from=" + encodeURIComponent(state.lastId));
    const source = new EventSource(url);
    state.source = source;
    const seen = (e) => { if (e.lastEventId) state.lastId = e.lastEventId; };
    source.addEventListener("open", () => { state.opened++; });
    source.addEventListener("log", (e) => {
      const d = JSON.parse(e.data);
      const log = logs.get(d.task === null ? "" : d.task);
      if (log) { append(log, d.text); state.lines++; }
      seen(e);
    });
    source.addEventListener("task", (e) => {
      const d = JSON.parse(e.data);
      setStatus(document.getElementById("status-" + d.name), d.status);
      seen(e);
    });
    source.addEventListener("job", (e) => {
      const d = JSON.parse(e.data);
      setStatus(document.getElementById("status"), d.status);
      job.dataset.status = d.status;
      seen(e);
    });
    source.addEventListener("ping", seen);
    source.addEventListener("end", (e) => {
      seen(e);
      state.ended = true;
      source.close();
      job.dataset.followed = "ended";
      const cancel = document.getElementById("cancel");
      if (cancel) cancel.closest("form").remove();
    });
    source.addEventListener("error", () => {
      // The browser retries by itself (sending Last-Event-ID) unless it gave up.
      if (source.readyState === EventSource.CLOSED && !state.ended) {
        setTimeout(connect, 2000);
      }
    });
  }

  // For tests and for people on flaky links: drop the stream and resume from the
  // last event, as a reconnect does.
  state.reconnect = function () {
    if (state.source) state.source.close();
    if (!state.ended) connect();
  };
  job.dataset.followed = "live";
  connect();
})();
