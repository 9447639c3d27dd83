// The page's one way to the facade: JSON with the operator's bearer token, errors as ApiError.
// The token lives in this tab's sessionStorage only (never in a URL); paths are relative to /fleet.

const KEY = "npu-worker.operator-token";

export const token = {
  get: () => sessionStorage.getItem(KEY) || "",
  set: (value) => sessionStorage.setItem(KEY, value),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, code, message, body = null) {
    super(message);
    this.status = status; // 0: the facade did not answer
    this.code = code;
    this.body = body;
  }
}

export async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token.get()}` };
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, "network", "the facade did not answer");
  }
  if (response.status === 204) return null;
  let data = null;
  try {
    data = await response.json();
  } catch {
    // not JSON: only the status says what happened
  }
  if (!response.ok) {
    const code = (data && data.error) || `http_${response.status}`;
    const message = (data && data.message) || response.statusText || `HTTP ${response.status}`;
    throw new ApiError(response.status, code, message, data);
  }
  return data;
}

export const get = (path) => api("GET", path);
export const post = (path, body) => api("POST", path, body);
export const patch = (path, body) => api("PATCH", path, body);
export const del = (path) => api("DELETE", path);
export const enc = encodeURIComponent;

/** A one-line, human account of a failed call, with the API's error code. */
export function describe(error) {
  if (!(error instanceof ApiError)) return String(error && error.message ? error.message : error);
  if (error.status === 0) return "The facade did not answer (network error). Retrying…";
  if (error.code === "redis_unavailable") return "Redis is unreachable: the fleet's state cannot be read. Retrying…";
  if (error.status === 403) return `Not allowed for this token's role (${error.message}).`;
  return `${error.message} (${error.status} ${error.code})`;
}
