// Small DOM helpers: elements, the error banner, dialogs (native <dialog>: focus trapped, Escape closes).

export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function clear(el, ...children) {
  el.replaceChildren(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// An error as the API worded it, in the banner (role=alert: screen readers announce it).
export function showError(err) {
  const box = document.getElementById("error");
  const message = err && err.message ? err.message : String(err);
  clear(box, h("span", { class: "message" }, message), h("button", { class: "link", onclick: hideError, "aria-label": "Dismiss" }, "×"));
  box.hidden = false;
}

export function hideError() {
  const box = document.getElementById("error");
  box.hidden = true;
  box.replaceChildren();
}

export function notice(text) {
  const box = document.getElementById("notice");
  box.textContent = text;
  box.hidden = false;
  clearTimeout(notice.timer);
  notice.timer = setTimeout(() => (box.hidden = true), 4000);
}

// Runs `fn`, showing its error; returns its value (undefined on error).
export async function guard(fn) {
  try {
    return await fn();
  } catch (e) {
    if (e && e.name === "AbortError") return undefined;
    showError(e);
    return undefined;
  }
}

// A modal dialog with `body` and buttons; resolves with the button's value (null when dismissed).
export function dialog(title, body, buttons = [["OK", true]]) {
  return new Promise((resolve) => {
    const dlg = h("dialog", { class: "modal", "aria-label": title });
    const form = h("form", { method: "dialog" });
    const done = (v) => {
      dlg.close();
      dlg.remove();
      resolve(v);
    };
    form.append(
      h("h2", {}, title),
      body,
      h(
        "div",
        { class: "buttons" },
        buttons.map(([label, value, cls]) =>
          h("button", { type: value === null ? "button" : "submit", class: cls || "", value: String(label), onclick: (e) => { e.preventDefault(); done(value); } }, label),
        ),
      ),
    );
    dlg.append(form);
    dlg.addEventListener("cancel", (e) => {
      e.preventDefault();
      done(null);
    });
    document.body.append(dlg);
    dlg.showModal();
  });
}

export async function confirmDialog(title, text, action = "Delete") {
  return dialog(title, h("p", {}, text), [["Cancel", null], [action, true, "danger"]]);
}

export async function prompt(title, label, value = "") {
  const input = h("input", { type: "text", value, "aria-label": label, name: "value", autocomplete: "off" });
  const body = h("label", { class: "field" }, label, input);
  setTimeout(() => input.focus(), 0);
  input.addEventListener("keydown", (e) => {
    if (e.key === "Enter") {
      e.preventDefault();
      input.closest("form").querySelector("button.primary").click();
    }
  });
  const ok = await dialog(title, body, [["Cancel", null], ["OK", true, "primary"]]);
  return ok ? input.value : null;
}
