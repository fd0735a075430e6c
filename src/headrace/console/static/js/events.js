// Events: a live feed of storage events under a chosen path, through dCache's SSE API (/api/v1/events): a
// channel, an inotify subscription, and the channel's stream read with fetch (EventSource cannot send the
// Authorization header). Pausable (events arriving meanwhile are kept and shown on resume), filterable by flag.
import { auth, call, errorOf, join } from "./api.js";
import { h, clear, guard, showError } from "./ui.js";

const FLAGS = ["IN_CREATE", "IN_CLOSE_WRITE", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_DELETE", "IN_ATTRIB", "IN_OPEN", "IN_ACCESS", "IN_MODIFY", "IN_CLOSE_NOWRITE"];
const SHOWN = new Set(["IN_CREATE", "IN_CLOSE_WRITE", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_DELETE", "IN_ATTRIB"]);
const MAX_ROWS = 500;

// Reads an SSE stream from `res.body`, calling onEvent(type, data, id) per event.
export async function readSse(res, onEvent) {
  const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value.replace(/\r\n?/g, "\n");
    let i;
    while ((i = buf.indexOf("\n\n")) >= 0) {
      const block = buf.slice(0, i);
      buf = buf.slice(i + 2);
      let type = "message", data = [], id = null;
      for (const line of block.split("\n")) {
        if (line.startsWith(":")) continue;
        const c = line.indexOf(":");
        const field = c < 0 ? line : line.slice(0, c);
        const val = c < 0 ? "" : line.slice(c + 1).replace(/^ /, "");
        if (field === "event") type = val;
        else if (field === "data") data.push(val);
        else if (field === "id") id = val;
      }
      if (data.length) onEvent(type, data.join("\n"), id);
    }
  }
}

export function mount(box) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const pathInput = h("input", { id: "events-path", value: params.get("path") || "/", "aria-label": "Path to watch" });
  const recursive = h("input", { type: "checkbox", id: "events-recursive", checked: true });
  const pauseBtn = h("button", { type: "button", id: "events-pause", disabled: true, "aria-pressed": "false" }, "Pause");
  const status = h("span", { class: "status", id: "events-status", role: "status" }, "not watching");
  const flagBoxes = FLAGS.map((f) => h("label", { class: "check" }, h("input", { type: "checkbox", value: f, checked: SHOWN.has(f), onchange: render }), f.replace("IN_", "")));
  const tbody = h("tbody", { id: "events-body" });
  const events = [];
  let paused = false, held = 0, abort = null, channel = null, generation = 0;

  function wanted() {
    return new Set(flagBoxes.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value));
  }

  function rowOf(e) {
    return h(
      "tr",
      { dataset: { mask: e.mask.join(" ") } },
      h("td", {}, e.time),
      h("td", {}, e.mask.filter((m) => m !== "IN_ISDIR").map((m) => h("span", { class: `flag ${m}` }, m.replace("IN_", "")))),
      h("td", { class: "mono" }, h("a", { href: "#/files" + e.path.split("/").map(encodeURIComponent).join("/") }, e.path), e.mask.includes("IN_ISDIR") ? "/" : ""),
      h("td", { class: "mono small" }, e.cookie || ""),
    );
  }

  function render() {
    const want = wanted();
    clear(tbody, events.filter((e) => e.mask.some((m) => want.has(m))).slice(0, MAX_ROWS).map(rowOf));
  }

  function add(ev) {
    events.unshift(ev);
    if (events.length > MAX_ROWS * 2) events.length = MAX_ROWS * 2;
    if (paused) {
      held += 1;
      pauseBtn.textContent = `Resume (${held} new)`;
      return;
    }
    if (ev.mask.some((m) => wanted().has(m))) {
      tbody.prepend(rowOf(ev));
      while (tbody.children.length > MAX_ROWS) tbody.lastChild.remove();
    }
  }

  async function stop() {
    if (abort) abort.abort();
    abort = null;
    if (channel) {
      const c = channel;
      channel = null;
      await call(c, { method: "DELETE" }).catch(() => {});
    }
  }

  async function watch(e) {
    e && e.preventDefault();
    const mine = ++generation; // a newer watch, or leaving the view, makes this one give up
    await stop();
    const watchPath = pathInput.value.trim() || "/";
    status.textContent = "connecting…";
    const made = await guard(async () => {
      const res = await fetch("/api/v1/events/channels", { method: "POST", headers: { Authorization: auth.header() } });
      if (!res.ok) throw await errorOf(res);
      const loc = new URL(res.headers.get("Location"), location.href).pathname;
      await call(loc + "/subscriptions/inotify", { method: "POST", json: { path: watchPath, recursive: recursive.checked } });
      return loc;
    });
    if (!made) return (status.textContent = "not watching");
    if (mine !== generation) return call(made, { method: "DELETE" }).catch(() => {});
    channel = made;
    abort = new AbortController();
    pauseBtn.disabled = false;
    const ctl = abort;
    try {
      const res = await fetch(channel, { headers: { Authorization: auth.header(), Accept: "text/event-stream" }, signal: ctl.signal });
      if (!res.ok) throw await errorOf(res);
      status.textContent = `watching ${watchPath}${recursive.checked ? " and below" : ""}`;
      box.dataset.watching = watchPath;
      await readSse(res, (type, data) => {
        if (type !== "inotify") return;
        const msg = JSON.parse(data);
        const ev = msg.event || {};
        const sub = msg.subscription ? decodeURIComponent(new URL(msg.subscription, location.href).pathname) : "";
        const base = ev.path || (ev.name ? join(watchPath, ev.name) : watchPath);
        add({ time: new Date().toISOString().slice(11, 23), mask: ev.mask || [], path: base, cookie: ev.cookie, sub });
      });
      if (!ctl.signal.aborted) status.textContent = "the stream ended";
    } catch (err) {
      if (err.name !== "AbortError") {
        status.textContent = "disconnected";
        showError(err);
      }
    }
  }

  pauseBtn.addEventListener("click", () => {
    paused = !paused;
    pauseBtn.setAttribute("aria-pressed", String(paused));
    pauseBtn.textContent = paused ? "Resume" : "Pause";
    if (!paused) {
      held = 0;
      render();
    }
  });

  clear(
    box,
    h("h1", {}, "Events"),
    h(
      "form",
      { class: "toolbar", id: "events-form", onsubmit: watch },
      h("label", { class: "field inline" }, "Path", pathInput),
      h("label", { class: "check" }, recursive, "and below"),
      h("button", { class: "primary", type: "submit", id: "events-watch" }, "Watch"),
      pauseBtn,
      h("button", { type: "button", onclick: () => { events.length = 0; render(); } }, "Clear"),
      status,
    ),
    h("fieldset", { class: "flags" }, h("legend", {}, "Show"), flagBoxes),
    h("table", { class: "events" }, h("thead", {}, h("tr", {}, ["Time", "Flags", "Path", "Cookie"].map((c) => h("th", { scope: "col" }, c)))), tbody),
  );
  watch();
  return () => {
    generation += 1;
    stop();
  };
}
