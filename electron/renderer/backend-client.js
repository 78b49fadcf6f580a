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

// The UI's own caches (db-toolkit-ui at 7b36c9c: utils/constants.js, utils/localStorage.js,
// services/indexedDB.js; UI-CONTRACT §0 "client caches"). A change another window made makes
// some of them stale; watchChanges() removes exactly those.
const CONNECTIONS_KEY = 'db_toolkit_connections';
const SETTINGS_KEY = 'db_toolkit_settings';
const SCHEMA_KEY_PREFIXES = ['db_toolkit_schema', 'db_toolkit_table_info'];
const CACHE_DB = 'db-toolkit-cache';
const SCHEMA_STORES = ['schema-cache', 'table-info']; // keys: `<id>` and `<id>_<schema>_<table>`
// Reconnecting /ws/events after a restart or a daemon exit: 100 ms doubling to 5 s.
const RECONNECT_FIRST_MS = 100;
const RECONNECT_MAX_MS = 5000;

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

  /**
   * Subscribe this window to `/ws/events` (once per window). For each change any window made
   * through the daemon it removes the UI caches the change made stale, then dispatches
   * `dbtk:change` on `window` with the event as `detail` (a `resync` clears every cache it
   * knows). Reconnects by itself, asking for what it missed (`?since=<epoch>:<seq>`).
   * Returns `{ close() }`.
   */
  function watchChanges(watchOptions = {}) {
    const target = watchOptions.target || globalThis.window;
    const storage = watchOptions.storage || globalThis.localStorage;
    const databases = watchOptions.indexedDB || globalThis.indexedDB;
    let last = null; // "<epoch>:<seq>" of the last event handled
    let lastEpoch = null;
    let socket = null;
    let closed = false;
    let delay = RECONNECT_FIRST_MS;
    let queue = Promise.resolve(); // events are handled one at a time, in order

    async function handle(message) {
      if (message.type === 'hello') {
        if (lastEpoch === null) {
          lastEpoch = message.epoch;
          last = `${message.epoch}:${message.seq}`;
        }
        return;
      }
      if (message.type !== 'change' && message.type !== 'resync') return;
      await clearCaches(message, storage, databases);
      lastEpoch = message.epoch;
      last = `${message.epoch}:${message.seq}`;
      if (target && typeof target.dispatchEvent === 'function') {
        target.dispatchEvent(new CustomEvent('dbtk:change', { detail: message }));
      }
    }

    async function connect() {
      if (closed) return;
      try {
        socket = await openSocket(last ? `events?since=${encodeURIComponent(last)}` : 'events');
      } catch (error) {
        retry();
        return;
      }
      socket.onopen = () => {
        delay = RECONNECT_FIRST_MS;
      };
      socket.onmessage = (event) => {
        let message;
        try {
          message = JSON.parse(event.data);
        } catch (error) {
          return;
        }
        queue = queue.then(() => handle(message)).catch(() => {});
      };
      socket.onclose = () => retry();
    }

    function retry() {
      if (closed) return;
      const wait = delay;
      delay = Math.min(delay * 2, RECONNECT_MAX_MS);
      setTimeout(connect, wait);
    }

    connect();
    return {
      close() {
        closed = true;
        if (socket) socket.close();
      },
    };
  }

  return { info, refresh, axiosInterceptor, apiFetch, openSocket, watchChanges };
}

/** Remove the caches `message` made stale (see the constants above). */
async function clearCaches(message, storage, databases) {
  const keys = storage ? Object.keys(storage) : [];
  const removeKeys = (test) => keys.filter(test).forEach((key) => storage.removeItem(key));
  const forConnection = (id) => (key) => key.endsWith(`_${id}`) && SCHEMA_KEY_PREFIXES.some((p) => key.startsWith(p));
  if (message.type === 'resync') {
    removeKeys((key) => key === CONNECTIONS_KEY || key === SETTINGS_KEY || SCHEMA_KEY_PREFIXES.some((p) => key.startsWith(p)));
    await clearIndexedDb(databases, null);
    return;
  }
  const kind = message.kind;
  if (kind === 'connection_created' || kind === 'connection_updated' || kind === 'connection_deleted') {
    removeKeys((key) => key === CONNECTIONS_KEY);
  }
  if (kind === 'connection_updated' || kind === 'connection_deleted' || kind === 'schema_changed') {
    const id = message.id || message.connection_id;
    removeKeys(forConnection(id));
    await clearIndexedDb(databases, id);
  }
  if (kind === 'settings_changed') removeKeys((key) => key === SETTINGS_KEY);
}

/** Delete one connection's schema entries (or, for `id` null, all) from the UI's IndexedDB. */
function clearIndexedDb(databases, id) {
  if (!databases || typeof databases.open !== 'function') return Promise.resolve();
  return new Promise((resolve) => {
    const request = databases.open(CACHE_DB);
    // The UI never opened its cache in this profile: do not create it (with no stores) here.
    request.onupgradeneeded = () => request.transaction.abort();
    request.onerror = () => resolve();
    request.onblocked = () => resolve();
    request.onsuccess = () => {
      const db = request.result;
      const stores = SCHEMA_STORES.filter((name) => db.objectStoreNames.contains(name));
      if (!stores.length) {
        db.close();
        resolve();
        return;
      }
      const tx = db.transaction(stores, 'readwrite');
      for (const name of stores) {
        const store = tx.objectStore(name);
        if (id === null) {
          store.clear();
          continue;
        }
        store.openCursor().onsuccess = (event) => {
          const cursor = event.target.result;
          if (!cursor) return;
          const key = String(cursor.key);
          if (key === id || key.startsWith(`${id}_`)) cursor.delete();
          cursor.continue();
        };
      }
      const done = () => {
        db.close();
        resolve();
      };
      tx.oncomplete = done;
      tx.onerror = done;
      tx.onabort = done;
    };
  });
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
