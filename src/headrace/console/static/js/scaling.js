// Scaling: workers, queued and running activations per action, and activations per second, over the last
// minutes, from GET /api/v1/scaling (the caller's own actions only), polled every two seconds.
import { call } from "./api.js";
import { h, clear, guard } from "./ui.js";

const INTERVAL = 2000;
const KEEP = 150; // samples: five minutes
const COLORS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const METRICS = [
  ["workers", "Warm workers"],
  ["queued", "Queued activations"],
  ["running", "Running activations"],
  ["rate", "Activations per second"],
];

function draw(canvas, series, names, title) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  canvas.width = w * ratio;
  canvas.height = hgt * ratio;
  const g = canvas.getContext("2d");
  g.scale(ratio, ratio);
  g.clearRect(0, 0, w, hgt);
  const pad = { l: 36, r: 8, t: 8, b: 18 };
  let max = 1;
  for (const n of names) for (const v of series.get(n) || []) if (v !== null) max = Math.max(max, v);
  max = Math.ceil(max);
  g.strokeStyle = "#d1d5db";
  g.fillStyle = "#6b7280";
  g.font = "11px system-ui, sans-serif";
  g.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = pad.t + ((hgt - pad.t - pad.b) * i) / 2;
    g.beginPath();
    g.moveTo(pad.l, y);
    g.lineTo(w - pad.r, y);
    g.stroke();
    g.fillText(String(+((max * (2 - i)) / 2).toFixed(1)), 4, y + 4);
  }
  g.fillText("−5 min", pad.l, hgt - 4);
  g.fillText("now", w - pad.r - 22, hgt - 4);
  names.forEach((n, k) => {
    const values = series.get(n) || [];
    g.strokeStyle = COLORS[k % COLORS.length];
    g.lineWidth = 2;
    g.beginPath();
    let started = false;
    values.forEach((v, i) => {
      if (v === null) return;
      const x = pad.l + ((w - pad.l - pad.r) * (KEEP - values.length + i)) / (KEEP - 1);
      const y = pad.t + (hgt - pad.t - pad.b) * (1 - v / max);
      if (!started) g.moveTo(x, y);
      else g.lineTo(x, y);
      started = true;
    });
    g.stroke();
    // the newest value as a dot: visible from the first sample on
    const last = values.length ? values[values.length - 1] : null;
    if (last !== null) {
      g.fillStyle = COLORS[k % COLORS.length];
      g.beginPath();
      g.arc(w - pad.r, pad.t + (hgt - pad.t - pad.b) * (1 - last / max), 3, 0, 2 * Math.PI);
      g.fill();
    }
  });
  canvas.setAttribute("aria-label", `${title}: ${names.map((n) => `${n} ${(series.get(n) || []).at(-1) ?? 0}`).join(", ") || "no actions"}`);
}

export function mount(box) {
  const data = new Map(METRICS.map(([m]) => [m, new Map()]));
  const names = new Set();
  const canvases = METRICS.map(([m, title]) => [m, title, h("canvas", { class: "chart", id: `chart-${m}`, role: "img", "aria-label": title })]);
  const legend = h("ul", { class: "legend", id: "scaling-legend" });
  const table = h("tbody", { id: "scaling-body" });
  const note = h("p", { class: "muted", id: "scaling-note" });
  let samples = 0;

  async function poll() {
    const s = await guard(() => call("/api/v1/scaling"));
    if (!s) return;
    samples += 1;
    box.dataset.samples = String(samples);
    for (const a of s.actions) names.add(a.name);
    const byName = new Map(s.actions.map((a) => [a.name, a]));
    for (const [m] of METRICS) {
      const series = data.get(m);
      for (const n of names) {
        const a = byName.get(n);
        const v = !a ? 0 : m === "rate" ? a.finished / s.window : a[m];
        const list = series.get(n) || new Array(Math.max(0, samples - 1)).fill(null);
        list.push(v === null || v === undefined ? null : v);
        while (list.length > KEEP) list.shift();
        series.set(n, list);
      }
    }
    const ordered = [...names].sort();
    for (const [m, title, canvas] of canvases) draw(canvas, data.get(m), ordered, title);
    clear(legend, ordered.map((n, k) => h("li", {}, h("span", { class: "swatch", style: `background:${COLORS[k % COLORS.length]}` }), n)));
    clear(
      table,
      s.actions.map((a) => h("tr", { dataset: { name: a.name } }, h("td", {}, a.name), h("td", { class: "num" }, a.workers ?? "—"), h("td", { class: "num" }, a.queued), h("td", { class: "num" }, a.running), h("td", { class: "num" }, (a.finished / s.window).toFixed(1)))),
    );
    note.textContent = s.actions.some((a) => a.workers === null) ? "Workers run in other processes (invokers): their counts are in their own metrics." : "";
  }

  clear(
    box,
    h("h1", {}, "Scaling"),
    h("p", { class: "muted" }, "Your actions over the last five minutes, sampled every two seconds."),
    legend,
    h("div", { class: "charts" }, canvases.map(([m, title, c]) => h("figure", {}, h("figcaption", {}, title), c))),
    h("table", { id: "scaling-table" }, h("thead", {}, h("tr", {}, ["Action", "Workers", "Queued", "Running", "Activations/s"].map((c) => h("th", { scope: "col" }, c)))), table),
    note,
  );
  poll();
  const timer = setInterval(poll, INTERVAL);
  return () => clearInterval(timer);
}
