// The HTTP API (docs/protocol.md): JSON in and out, errors as ApiError. `fetch` is given.

export class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

/**
 * `fetch`: the fetch function; `token()`: the bearer token or null; `onUnauthorized()`: an
 * authenticated request was answered 401 (the session is over). The returned function
 * `api(method, path, body, meta)` resolves to the answer's JSON; `meta`, if given, receives
 * `next`: the answer's X-Next-Cursor (room list pages).
 */
export function createApi({ fetch: request, token, onUnauthorized }) {
  return async function api(method, path, body, meta) {
    const t = token();
    let r;
    try {
      r = await request(path, {
        method,
        headers: Object.assign({ 'content-type': 'application/json' }, t ? { authorization: 'Bearer ' + t } : {}),
        body: body ? JSON.stringify(body) : undefined,
      });
    } catch {
      throw new ApiError(0, 'network', 'The server cannot be reached.');
    }
    const data = await r.json().catch(() => ({}));
    if (meta) meta.next = r.headers.get('x-next-cursor');
    // Only an authenticated request answered 401 means the session is over.
    if (r.status === 401 && t && !path.startsWith('/api/login') && !path.startsWith('/api/register')) {
      onUnauthorized();
      throw new ApiError(401, 'unauthorized', 'Your session has ended; please log in again.');
    }
    if (!r.ok) {
      const err = data && data.error;
      throw new ApiError(r.status, (err && err.code) || 'http_' + r.status, (err && err.message) || r.statusText || 'Request failed');
    }
    return data;
  };
}
