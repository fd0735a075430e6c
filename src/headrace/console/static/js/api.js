// The console's one way to the server: the public REST APIs with the signed-in user's credentials.
const KEY = "headrace.console.auth";

export const auth = {
  get() {
    try {
      return JSON.parse(sessionStorage.getItem(KEY) || "null");
    } catch {
      return null;
    }
  },
  set(a) {
    sessionStorage.setItem(KEY, JSON.stringify(a));
  },
  clear() {
    sessionStorage.removeItem(KEY);
    doorBase = null;
  },
  header() {
    const a = this.get();
    if (!a) return null;
    if (a.kind === "basic") {
      const bytes = new TextEncoder().encode(`${a.user}:${a.key}`);
      return "Basic " + btoa(String.fromCharCode(...bytes));
    }
    return "Bearer " + a.token;
  },
};

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

// The API's own message: dCache's {"status","title","detail"}, OpenWhisk's {"error"}, or the status line.
export async function errorOf(res) {
  let message = `${res.status} ${res.statusText || "error"}`;
  try {
    const body = await res.json();
    message = body.detail || body.error || body.title || body.message || message;
  } catch {
    // not JSON: the status line
  }
  return new ApiError(res.status, message);
}

export async function call(url, { method = "GET", json, body, headers = {}, signal } = {}) {
  const h = { Accept: "application/json", ...headers };
  const a = auth.header();
  if (a) h.Authorization = a;
  if (json !== undefined) {
    h["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  }
  let res;
  try {
    res = await fetch(url, { method, headers: h, body, signal, credentials: "same-origin" });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(0, `Cannot reach ${url}: ${e.message}`);
  }
  if (!res.ok) throw await errorOf(res);
  if (res.status === 204) return null;
  const type = res.headers.get("content-type") || "";
  return type.includes("json") ? res.json() : res.text();
}

// One path segment at a time, so names with spaces, '#' or '?' survive.
export function encodePath(path) {
  return path
    .split("/")
    .map((s) => encodeURIComponent(s))
    .join("/");
}

export function join(dir, name) {
  return (dir.endsWith("/") ? dir : dir + "/") + name;
}

export function parent(path) {
  const i = path.replace(/\/$/, "").lastIndexOf("/");
  return i <= 0 ? "/" : path.slice(0, i);
}

export const ns = (path, query = "") => `/api/v1/namespace${encodePath(path)}${query ? "?" + query : ""}`;
export const whisk = (rest) => `/api/v1/namespaces/_/${rest}`;

// The door's URL, as dCache's login broker tells it (/api/v1/doors): another origin (port), CORS-enabled.
let doorBase = null;
export async function door() {
  if (doorBase) return doorBase;
  const doors = await call("/api/v1/doors");
  const d = doors[0];
  let host = d.addresses[0];
  if (host.includes(":") && !host.startsWith("[")) host = `[${host}]`;
  doorBase = `${d.protocol}://${host}:${d.port}`;
  return doorBase;
}

export async function doorCall(path, opts = {}) {
  return call((await door()) + encodePath(path), opts);
}

// An upload with progress (fetch has none for request bodies): PUT to the door.
export async function upload(path, file, onProgress) {
  const url = (await door()) + encodePath(path);
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", url);
    const a = auth.header();
    if (a) xhr.setRequestHeader("Authorization", a);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    xhr.onload = () => {
      if (xhr.status >= 200 && xhr.status < 300) return resolve();
      let message = `${xhr.status} ${xhr.statusText}`;
      try {
        const b = JSON.parse(xhr.responseText);
        message = b.detail || b.error || b.title || message;
      } catch {
        // the status line
      }
      reject(new ApiError(xhr.status, message));
    };
    xhr.onerror = () => reject(new ApiError(0, `Upload to ${url} failed (network or CORS)`));
    xhr.send(file);
  });
}

// dCache's macaroon request: a token confined to `path`, for `activities`, valid for `validity` (ISO 8601).
export async function mintMacaroon(path, activities, validity) {
  return doorCall(path, {
    method: "POST",
    headers: { "Content-Type": "application/macaroon-request" },
    body: JSON.stringify({ caveats: [`activity:${activities.join(",")}`], validity }),
  });
}

export function formatSize(n) {
  if (n === undefined || n === null) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 1 : 0)} ${units[i]}`;
}

export function formatTime(ms) {
  if (!ms) return "";
  const d = new Date(ms);
  return d.toISOString().replace("T", " ").slice(0, 19);
}

export function formatMode(mode, isDir) {
  const bits = "rwxrwxrwx";
  let s = isDir ? "d" : "-";
  for (let i = 0; i < 9; i++) s += mode & (1 << (8 - i)) ? bits[i] : "-";
  return s;
}
