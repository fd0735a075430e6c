// Files: a directory's entries a page at a time (the namespace API's limit/offset), upload by drag and drop
// or a file picker (PUT to the door, with progress), download, mkdir, rename/move, delete, labels and xattrs,
// and sharing by a macaroon shown as a link and a QR code.
import { auth, call, ns, join, parent, upload, mintMacaroon, door, encodePath, formatSize, formatTime, formatMode } from "./api.js";
import { h, clear, guard, dialog, confirmDialog, prompt, notice } from "./ui.js";

export const PAGE = 200;
const FLAGS = "locality=true&qos=true&checksum=true&labels=true&xattr=true";
const ACTIVITIES = ["DOWNLOAD", "LIST", "READ_METADATA", "UPLOAD", "DELETE", "MANAGE", "UPDATE_METADATA"];

const link = (path) => "#/files" + encodePath(path);

export function mount(box, rest) {
  const path = rest && rest !== "" ? rest.replace(/\/+$/, "") || "/" : "/";
  const state = { path, offset: 0 };
  const list = h("div", { class: "listing" });
  const progress = h("div", { class: "uploads", "aria-live": "polite" });
  const picker = h("input", { type: "file", multiple: true, id: "upload-input", class: "visually-hidden", onchange: () => uploadAll(picker.files) });
  const pager = h("div", { class: "pager" });

  const crumbs = () => {
    const parts = path.split("/").filter(Boolean);
    const out = [h("a", { href: link("/") }, "/")];
    let acc = "";
    parts.forEach((p, i) => {
      acc += "/" + p;
      out.push(h("a", { href: link(acc) }, p), i < parts.length - 1 ? "/" : "");
    });
    return h("nav", { class: "crumbs", "aria-label": "Path" }, out);
  };

  async function load() {
    const doc = await guard(() => call(ns(path, `children=true&limit=${PAGE}&offset=${state.offset}&${FLAGS}`)));
    if (!doc) return clear(list, h("p", { class: "muted" }, "Nothing to show."));
    if (doc.fileType !== "DIR") return showFile(doc);
    const rows = doc.children || [];
    clear(
      list,
      h(
        "table",
        { class: "files", id: "files-table" },
        h("caption", { class: "visually-hidden" }, `Entries of ${path}`),
        h("thead", {}, h("tr", {}, ["Name", "Size", "Modified", "Owner", "Mode", "Locality", "QoS", "Checksum", ""].map((c) => h("th", { scope: "col" }, c)))),
        h("tbody", {}, rows.map(row)),
      ),
      rows.length === 0 && state.offset === 0 ? h("p", { class: "muted empty" }, "This directory is empty. Drop files here to upload them.") : null,
    );
    const from = rows.length ? state.offset + 1 : state.offset;
    clear(
      pager,
      h("button", { id: "page-prev", disabled: state.offset === 0, onclick: () => { state.offset = Math.max(0, state.offset - PAGE); load(); } }, "← Previous"),
      h("span", { id: "page-info" }, `entries ${from}–${state.offset + rows.length}`),
      h("button", { id: "page-next", disabled: rows.length < PAGE, onclick: () => { state.offset += PAGE; load(); } }, "Next →"),
    );
  }

  function row(e) {
    const p = join(path, e.fileName);
    const isDir = e.fileType === "DIR";
    const sum = (e.checksums || [])[0];
    const name = isDir ? h("a", { href: link(p), class: "dir" }, e.fileName + "/") : h("button", { class: "link name", onclick: () => details(p) }, e.fileName);
    return h(
      "tr",
      { dataset: { name: e.fileName } },
      h("td", { class: "name" }, name, (e.labels || []).map((l) => h("span", { class: "label" }, l))),
      h("td", { class: "num" }, isDir ? "" : formatSize(e.size)),
      h("td", {}, formatTime(e.mtime)),
      h("td", {}, `${e.uid}:${e.gid}`),
      h("td", { class: "mono" }, formatMode(e.mode, isDir)),
      h("td", {}, e.fileLocality || ""),
      h("td", {}, e.currentQos || "", e.targetQos ? ` → ${e.targetQos}` : ""),
      h("td", { class: "mono small" }, sum ? `${sum.type.toLowerCase()}:${sum.value}` : ""),
      h(
        "td",
        { class: "actions" },
        isDir ? null : h("button", { class: "link", onclick: () => download(p), "aria-label": `Download ${e.fileName}` }, "Download"),
        h("button", { class: "link", onclick: () => rename(p), "aria-label": `Rename ${e.fileName}` }, "Rename"),
        h("button", { class: "link", onclick: () => share(p), "aria-label": `Share ${e.fileName}` }, "Share"),
        h("button", { class: "link", onclick: () => details(p), "aria-label": `Details of ${e.fileName}` }, "Details"),
        h("button", { class: "link danger", onclick: () => remove(p, isDir), "aria-label": `Delete ${e.fileName}` }, "Delete"),
      ),
    );
  }

  function showFile(doc) {
    // a file: its facts and a download, no folder tools
    for (const el of box.querySelectorAll(".tools")) el.remove();
    clear(
      list,
      h(
        "section",
        { class: "card file-info", id: "file-info" },
        h("h2", {}, path),
        h("dl", {}, facts(doc)),
        h("div", { class: "buttons" }, h("button", { class: "primary", id: "file-download", onclick: () => download(path) }, "Download"), h("a", { href: link(parent(path)) }, "Open folder")),
      ),
    );
    clear(pager);
  }

  function facts(doc) {
    const out = [
      ["Size", formatSize(doc.size)],
      ["Modified", formatTime(doc.mtime)],
      ["Owner", `${doc.uid}:${doc.gid}`],
      ["Mode", formatMode(doc.mode, doc.fileType === "DIR")],
      ["Locality", doc.fileLocality || ""],
      ["QoS", doc.currentQos || ""],
      ["pnfsId", doc.pnfsId],
    ];
    for (const c of doc.checksums || []) out.push([c.type, c.value]);
    return out.flatMap(([k, v]) => [h("dt", {}, k), h("dd", { class: "mono" }, v)]);
  }

  async function download(p) {
    // A link the browser can follow by itself: the door with a short macaroon (or the one signed in with).
    const a = auth.get();
    let url;
    if (a.kind === "macaroon") url = (await door()) + encodePath(p) + "?authz=" + encodeURIComponent(a.token);
    else {
      const m = await guard(() => mintMacaroon(p, ["DOWNLOAD"], "PT5M"));
      if (!m) return;
      url = m.uri.targetWithMacaroon;
    }
    const anchor = h("a", { href: url, download: p.split("/").pop() });
    document.body.append(anchor);
    anchor.click();
    anchor.remove();
  }

  async function mkdir() {
    const name = await prompt("New folder", "Folder name");
    if (!name) return;
    if ((await guard(() => call(ns(path), { method: "POST", json: { action: "mkdir", name } }))) !== undefined) load();
  }

  async function rename(p) {
    const dest = await prompt("Rename or move", "New name, or a path starting with /", p.split("/").pop());
    if (!dest) return;
    if ((await guard(() => call(ns(p), { method: "POST", json: { action: "mv", destination: dest } }))) !== undefined) load();
  }

  async function remove(p, isDir) {
    const ok = await confirmDialog("Delete", isDir ? `Delete the folder ${p} and everything in it?` : `Delete ${p}?`);
    if (!ok) return;
    const q = isDir ? "recursive=true" : "";
    if ((await guard(() => call(ns(p, q), { method: "DELETE" }))) !== undefined) {
      notice(`Deleted ${p}`);
      load();
    }
  }

  async function uploadAll(files) {
    for (const file of Array.from(files)) {
      const bar = h("progress", { max: 1, value: 0, "aria-label": `Uploading ${file.name}` });
      const line = h("div", { class: "upload" }, h("span", {}, file.name), bar);
      progress.append(line);
      const ok = await guard(() => upload(join(path, file.name), file, (f) => (bar.value = f)));
      if (ok !== undefined) {
        bar.value = 1;
        line.classList.add("done");
        setTimeout(() => line.remove(), 3000);
      } else line.remove();
    }
    picker.value = "";
    load();
  }

  async function details(p) {
    const doc = await guard(() => call(ns(p, FLAGS)));
    if (!doc) return;
    const labels = h("ul", { class: "chips" });
    const xattrs = h("tbody");
    const refresh = async () => {
      const d = await guard(() => call(ns(p, FLAGS)));
      if (!d) return;
      clear(labels, (d.labels || []).map((l) => h("li", {}, l, h("button", { class: "link", "aria-label": `Remove label ${l}`, onclick: () => act({ action: "rm-label", label: l }) }, "×"))));
      clear(
        xattrs,
        Object.entries(d.extendedAttributes || {}).map(([k, v]) =>
          h("tr", {}, h("td", { class: "mono" }, k), h("td", { class: "mono" }, v), h("td", {}, h("button", { class: "link", "aria-label": `Remove ${k}`, onclick: () => act({ action: "rm-xattr", names: [k] }) }, "Remove"))),
        ),
      );
    };
    const act = async (body) => {
      if ((await guard(() => call(ns(p), { method: "POST", json: body }))) !== undefined) refresh();
    };
    const label = h("input", { "aria-label": "New label", placeholder: "label", id: "label-input" });
    const key = h("input", { "aria-label": "Attribute name", placeholder: "name", id: "xattr-key" });
    const value = h("input", { "aria-label": "Attribute value", placeholder: "value", id: "xattr-value" });
    await refresh();
    const body = h(
      "div",
      { class: "details" },
      h("dl", {}, facts(doc)),
      h("h3", {}, "Labels"),
      labels,
      h("div", { class: "row" }, label, h("button", { type: "button", id: "label-add", onclick: () => label.value && act({ action: "set-label", label: label.value }).then(() => (label.value = "")) }, "Add label")),
      h("h3", {}, "Extended attributes"),
      h("table", { class: "xattrs" }, xattrs),
      h("div", { class: "row" }, key, value, h("button", { type: "button", id: "xattr-add", onclick: () => key.value && act({ action: "set-xattr", attributes: { [key.value]: value.value } }).then(() => { key.value = ""; value.value = ""; }) }, "Set")),
    );
    await dialog(p, body, [["Close", true]]);
    load();
  }

  async function share(p) {
    const checks = ACTIVITIES.map((a, i) => h("label", { class: "check" }, h("input", { type: "checkbox", name: "activity", value: a, checked: i < 3 }), a));
    const validity = h(
      "select",
      { id: "share-validity", "aria-label": "Valid for" },
      [["PT1H", "1 hour"], ["P1D", "1 day"], ["P7D", "7 days"], ["P30D", "30 days"]].map(([v, t]) => h("option", { value: v }, t)),
    );
    const ok = await dialog(`Share ${p}`, h("div", { class: "share" }, h("fieldset", {}, h("legend", {}, "Allow"), checks), h("label", { class: "field" }, "Valid for", validity)), [["Cancel", null], ["Create link", true, "primary"]]);
    if (!ok) return;
    const acts = checks.map((c) => c.querySelector("input")).filter((c) => c.checked).map((c) => c.value);
    const m = await guard(() => mintMacaroon(p, acts, validity.value));
    if (!m) return;
    const consoleLink = `${location.origin}/console/?authz=${encodeURIComponent(m.macaroon)}${link(p)}`;
    const { default: qrcode } = await import("../vendor/qrcode.mjs");
    const qr = qrcode(0, "L");
    qr.addData(consoleLink);
    qr.make();
    const out = h("input", { readonly: true, value: consoleLink, id: "share-link", "aria-label": "Share link", onfocus: (e) => e.target.select() });
    const direct = h("input", { readonly: true, value: m.uri.targetWithMacaroon, id: "share-direct", "aria-label": "Direct link", onfocus: (e) => e.target.select() });
    const img = h("div", { class: "qr", id: "share-qr", role: "img", "aria-label": "QR code of the link" });
    img.innerHTML = qr.createSvgTag({ cellSize: 3, margin: 2, scalable: true });
    await dialog(
      `Link to ${p}`,
      h(
        "div",
        { class: "share-result" },
        h("label", { class: "field" }, `In the console (${acts.join(", ")}, ${validity.selectedOptions[0].text})`, out),
        h("label", { class: "field" }, "Straight from the door", direct),
        h("button", { type: "button", onclick: () => navigator.clipboard && navigator.clipboard.writeText(consoleLink).then(() => notice("Link copied")) }, "Copy link"),
        img,
      ),
      [["Done", true]],
    );
  }

  // Drag and drop anywhere on the view.
  box.addEventListener("dragover", (e) => {
    e.preventDefault();
    box.classList.add("dropping");
  });
  box.addEventListener("dragleave", () => box.classList.remove("dropping"));
  box.addEventListener("drop", (e) => {
    e.preventDefault();
    box.classList.remove("dropping");
    if (e.dataTransfer.files.length) uploadAll(e.dataTransfer.files);
  });

  clear(
    box,
    h("div", { class: "toolbar" }, crumbs(), h(
      "div",
      { class: "tools" },
      path !== "/" ? h("a", { class: "button", href: link(parent(path)), id: "up" }, "↑ Up") : null,
      h("button", { id: "mkdir", onclick: mkdir }, "New folder"),
      h("label", { class: "button", for: "upload-input", tabindex: 0, onkeydown: (e) => (e.key === "Enter" || e.key === " ") && picker.click() }, "Upload…"),
      picker,
      h("button", { id: "share-dir", onclick: () => share(path) }, "Share folder"),
    )),
    progress,
    list,
    pager,
  );
  load();
  return () => {};
}
