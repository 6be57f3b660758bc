// The admin API, asked with the admin token as a bearer header. The token lives in this tab's
// sessionStorage only: never in a URL, a cookie or a log.

const KEY = 'hlgate.admin-token';

export const session = {
  get token() { return sessionStorage.getItem(KEY); },
  set(token) { sessionStorage.setItem(KEY, token); },
  clear() { sessionStorage.removeItem(KEY); },
};

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// A 401 anywhere means the token is gone or wrong: the app listens and asks for it again.
export const signedOut = new EventTarget();

export async function api(path, { method = 'GET', body } = {}) {
  const headers = { Accept: 'application/json' };
  const token = session.token;
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
      credentials: 'omit',
    });
  } catch {
    throw new ApiError(0, 'unreachable', 'hlgate did not answer');
  }
  let data = null;
  try { data = await response.json(); } catch { /* not JSON: the status says it */ }
  if (response.status === 401) signedOut.dispatchEvent(new Event('signed-out'));
  if (!response.ok) {
    throw new ApiError(response.status, data?.error ?? 'http_error',
      data?.message ?? `HTTP ${response.status}`);
  }
  return data;
}

// A query string from an object, leaving out empty values.
export function query(params) {
  const q = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== '') q.set(name, value);
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}
