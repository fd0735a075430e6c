// Functions: the OpenWhisk-shaped API (/api/v1/namespaces/_/...): actions, triggers and rules; an action's
// editor (code, parameters, limits, retries, the storage trigger NAME-trigger and rule NAME-rule as
// `headrace fn deploy` makes them); invoking with JSON input; activations with their logs and the event that
// caused them; dead letters and redrive.
import { call, whisk, errorOf, auth, formatTime } from "./api.js";
import { h, clear, guard, confirmDialog, notice, showError } from "./ui.js";
import { codeEditor } from "./editor.js";

const TEMPLATE = `def main(event: dict, ctx) -> dict:
    """Runs for each storage event (or invocation): event has path, name, size, mask..."""
    ctx.logger.warning("processing %s", event.get("path"))
    return {"path": event.get("path"), "ok": True}
`;
const FEED_FLAGS = ["IN_CLOSE_WRITE", "IN_CREATE", "IN_DELETE", "IN_MOVED_FROM", "IN_MOVED_TO", "IN_ATTRIB"];
const fileLink = (p) => "#/files" + p.split("/").map(encodeURIComponent).join("/");
const kv = (obj) => Object.entries(obj).map(([key, value]) => ({ key, value }));
const unkv = (list) => Object.fromEntries((list || []).map((p) => [p.key, p.value]));
const statusOf = (a) => (a.response ? a.response.status : a.statusCode === 0 ? "success" : a.statusCode == null ? a.state : "error");
const isCold = (a) => (a.annotations || []).some((x) => x.key === "initTime");

export function mount(box, rest) {
  const parts = rest.split("/").filter(Boolean);
  const tab = parts[0] || "actions";
  const tabs = [["actions", "Actions"], ["triggers", "Triggers & rules"], ["activations", "Activations"], ["deadletters", "Dead letters"]];
  const body = h("div", { class: "tab-body" });
  clear(
    box,
    h("h1", {}, "Functions"),
    h("nav", { class: "tabs", "aria-label": "Functions" }, tabs.map(([t, label]) => h("a", { href: `#/functions/${t}`, "aria-current": tab === t || (tab === "new" && t === "actions") ? "page" : null, id: `tab-${t}` }, label))),
    body,
  );
  let timer = null;
  const live = (fn, ms) => {
    fn();
    timer = setInterval(fn, ms);
  };
  if (tab === "actions" && parts[1]) editor(body, decodeURIComponent(parts[1]));
  else if (tab === "new") editor(body, null);
  else if (tab === "actions") actions(body);
  else if (tab === "triggers") triggers(body);
  else if (tab === "activations" && parts[1]) activation(body, parts[1]);
  else if (tab === "activations") live(() => activations(body), 2000);
  else if (tab === "deadletters") deadletters(body);
  return () => clearInterval(timer);
}

async function actions(body) {
  const list = await guard(() => call(whisk("actions?limit=200")));
  if (!list) return;
  clear(
    body,
    h("div", { class: "toolbar" }, h("a", { class: "button primary", href: "#/functions/new", id: "new-action" }, "New action")),
    list.length === 0
      ? h("p", { class: "muted" }, "No actions yet.")
      : h(
          "table",
          { id: "actions-table" },
          h("thead", {}, h("tr", {}, ["Name", "Version", "Kind", "Updated", ""].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            {},
            list.map((a) =>
              h(
                "tr",
                { dataset: { name: a.name } },
                h("td", {}, h("a", { href: `#/functions/actions/${encodeURIComponent(a.name)}` }, a.name)),
                h("td", {}, a.version),
                h("td", {}, (a.exec && a.exec.kind) || ""),
                h("td", {}, formatTime(a.updated)),
                h("td", {}, h("a", { href: `#/functions/activations?name=${encodeURIComponent(a.name)}` }, "activations")),
              ),
            ),
          ),
        ),
  );
}

async function triggers(body) {
  const [ts, rs] = await Promise.all([guard(() => call(whisk("triggers?limit=200"))), guard(() => call(whisk("rules?limit=200")))]);
  if (!ts || !rs) return;
  const feed = (t) => {
    const f = t.feedParameters || {};
    return t.feed ? `${f.path || "/"}${f.recursive ? " (and below)" : ""} ${f.pattern || ""} ${(f.flags || []).join(",")}` : "—";
  };
  clear(
    body,
    h("h2", {}, "Triggers"),
    h("table", { id: "triggers-table" }, h("thead", {}, h("tr", {}, ["Name", "Storage feed"].map((c) => h("th", { scope: "col" }, c)))), h("tbody", {}, ts.map((t) => h("tr", {}, h("td", {}, t.name), h("td", { class: "mono" }, feed(t)))))),
    h("h2", {}, "Rules"),
    h(
      "table",
      { id: "rules-table" },
      h("thead", {}, h("tr", {}, ["Name", "Trigger", "Action", "Status"].map((c) => h("th", { scope: "col" }, c)))),
      h("tbody", {}, rs.map((r) => h("tr", {}, h("td", {}, r.name), h("td", {}, nameOf(r.trigger)), h("td", {}, nameOf(r.action)), h("td", {}, r.status || "")))),
    ),
  );
}

const nameOf = (ref) => (typeof ref === "string" ? ref : ref && ref.name ? ref.name : "");

async function editor(body, name) {
  const current = name ? await guard(() => call(whisk(`actions/${encodeURIComponent(name)}`))) : null;
  if (name && !current) return;
  const trigger = name ? await call(whisk(`triggers/${encodeURIComponent(name)}-trigger`)).catch(() => null) : null;
  const feed = (trigger && trigger.feedParameters) || {};
  const limits = (current && current.limits) || {};
  const scaling = (current && current.scaling) || {};
  const ann = unkv(current && current.annotations);
  const nameIn = h("input", { id: "action-name", value: name || "", readonly: !!name, required: true, "aria-label": "Action name" });
  const code = codeEditor({ id: "action-code", value: current ? current.exec.code || "" : TEMPLATE });
  const params = h("textarea", { id: "action-params", rows: 3, spellcheck: "false", "aria-label": "Parameters (JSON object)" });
  params.value = JSON.stringify(unkv(current && current.parameters), null, 2);
  const timeout = h("input", { id: "action-timeout", type: "number", min: 100, value: limits.timeout || 60000, "aria-label": "Timeout (ms)" });
  const memory = h("input", { id: "action-memory", type: "number", min: 128, value: limits.memory || 256, "aria-label": "Memory (MB)" });
  const retries = h("input", { id: "action-retries", type: "number", min: 0, value: scaling.retries ?? 2, "aria-label": "Retries" });
  const storage = h("input", { id: "action-storage", type: "checkbox", checked: !!ann.storage });
  const onEvents = h("input", { id: "trigger-on", type: "checkbox", checked: !!trigger });
  const tPath = h("input", { id: "trigger-path", value: feed.path || "/", "aria-label": "Trigger path" });
  const tPattern = h("input", { id: "trigger-pattern", value: feed.pattern || "", placeholder: "*.h5", "aria-label": "Pattern" });
  const tRecursive = h("input", { id: "trigger-recursive", type: "checkbox", checked: !!feed.recursive });
  const flags = FEED_FLAGS.map((f) => h("label", { class: "check" }, h("input", { type: "checkbox", value: f, checked: (feed.flags || ["IN_CLOSE_WRITE"]).includes(f) }), f.replace("IN_", "")));
  const invokeIn = h("textarea", { id: "invoke-input", rows: 3, spellcheck: "false", "aria-label": "Invoke input (JSON)" });
  invokeIn.value = "{}";
  const result = h("pre", { id: "invoke-result", class: "result", "aria-live": "polite" });

  async function save(e) {
    e.preventDefault();
    const n = nameIn.value.trim();
    let parameters;
    try {
      parameters = JSON.parse(params.value || "{}");
    } catch (err) {
      return showError(`Parameters are not JSON: ${err.message}`);
    }
    const annotations = kv({ ...ann, storage: storage.checked || undefined });
    const action = {
      exec: { kind: "python:3", code: code.value },
      parameters: kv(parameters),
      annotations: annotations.filter((a) => a.value !== undefined),
      limits: { timeout: Number(timeout.value), memory: Number(memory.value) },
      scaling: { retries: Number(retries.value) },
    };
    const ok = await guard(async () => {
      await call(whisk(`actions/${encodeURIComponent(n)}?overwrite=true`), { method: "PUT", json: action });
      const t = `${n}-trigger`, r = `${n}-rule`;
      if (onEvents.checked) {
        const f = { path: tPath.value || "/", recursive: tRecursive.checked, flags: flags.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value) };
        if (tPattern.value) f.pattern = tPattern.value;
        await call(whisk(`triggers/${encodeURIComponent(t)}?overwrite=true`), { method: "PUT", json: { feed: f } });
        await call(whisk(`rules/${encodeURIComponent(r)}?overwrite=true`), { method: "PUT", json: { trigger: `/_/${t}`, action: `/_/${n}`, status: "active" } });
      } else if (trigger) {
        await call(whisk(`rules/${encodeURIComponent(r)}`), { method: "DELETE" }).catch(() => {});
        await call(whisk(`triggers/${encodeURIComponent(t)}`), { method: "DELETE" });
      }
      return true;
    });
    if (!ok) return;
    notice(`Deployed ${n}`);
    if (!name) location.hash = `#/functions/actions/${encodeURIComponent(n)}`;
    else editor(body, n);
  }

  async function invoke() {
    let input;
    try {
      input = JSON.parse(invokeIn.value || "{}");
    } catch (err) {
      return showError(`Input is not JSON: ${err.message}`);
    }
    result.textContent = "running…";
    await guard(async () => {
      // 200 or 502 both carry the activation record; anything else is an error in OpenWhisk's shape.
      const res = await fetch(whisk(`actions/${encodeURIComponent(name)}?blocking=true`), {
        method: "POST",
        headers: { Authorization: auth.header(), "Content-Type": "application/json" },
        body: JSON.stringify(input),
      });
      if (res.status !== 200 && res.status !== 502 && res.status !== 202) {
        result.textContent = "";
        throw await errorOf(res);
      }
      const rec = await res.json();
      result.textContent = rec.response ? `${rec.response.status} in ${rec.duration} ms\n${JSON.stringify(rec.response.result, null, 2)}` : `still running: ${rec.activationId}`;
    });
  }

  async function remove() {
    if (!(await confirmDialog("Delete action", `Delete ${name}, its trigger and its rule?`))) return;
    const ok = await guard(async () => {
      if (trigger) {
        await call(whisk(`rules/${encodeURIComponent(name)}-rule`), { method: "DELETE" }).catch(() => {});
        await call(whisk(`triggers/${encodeURIComponent(name)}-trigger`), { method: "DELETE" });
      }
      await call(whisk(`actions/${encodeURIComponent(name)}`), { method: "DELETE" });
      return true;
    });
    if (ok) location.hash = "#/functions/actions";
  }

  clear(
    body,
    h(
      "form",
      { id: "action-form", class: "editor-form", onsubmit: save },
      h("h2", {}, name ? `Action ${name}` : "New action", current ? h("span", { class: "muted" }, ` v${current.version}`) : null),
      h("label", { class: "field" }, "Name", nameIn),
      h("div", { class: "field" }, h("span", {}, "Code (python:3, main)"), code.element),
      h("label", { class: "field" }, "Parameters (JSON object)", params),
      h("div", { class: "row" }, h("label", { class: "field" }, "Timeout (ms)", timeout), h("label", { class: "field" }, "Memory (MB)", memory), h("label", { class: "field" }, "Retries of an event", retries)),
      h("label", { class: "check" }, storage, "May read and write storage (ctx.storage)"),
      h(
        "fieldset",
        { class: "trigger" },
        h("legend", {}, h("label", { class: "check" }, onEvents, "Run on storage events")),
        h("div", { class: "row" }, h("label", { class: "field" }, "Path", tPath), h("label", { class: "field" }, "Pattern", tPattern), h("label", { class: "check" }, tRecursive, "and below")),
        h("div", { class: "flags" }, flags),
      ),
      h("div", { class: "buttons" }, h("button", { class: "primary", type: "submit", id: "action-save" }, name ? "Save" : "Deploy"), name ? h("button", { type: "button", class: "danger", onclick: remove }, "Delete") : null),
    ),
    name
      ? h(
          "section",
          { class: "invoke card" },
          h("h2", {}, "Invoke"),
          invokeIn,
          h("div", { class: "buttons" }, h("button", { type: "button", id: "invoke", onclick: invoke }, "Invoke"), h("a", { href: `#/functions/activations?name=${encodeURIComponent(name)}` }, "Activations")),
          result,
        )
      : null,
  );
}

async function activations(body) {
  const params = new URLSearchParams(location.hash.split("?")[1] || "");
  const name = params.get("name");
  const list = await guard(() => call(whisk(`activations?docs=true&limit=50${name ? "&name=" + encodeURIComponent(name) : ""}`)));
  if (!list) return;
  const focused = document.activeElement && body.contains(document.activeElement) ? document.activeElement.id : null;
  clear(
    body,
    h("p", { class: "muted" }, name ? `Activations of ${name}, newest first (live)` : "Newest first (live)"),
    h(
      "table",
      { id: "activations-table" },
      h("thead", {}, h("tr", {}, ["Activation", "Action", "Status", "State", "Duration", "Start", "Cold", "Attempt"].map((c) => h("th", { scope: "col" }, c)))),
      h(
        "tbody",
        {},
        list.map((a) =>
          h(
            "tr",
            { dataset: { id: a.activationId, name: a.name, status: statusOf(a) } },
            h("td", { class: "mono" }, h("a", { id: `act-${a.activationId}`, href: `#/functions/activations/${a.activationId}` }, a.activationId.slice(0, 12))),
            h("td", {}, a.name),
            h("td", {}, h("span", { class: `status ${statusOf(a).replace(/ /g, "-")}` }, statusOf(a))),
            h("td", {}, a.state || ""),
            h("td", { class: "num" }, a.duration != null ? `${a.duration} ms` : ""),
            h("td", {}, formatTime(a.start)),
            h("td", {}, isCold(a) ? "cold" : "warm"),
            h("td", { class: "num" }, a.attempt || ""),
          ),
        ),
      ),
    ),
  );
  if (focused) document.getElementById(focused)?.focus();
}

async function activation(body, id) {
  const a = await guard(() => call(whisk(`activations/${id}`)));
  if (!a) return;
  // What caused it: the storage event (its file, linked), and the activation whose write made that event.
  const ann = unkv(a.annotations);
  const ev = ann.event;
  const cause = h(
    "dd",
    { id: "activation-cause" },
    ev && ev.path ? h("a", { href: fileLink(ev.path), id: "cause-file" }, `${(ev.mask || []).join(",")} ${ev.path}`) : null,
    ann.eventOffset !== undefined ? h("span", { class: "muted" }, ` (event ${ann.eventOffset})`) : null,
    a.cause ? h("span", {}, " written by activation ", h("a", { href: `#/functions/activations/${a.cause}` }, a.cause.slice(0, 12))) : null,
    !ev && !a.cause ? (ann.causedBy || "invoked") : null,
  );
  clear(
    body,
    h(
      "section",
      { class: "card", id: "activation" },
      h("h2", {}, `Activation ${a.activationId}`),
      h(
        "dl",
        {},
        [
          ["Action", `${a.namespace}/${a.name} v${a.version}`],
          ["Status", statusOf(a)],
          ["State", a.state],
          ["Attempt", a.attempt],
          ["Duration", a.duration != null ? `${a.duration} ms` : ""],
          ["Start", formatTime(a.start)],
          ["Start kind", isCold(a) ? "cold" : "warm"],
        ].flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v ?? "")]),
        h("dt", {}, "Cause"),
        cause,
      ),
      h("h3", {}, "Result"),
      h("pre", { class: "result", id: "activation-result" }, JSON.stringify(a.response && a.response.result, null, 2)),
      h("h3", {}, "Logs"),
      h("pre", { class: "logs", id: "activation-logs" }, (a.logs || []).join("\n") || "(no log lines)"),
      h("a", { href: "#/functions/activations" }, "← All activations"),
    ),
  );
}

async function deadletters(body) {
  const list = await guard(() => call(whisk("deadletters?limit=200")));
  if (!list) return;
  const boxes = [];
  const redrive = async (ids) => {
    const r = await guard(() => call(whisk("deadletters/redrive"), { method: "POST", json: ids ? { activationIds: ids } : {} }));
    if (r) {
      notice(`Redriven: ${r.redriven}`);
      deadletters(body);
    }
  };
  clear(
    body,
    list.length === 0
      ? h("p", { class: "muted", id: "deadletters-empty" }, "No dead letters.")
      : h(
          "table",
          { id: "deadletters-table" },
          h("thead", {}, h("tr", {}, ["", "Activation", "Action", "Error", "File", "Attempts"].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            {},
            list.map((d) => {
              const cb = h("input", { type: "checkbox", value: d.activationId, "aria-label": `Select ${d.activationId}` });
              boxes.push(cb);
              const err = d.response && d.response.result && d.response.result.error;
              return h(
                "tr",
                { dataset: { id: d.activationId } },
                h("td", {}, cb),
                h("td", { class: "mono" }, h("a", { href: `#/functions/activations/${d.activationId}` }, d.activationId.slice(0, 12))),
                h("td", {}, d.name),
                h("td", { class: "small" }, typeof err === "string" ? err : JSON.stringify(err || "")),
                h("td", { class: "mono" }, d.args && d.args.path ? h("a", { href: fileLink(d.args.path) }, d.args.path) : ""),
                h("td", { class: "num" }, d.attempt),
              );
            }),
          ),
        ),
    h(
      "div",
      { class: "buttons" },
      h("button", { id: "redrive-selected", disabled: list.length === 0, onclick: () => redrive(boxes.filter((b) => b.checked).map((b) => b.value)) }, "Redrive selected"),
      h("button", { id: "redrive-all", class: "primary", disabled: list.length === 0, onclick: () => redrive(null) }, "Redrive all"),
      h("button", { onclick: () => deadletters(body) }, "Refresh"),
    ),
  );
}
