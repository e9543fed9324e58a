// The studio's only way to the service: tunelab's public HTTP API under /v1.
//
// The pages never hold a key. Signing in (the link `tunelab serve` prints, or the form) gives this browser a
// session cookie that scripts cannot read (HttpOnly); every call carries the studio's `X-Requested-With` header,
// without which the service ignores that cookie. Errors arrive in the OpenAI envelope
// {"error": {"message", "type", "param", "code"}} and are thrown as ApiError with that message.

const STUDIO = { "X-Requested-With": "tunelab-studio" };

// A random id for an Idempotency-Key header (crypto.randomUUID exists only on https or loopback pages).
export function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return [...bytes].map((b) => b.toString(16).padStart(2, "0")).join("");
}

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `the service answered ${status}`);
    this.status = status;
    this.param = error.param ?? null;
    this.code = error.code ?? null;
    this.type = error.type ?? null;
    this.innererror = error.innererror ?? null;
  }
}

// Listeners told when the session is missing or has ended (the app shows the sign-in form).
const onUnauthorized = new Set();
export function whenSignedOut(listener) {
  onUnauthorized.add(listener);
}

function headers(extra = {}) {
  return { ...STUDIO, ...extra };
}

async function errorOf(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const error = body && body.error ? body.error : { message: `the service answered ${response.status} ${response.statusText}` };
  return new ApiError(response.status, error);
}

function unreachable(cause) {
  const error = new ApiError(0, { message: `cannot reach the tunelab service at ${location.origin}: is \`tunelab serve\` still running?` });
  error.cause = cause;
  return error;
}

export async function request(method, path, { body, query, extraHeaders, raw, signal, root = "/v1", quiet = false } = {}) {
  const url = new URL(`${root}${path}`, location.origin);
  for (const [name, value] of Object.entries(query || {})) {
    if (value !== undefined && value !== null && value !== "") url.searchParams.set(name, value);
  }
  const init = { method, headers: headers(extraHeaders), signal, credentials: "same-origin" };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  let response;
  try {
    response = await fetch(url, init);
  } catch (cause) {
    if (cause.name === "AbortError") throw cause;
    throw unreachable(cause);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401 && !quiet) onUnauthorized.forEach((listener) => listener(error));
    throw error;
  }
  if (raw) return response;
  return response.status === 204 ? null : response.json();
}

// Signing in and out: the server keeps the session; this page only learns whether it has one.
export async function signIn(key) {
  await request("POST", "/session", { body: { key }, root: "/studio", quiet: true });
}

export async function signOut() {
  await request("DELETE", "/session", { root: "/studio", quiet: true });
}

export async function signedIn() {
  return (await request("GET", "/session", { root: "/studio", quiet: true })).signed_in;
}

export const get = (path, query, options = {}) => request("GET", path, { query, ...options });
export const post = (path, body, options = {}) => request("POST", path, { body, ...options });
export const put = (path, body, options = {}) => request("PUT", path, { body, ...options });
export const del = (path, options = {}) => request("DELETE", path, options);

// Every page of a cursor list (files, jobs …): the API pages with `after` = the last id.
export async function all(path, query = {}) {
  const found = [];
  let after;
  for (;;) {
    const page = await get(path, { ...query, after });
    found.push(...page.data);
    if (!page.has_more || !page.data.length) return found;
    after = page.data[page.data.length - 1].id;
  }
}

// Upload a file (multipart, as the SDK does) with progress: onProgress(sentBytes, totalBytes).
export function upload(file, onProgress, purpose = "fine-tune") {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", "/v1/files");
    for (const [name, value] of Object.entries(STUDIO)) xhr.setRequestHeader(name, value);
    xhr.upload.onprogress = (event) => event.lengthComputable && onProgress && onProgress(event.loaded, event.total);
    xhr.onerror = () => reject(unreachable(null));
    xhr.onload = () => {
      let body = null;
      try {
        body = JSON.parse(xhr.responseText);
      } catch {
        body = null;
      }
      if (xhr.status >= 200 && xhr.status < 300) return resolve(body);
      const error = new ApiError(xhr.status, body && body.error ? body.error : { message: `the upload failed (${xhr.status})` });
      if (xhr.status === 401) onUnauthorized.forEach((listener) => listener(error));
      reject(error);
    };
    const form = new FormData();
    form.append("purpose", purpose);
    form.append("file", file, file.name);
    xhr.send(form);
  });
}

// A file's bytes (or its first `limit` bytes, with a Range request): {text, partial, total}.
export async function fileText(fileId, limit) {
  const extraHeaders = limit ? { Range: `bytes=0-${limit - 1}` } : {};
  const response = await request("GET", `/files/${fileId}/content`, { raw: true, extraHeaders });
  const text = await response.text();
  const range = response.headers.get("Content-Range");
  const total = range ? Number(range.split("/")[1]) : text.length;
  return { text, partial: response.status === 206 && total > limit, total };
}

// Save what a route returns as a file in the browser's downloads.
export async function download(path, filename, query) {
  const response = await request("GET", path, { query, raw: true });
  const blob = await response.blob();
  const link = document.createElement("a");
  link.href = URL.createObjectURL(blob);
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
}

// A streamed chat completion: yields each parsed `chat.completion.chunk`; throws ApiError for an error before
// or during the stream.
export async function* streamChat(body, signal) {
  const response = await request("POST", "/chat/completions", {
    body: { ...body, stream: true, stream_options: { include_usage: true } },
    raw: true,
    signal,
  });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((line) => line.startsWith("data:"))
        .map((line) => line.slice(5).trimStart())
        .join("\n");
      if (!data) continue;
      if (data === "[DONE]") return;
      const chunk = JSON.parse(data);
      if (chunk.error) throw new ApiError(500, chunk.error);
      yield chunk;
    }
  }
}
