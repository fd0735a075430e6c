// The console's shell: sign in and out, the header, and a hash router (#/files/PATH, #/events, #/functions,
// #/scaling) that loads each view's module when it is first shown.
import { auth, call } from "./api.js";
import { h, clear, showError, hideError, guard } from "./ui.js";

const views = {
  files: () => import("./files.js"),
  events: () => import("./events.js"),
  functions: () => import("./functions.js"),
  scaling: () => import("./scaling.js"),
};

let current = null; // the mounted view's unmount function
export let user = null;

function takeTokenFromUrl() {
  // dCache's share links carry the macaroon as ?authz=TOKEN: sign in with it, then drop it from the address bar.
  const params = new URLSearchParams(location.search);
  const token = params.get("authz");
  if (!token) return;
  auth.set({ kind: "macaroon", token });
  params.delete("authz");
  const query = params.toString();
  history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + location.hash);
}

async function whoami() {
  if (!auth.get()) return null;
  const me = await call("/api/v1/user");
  return me.status === "AUTHENTICATED" ? me : null;
}

function signInForm() {
  const main = document.getElementById("main");
  const user = h("input", { id: "signin-user", name: "username", autocomplete: "username", required: true });
  const key = h("input", { id: "signin-key", name: "key", type: "password", autocomplete: "current-password", required: true });
  const token = h("textarea", { id: "signin-token", name: "token", rows: 4, spellcheck: "false" });
  const submit = async (e, kind) => {
    e.preventDefault();
    hideError();
    auth.set(kind === "basic" ? { kind, user: user.value.trim(), key: key.value } : { kind, token: token.value.trim() });
    const me = await guard(whoami);
    if (!me) {
      auth.clear();
      if (document.getElementById("error").hidden) showError("Sign-in failed: the server did not accept these credentials");
      return;
    }
    await start();
  };
  clear(
    main,
    h(
      "section",
      { class: "signin card" },
      h("h1", {}, "Sign in"),
      h(
        "form",
        { id: "signin-basic", onsubmit: (e) => submit(e, "basic") },
        h("h2", {}, "With your API key"),
        h("label", { class: "field", for: "signin-user" }, "User name", user),
        h("label", { class: "field", for: "signin-key" }, "API key", key),
        h("button", { class: "primary", type: "submit" }, "Sign in"),
      ),
      h(
        "form",
        { id: "signin-macaroon", onsubmit: (e) => submit(e, "macaroon") },
        h("h2", {}, "With a macaroon"),
        h("label", { class: "field", for: "signin-token" }, "Token", token),
        h("button", { type: "submit" }, "Sign in with token"),
      ),
    ),
  );
  user.focus();
  offerProviders(main.querySelector(".signin"));
}

// The OIDC sign-ins configured for the console (the issuers file's `console:` clients), above the other ways;
// oidc.js, which runs the flow, is loaded on the click.
async function offerProviders(card) {
  let offered = [];
  try {
    offered = (await call("/api/v1/console/login")).providers || [];
  } catch {
    // a server without the route: the other ways still work
  }
  const go = async (p) => {
    hideError();
    const oidc = await guard(() => import("./oidc.js"));
    if (oidc) await guard(() => oidc.begin(p));
  };
  if (offered.length) {
    card.querySelector("h1").after(
      h(
        "div",
        { id: "signin-oidc", class: "providers" },
        offered.map((p) =>
          h("button", { type: "button", class: "primary oidc", dataset: { issuer: p.issuer }, onclick: () => go(p) }, `Sign in with ${p.name}`),
        ),
      ),
    );
  }
  card.dataset.providers = String(offered.length); // the offer is complete (what the tests wait for)
}

function header(me) {
  document.getElementById("nav").hidden = false;
  const restricted = me.authentication && me.authentication.restrictions;
  const a = auth.get();
  const via = a && a.kind === "oidc" ? a.name : "";
  clear(
    document.getElementById("who"),
    h("span", { class: "user", id: "whoami", title: restricted ? "a token with restrictions" : via ? `signed in with ${via}` : "" }, me.username, restricted ? " (token)" : ""),
    h("button", { id: "signout", class: "link", onclick: signOut }, "Sign out"),
  );
}

function signOut() {
  if (current) current();
  current = null;
  auth.clear();
  user = null;
  document.getElementById("nav").hidden = true;
  clear(document.getElementById("who"));
  location.hash = "#/files/";
  signInForm();
}

function parseRoute() {
  // What follows "?" in the hash is the view's own (#/functions/activations?name=x); a '?' in a path is %3F.
  const raw = location.hash.replace(/^#/, "").split("?")[0];
  const hash = decodeURIComponent(raw) || "/files/";
  const m = hash.match(/^\/(\w+)(.*)$/);
  if (!m || !views[m[1]]) return { view: "files", rest: "/" };
  return { view: m[1], rest: m[2] || "" };
}

async function route() {
  if (!user) return;
  const { view, rest } = parseRoute();
  for (const a of document.querySelectorAll("#nav a")) {
    if (a.dataset.view === view) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  hideError();
  if (current) current();
  current = null;
  const main = document.getElementById("main");
  const box = h("div", { class: "view", id: `view-${view}` });
  clear(main, box);
  const mod = await guard(views[view]);
  if (!mod) return;
  current = (await guard(() => mod.mount(box, rest, { user }))) || null;
}

async function start() {
  const me = await guard(whoami);
  if (!me) {
    auth.clear();
    signInForm();
    return;
  }
  user = me;
  header(me);
  await route();
}

window.addEventListener("hashchange", route);
window.addEventListener("unhandledrejection", (e) => showError(e.reason));
// Back from an OIDC provider's login (?code=...&state=...): finish the sign-in (oidc.js), then start.
async function boot() {
  takeTokenFromUrl();
  const q = new URLSearchParams(location.search);
  if (q.has("state") && (q.has("code") || q.has("error"))) {
    try {
      await (await import("./oidc.js")).complete();
    } catch (e) {
      auth.clear();
      showError(e);
    }
  }
  await start();
}

boot();
