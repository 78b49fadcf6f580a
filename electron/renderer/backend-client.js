// The renderer's side of the backend: where the daemon is and how to authenticate, for the
// DB Toolkit UI's axios instance (api.js) and its WebSockets (websocket.js).
//
// Plain ES module, no dependencies, no Node or Electron APIs: it runs in the sandboxed renderer
// and only sees what the preload exposes (`window.dbtk.backend()` → `{url, headers,
// protocols}`, `window.dbtk.onBackendEvent(callback)`; see docs/electron.md). The token lives
// in this module's memory only: never in a URL, localStorage or a cookie.
//
// The answer is asked for once and cached. `restarted` keeps the port and token, so the cache
// stays; `upgraded` and `reattached` may change either, so the next call asks again. A call
// that fails is not cached, so the next one retries (the daemon may be starting).

/** Events after which the port or the token may differ (docs/electron.md, "lease events"). */
const REFRESH_EVENTS = new Set(['upgraded', 'reattached']);

/** Prefix of every HTTP route (UI-CONTRACT §0). */
const API_PREFIX = '/api/v1';

/**
 * @param {object} [options]
 * @param {() => Promise<{url: string, headers: object, protocols: string[]}>} [options.backend]
 *   the preload's call; default `window.dbtk.backend`
 * @param {(callback: (name: string, payload: object) => void) => void} [options.onBackendEvent]
 *   the preload's event subscription; default `window.dbtk.onBackendEvent`
 * @param {typeof WebSocket} [options.WebSocket] default `globalThis.WebSocket`
 */
export function createBackendClient(options = {}) {
  const bridge = globalThis.window && globalThis.window.dbtk;
  const backend = options.backend || (bridge && bridge.backend);
  const onBackendEvent = options.onBackendEvent || (bridge && bridge.onBackendEvent);
  const SocketClass = options.WebSocket || globalThis.WebSocket;
  if (typeof backend !== 'function') {
    throw new TypeError('backend-client: expected window.dbtk.backend() from the preload (docs/electron.md), got none');
  }

  let pending = null; // Promise of the last answer, or null when it must be asked again

  /** `{url, headers, protocols}` of the daemon the main process last reported. */
  function info() {
    if (!pending) {
      pending = Promise.resolve()
        .then(() => backend())
        .then(check)
        .catch((error) => {
          pending = null; // not cached: the next call asks again
          throw error;
        });
    }
    return pending;
  }

  /** Forget the cached answer; the next call asks the main process again. */
  function refresh() {
    pending = null;
    return info();
  }

  if (typeof onBackendEvent === 'function') {
    onBackendEvent((name) => {
      if (REFRESH_EVENTS.has(name)) pending = null;
    });
  }

  /**
   * An axios request interceptor: `api.interceptors.request.use(client.axiosInterceptor)`.
   * Sets the base URL (`<daemon>/api/v1`) and the Authorization header on every request.
   */
  async function axiosInterceptor(config) {
    const { url, headers } = await info();
    config.baseURL = url + API_PREFIX;
    const target = config.headers || (config.headers = {});
    for (const [name, value] of Object.entries(headers)) {
      // axios 1.x gives an AxiosHeaders object (set()); older versions a plain object.
      if (typeof target.set === 'function') target.set(name, value);
      else target[name] = value;
    }
    return config;
  }

  /** `fetch` against the API: `apiFetch('/connections')` → `<daemon>/api/v1/connections`. */
  async function apiFetch(path, init = {}) {
    const { url, headers } = await info();
    return fetch(url + API_PREFIX + path, { ...init, headers: { ...(init.headers || {}), ...headers } });
  }

  /**
   * A WebSocket on `/ws/<name>` (`backups`, `terminal`, `migrator`, `analytics`, `logs`),
   * offering the subprotocols `dbtk.v1` and `dbtk.bearer.<token>`; the server selects `dbtk.v1`.
   */
  async function openSocket(name) {
    if (typeof SocketClass !== 'function') {
      throw new TypeError('backend-client: no WebSocket class in this environment; pass options.WebSocket');
    }
    const { url, protocols } = await info();
    return new SocketClass(`${url.replace(/^http/, 'ws')}/ws/${name}`, protocols);
  }

  return { info, refresh, axiosInterceptor, apiFetch, openSocket };
}

function check(answer) {
  const ok =
    answer &&
    typeof answer.url === 'string' &&
    /^http:\/\/(127\.0\.0\.1|localhost|\[::1\]):\d+$/.test(answer.url) &&
    answer.headers &&
    typeof answer.headers === 'object' &&
    Array.isArray(answer.protocols);
  if (!ok) {
    throw new TypeError(
      `backend-client: expected {url: "http://127.0.0.1:PORT", headers, protocols} from window.dbtk.backend(), got ${JSON.stringify(answer && { url: answer.url, protocols: Array.isArray(answer.protocols) })}`,
    );
  }
  return answer;
}
