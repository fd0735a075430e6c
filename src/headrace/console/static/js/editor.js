// A code editor with Python syntax highlighting: a <textarea> (the text, the caret, the browser's own undo and
// accessibility) over a <pre> that shows the same text coloured. Tab indents; Escape then Tab leaves the editor.
import { h } from "./ui.js";

const KEYWORDS = new Set(
  "False None True and as assert async await break class continue def del elif else except finally for from global if import in is lambda nonlocal not or pass raise return try while with yield match case".split(" "),
);
const BUILTINS = new Set(
  "abs all any bool bytes dict enumerate filter float format getattr hasattr int isinstance len list map max min open print range repr reversed round set sorted str sum tuple type zip self Exception ValueError KeyError TypeError RuntimeError".split(" "),
);
const TOKEN = /(#[^\n]*)|([rRbBfFuU]{0,2}(?:"""[\s\S]*?(?:"""|$)|'''[\s\S]*?(?:'''|$)|"(?:\\.|[^"\\\n])*"?|'(?:\\.|[^'\\\n])*'?))|(@[\w.]+)|(\b\d[\d_]*(?:\.\d+)?(?:[eE][+-]?\d+)?\b)|([A-Za-z_]\w*)/g;

function escape(s) {
  return s.replace(/[&<>]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;" })[c]);
}

export function highlight(code) {
  let out = "", last = 0, prev = "";
  for (const m of code.matchAll(TOKEN)) {
    out += escape(code.slice(last, m.index));
    last = m.index + m[0].length;
    const text = escape(m[0]);
    let cls = null;
    if (m[1]) cls = "com";
    else if (m[2]) cls = "str";
    else if (m[3]) cls = "dec";
    else if (m[4]) cls = "num";
    else if (KEYWORDS.has(m[0])) cls = "kw";
    else if (prev === "def" || prev === "class") cls = "fn";
    else if (BUILTINS.has(m[0])) cls = "bi";
    if (m[5]) prev = m[0];
    out += cls ? `<span class="tok-${cls}">${text}</span>` : text;
  }
  return out + escape(code.slice(last)) + "\n";
}

export function codeEditor({ id, value = "", label = "Code" }) {
  const pre = h("pre", { class: "code-view", "aria-hidden": "true" });
  const area = h("textarea", { id, class: "code-input", spellcheck: "false", autocapitalize: "off", autocomplete: "off", "aria-label": `${label} (Tab indents; Escape then Tab leaves)`, wrap: "off" });
  area.value = value;
  const paint = () => {
    pre.innerHTML = highlight(area.value);
    pre.scrollTop = area.scrollTop;
    pre.scrollLeft = area.scrollLeft;
  };
  let escaped = false;
  area.addEventListener("input", paint);
  area.addEventListener("scroll", () => {
    pre.scrollTop = area.scrollTop;
    pre.scrollLeft = area.scrollLeft;
  });
  area.addEventListener("keydown", (e) => {
    if (e.key === "Escape") {
      escaped = true;
      return;
    }
    if (e.key === "Tab" && !escaped && !e.ctrlKey && !e.altKey) {
      e.preventDefault();
      const { selectionStart: s, selectionEnd: t, value: v } = area;
      if (e.shiftKey) {
        const lineStart = v.lastIndexOf("\n", s - 1) + 1;
        if (v.slice(lineStart, lineStart + 4) === "    ") {
          area.setRangeText("", lineStart, lineStart + 4, "preserve");
        }
      } else area.setRangeText("    ", s, t, "end");
      paint();
    }
    escaped = false;
  });
  paint();
  const wrap = h("div", { class: "code-editor" }, pre, area);
  return { element: wrap, get value() { return area.value; }, set value(v) { area.value = v; paint(); } };
}
