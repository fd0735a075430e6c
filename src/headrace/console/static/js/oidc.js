// Signing in with an OIDC provider: the issuers file's `console:` clients, as GET /api/v1/console/login lists
// them. The OAuth 2.0 authorization code flow with PKCE (RFC 7636, S256) and `state`, the console being a
// public client: no secret; the code is exchanged at the token endpoint from the page (the provider allows
// the console's origin, CORS); the access token is kept as the other credentials are (api.js) and sent as
// `Authorization: Bearer`. Loaded only when such a button is clicked or the provider sends the browser back.
import { auth } from "./api.js";

const PENDING = "headrace.console.oidc";
// What the provider may add to the redirect URI; none of it stays in the address bar.
const ANSWER = ["code", "state", "error", "error_description", "error_uri", "iss", "session_state"];

function base64url(bytes) {
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

function random(n) {
  return base64url(crypto.getRandomValues(new Uint8Array(n)));
}

// The console's own address, as registered at the provider: https://host/console/
export function redirectUri() {
  return new URL("./", location.origin + location.pathname).href;
}

// To the provider's login: the verifier and state stay in this tab (sessionStorage) until it comes back.
export async function begin(p) {
  if (p.error) throw new Error(p.error);
  if (!window.crypto || !crypto.subtle) {
    throw new Error(`Signing in with ${p.name} needs the console on https (the browser hashes the PKCE verifier with WebCrypto)`);
  }
  const verifier = random(32); // 43 characters, RFC 7636's minimum
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  const state = random(16);
  const back = redirectUri();
  sessionStorage.setItem(
    PENDING,
    JSON.stringify({ state, verifier, issuer: p.issuer, name: p.name, clientId: p.clientId, tokenEndpoint: p.tokenEndpoint, redirectUri: back, hash: location.hash }),
  );
  const url = new URL(p.authorizationEndpoint);
  const params = {
    response_type: "code",
    client_id: p.clientId,
    redirect_uri: back,
    scope: p.scopes,
    state,
    code_challenge: base64url(new Uint8Array(digest)),
    code_challenge_method: "S256",
  };
  for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
  location.assign(url.href);
}

// Back from the provider: check `state`, exchange the code for a token, keep it. Throws with the reason.
export async function complete() {
  const q = new URLSearchParams(location.search);
  const answer = Object.fromEntries(ANSWER.map((k) => [k, q.get(k)]));
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem(PENDING) || "null");
  } catch {
    saved = null;
  }
  sessionStorage.removeItem(PENDING);
  for (const k of ANSWER) q.delete(k);
  const query = q.toString();
  history.replaceState(null, "", location.pathname + (query ? "?" + query : "") + ((saved && saved.hash) || location.hash));

  if (!saved || !answer.state || saved.state !== answer.state) {
    throw new Error("This sign-in was not started in this tab (its state does not match): sign in again");
  }
  if (answer.error) throw new Error(`${saved.name} refused the sign-in: ${answer.error_description || answer.error}`);
  if (answer.iss && answer.iss.replace(/\/$/, "") !== saved.issuer.replace(/\/$/, "")) {
    throw new Error(`The sign-in came back from ${answer.iss}, not from ${saved.issuer}`);
  }
  const body = new URLSearchParams({
    grant_type: "authorization_code",
    code: answer.code,
    redirect_uri: saved.redirectUri,
    client_id: saved.clientId,
    code_verifier: saved.verifier,
  });
  let res;
  try {
    res = await fetch(saved.tokenEndpoint, { method: "POST", body, headers: { Accept: "application/json" }, credentials: "omit" });
  } catch (e) {
    throw new Error(`Cannot reach ${saved.name}'s token endpoint ${saved.tokenEndpoint} (${e.message}): does it allow this origin (CORS, the client's web origins)?`);
  }
  let doc = {};
  try {
    doc = await res.json();
  } catch {
    // not JSON: the status below
  }
  if (!res.ok || !doc.access_token) {
    throw new Error(`${saved.name} issued no token: ${doc.error_description || doc.error || `${res.status} ${res.statusText}`}`);
  }
  auth.set({
    kind: "oidc",
    token: doc.access_token,
    issuer: saved.issuer,
    name: saved.name,
    expires: doc.expires_in ? Date.now() + doc.expires_in * 1000 : null,
  });
}
