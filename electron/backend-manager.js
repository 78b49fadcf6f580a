'use strict';
/**
 * The Electron main process's way to the shared DB Toolkit daemon (DESIGN §2, issue 5).
 *
 * `ensureBackend()` asks the daemon's control socket for `{port, url, token, version, pid}`
 * (hello + port on one connection, then `GET /health`); only when no daemon answers does it
 * run `dbtkctl port --json`, which starts one under its spawn lock, so many windows starting
 * at once share one daemon. Each window holds an `attach` lease (`attach(name)`), released
 * when it closes; a window never stops the daemon (idle exit does, once the last lease is
 * gone). Leases report `restarted`, `failed`, `upgraded` (and `stopped`/`reattached`) from the
 * daemon's event stream. `openStream` and `retryIdempotent` ride through worker restarts.
 *
 * The squatter rule: the token goes only to a port the control socket (a 0700 path only this
 * user reaches) has just reported. After a refused connection or a daemon exit, the cached
 * backend is stale: `authHeaders()` refuses, and every reconnect or retry first asks the
 * control socket again.
 *
 * Plain Node (20+), CommonJS, no runtime dependencies, no `require('electron')`: the module
 * works in Electron's main process and under `node --test` alike. Errors are `BackendError`s
 * with a `code` and a dialog-ready `message` (lib/errors.js). The module-level functions use
 * one shared `BackendManager`; tests and tools make their own.
 */

const { EventEmitter } = require('node:events');
const net = require('node:net');

const { ControlConnection, ControlError, checkProtocol, isNotRunning } = require('./lib/control');
const { dbtkctlPort } = require('./lib/dbtkctl');
const startMarker = require('./lib/start-marker');
const { BackendError, CODES, failedError, timeoutError } = require('./lib/errors');
const { Lease } = require('./lib/lease');
const paths = require('./lib/paths');
const { isConnectionError, isRefused, jittered, sleep } = require('./lib/retry');

const SECONDS = 1000;
// dbtkctl waits up to 40 s for a cold start on a slow disk; so does a window.
const DEFAULT_TIMEOUT_MS = 40 * SECONDS;
const CONNECT_TIMEOUT_MS = 2 * SECONDS;
const HEALTH_POLL_MS = 10;
const START_WATCH_MS = 10; // a waiting window's look at the control socket: ~20 µs each
const BUSY_RETRY_FIRST_MS = 20; // the daemon's 256-connection cap: back off like dbtkctl
const BUSY_RETRIES = 8;
const CLOSED_RETRY_MS = 50; // a daemon closing mid-request is stopping or handing off
const RETRY_FIRST_MS = 50;
const RETRY_MAX_MS = 1 * SECONDS;
// A worker restart takes about 0.3 s; 15 s covers a slow one and a few crash-loop backoffs.
const RETRY_TIMEOUT_MS = 15 * SECONDS;
const SUBPROTOCOL = 'dbtk.v1';
const BEARER_PREFIX = 'dbtk.bearer.';

/**
 * The status code of `GET pathName` on 127.0.0.1:port, without credentials, on a raw socket:
 * node:http costs every window 2 ms to load for this one probe. Rejects with the socket error.
 */
function httpStatus(port, pathName, timeoutMs) {
  return new Promise((resolve, reject) => {
    const socket = net.createConnection({ host: '127.0.0.1', port });
    let head = '';
    socket.setTimeout(timeoutMs, () => socket.destroy(Object.assign(new Error('timeout'), { code: 'ETIMEDOUT' })));
    socket.setEncoding('latin1');
    socket.on('connect', () => {
      socket.write(`GET ${pathName} HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\nConnection: close\r\n\r\n`);
    });
    socket.on('data', (chunk) => {
      head += chunk;
      const match = /^HTTP\/1\.[01] (\d{3})/.exec(head);
      if (match) {
        resolve(Number(match[1]));
        socket.destroy();
      } else if (head.includes('\r\n') || head.length > 1024) {
        socket.destroy(Object.assign(new Error(`not HTTP: ${head.slice(0, 40)}`), { code: 'EPROTO' }));
      }
    });
    socket.on('error', reject);
    socket.on('close', () => reject(Object.assign(new Error('closed before answering'), { code: 'ECONNRESET' })));
  });
}

class BackendManager extends EventEmitter {
  /**
   * @param {object} [defaults] options every ensureBackend call starts from:
   *   dbtkctl (path), home (profile dir; default DBTK_HOME), timeoutMs (default 40 s),
   *   portRange ('A-B' or '0') and idleExit (seconds) for a daemon started here, env,
   *   backendVersion (the version of the bundled backend: a daemon of another version gets
   *   one `dbtkctl port`, which upgrades an older one by handoff).
   */
  constructor(defaults = {}) {
    super();
    this._defaults = defaults;
    this._options = null;
    this._backend = null;
    this._nonce = null;
    this._stale = false;
    this._inflight = null;
    this._leases = new Set();
    this._streams = new Set();
    this._relayed = new Map();
    this._restartsSeen = 0;
    this._upgradeOffered = new Set(); // daemon nonces dbtkctl was asked to upgrade
    this.stats = { controlCalls: 0, fallbacks: 0, upgrades: 0, healthChecks: 0 };
  }

  /** The backend last reported by the daemon ({port, url, token, version, pid}), or null. */
  get backend() {
    return this._backend;
  }

  /**
   * Find (or start) the daemon and return `{port, url, token, version, pid}` once it serves.
   * Concurrent calls share one attempt.
   */
  ensureBackend(options = {}) {
    if (!this._inflight) {
      this._options = { ...this._defaults, ...(this._options || {}), ...options };
      this._inflight = this._ensure(this._options).finally(() => {
        this._inflight = null;
      });
    }
    return this._inflight;
  }

  /** Ask the control socket again (starting a daemon only if none answers). */
  refresh() {
    return this.ensureBackend();
  }

  /** `{Authorization: 'Bearer <token>'}` for the backend the control socket last reported. */
  authHeaders() {
    return { Authorization: `Bearer ${this._current().token}` };
  }

  /** `['dbtk.v1', 'dbtk.bearer.<token>']`: the subprotocols for `new WebSocket(url, ...)`. */
  webSocketProtocols() {
    return [SUBPROTOCOL, BEARER_PREFIX + this._current().token];
  }

  /**
   * Register a lease for one window (`name`, e.g. `window-3`; `pid` defaults to this
   * process). Resolves once the daemon has answered; call `lease.release()` when it closes.
   */
  async attach(name, { pid = process.pid } = {}) {
    if (typeof name !== 'string' || !name) {
      throw new TypeError(`attach: expected a window name (non-empty string); got ${typeof name}`);
    }
    const lease = new Lease(this, name, pid);
    let opened;
    for (let attempt = 0, delay = BUSY_RETRY_FIRST_MS; !opened; attempt += 1, delay *= 2) {
      try {
        opened = await lease._open();
      } catch (err) {
        if (isNotRunning(err) && attempt === 0) {
          await this.ensureBackend(); // the daemon went away since: start one, then attach
        } else if (err.code === 'busy' && attempt < BUSY_RETRIES) {
          await sleep(jittered(delay)); // 256 control connections at once: wait for a slot
        } else {
          throw err instanceof BackendError ? err : this._controlFailure(err, this._endpoint(), CONNECT_TIMEOUT_MS);
        }
      }
    }
    this._leases.add(lease);
    lease._adopt(opened.conn, opened.reply);
    return lease;
  }

  /** A WebSocket stream on `streamPath` (e.g. `/ws/logs`) calling `onMessage` per message. */
  openStream(streamPath, onMessage) {
    if (typeof streamPath !== 'string' || !streamPath.startsWith('/')) {
      throw new TypeError(`openStream: expected a path such as '/ws/logs'; got ${streamPath}`);
    }
    if (typeof onMessage !== 'function') throw new TypeError('openStream: onMessage must be a function');
    const { BackendStream } = require('./lib/stream'); // WebSockets load only for streams
    const stream = new BackendStream(this, streamPath, onMessage);
    this._streams.add(stream);
    stream.once('end', () => this._streams.delete(stream));
    stream._run();
    return stream;
  }

  /**
   * Run `fn({url, port, token, headers, protocols})` — an idempotent request such as a GET —
   * and run it again when its connection was reset or refused (a worker restart, a daemon
   * exit), asking the control socket for the backend before each retry. A `Response` with
   * status 503 means state `failed`: it becomes a `daemon_failed` error.
   */
  async retryIdempotent(fn, { timeoutMs = RETRY_TIMEOUT_MS } = {}) {
    const deadline = Date.now() + timeoutMs;
    let backend = await this._usable();
    let delay = RETRY_FIRST_MS;
    for (;;) {
      let result;
      let error = null;
      try {
        result = await fn(this._view(backend));
      } catch (err) {
        error = err;
      }
      if (!error) {
        if (!(result && typeof result === 'object' && result.status === 503)) return result;
        const state = await this._control('status').catch(() => null);
        if (state && state.state === 'failed') throw failedError(state.error);
      } else if (!isConnectionError(error)) {
        throw error;
      } else if (isRefused(error)) {
        this._markStale();
      }
      if (Date.now() + delay > deadline) {
        if (error) throw error;
        return result;
      }
      await sleep(jittered(delay));
      delay = Math.min(delay * 2, RETRY_MAX_MS);
      backend = await this.refresh();
    }
  }

  /** Release every lease and close every stream this manager opened. */
  close() {
    for (const lease of [...this._leases]) lease.release();
    for (const stream of [...this._streams]) stream.close();
  }

  // ----- internals ------------------------------------------------------------------------

  _view(backend) {
    return {
      url: backend.url,
      port: backend.port,
      token: backend.token,
      headers: { Authorization: `Bearer ${backend.token}` },
      protocols: [SUBPROTOCOL, BEARER_PREFIX + backend.token],
    };
  }

  _current() {
    if (!this._backend) {
      throw new BackendError(
        CODES.NOT_READY,
        'DB Toolkit is not connected to its backend yet. Wait for it to start (ensureBackend).',
      );
    }
    if (this._stale) {
      throw new BackendError(
        CODES.NOT_READY,
        'The DB Toolkit backend went away. Reconnecting (ensureBackend) starts it again.',
      );
    }
    return this._backend;
  }

  async _usable() {
    if (this._backend && !this._stale) return this._backend;
    return this.refresh();
  }

  _markStale() {
    if (this._backend) this._stale = true;
  }

  _daemonGone(nonce) {
    // A backend learnt through dbtkctl has no nonce: assume it was that daemon.
    if (this._nonce === null || nonce === this._nonce) this._markStale();
  }

  _relay(event, key, payload) {
    if (this._relayed.get(event) === key) return; // several windows saw the same event
    this._relayed.set(event, key);
    if (event === 'restarted') this._restartsSeen += 1;
    this.emit(event, payload);
  }

  _endpoint() {
    const options = this._options || this._defaults;
    return paths.controlEndpoint({ env: options.env || process.env, home: options.home });
  }

  /** One request on a fresh control connection; resolves its result. */
  async _control(cmd, args = {}) {
    const conn = await ControlConnection.open(this._endpoint().controlSocket, {
      timeoutMs: CONNECT_TIMEOUT_MS,
    });
    try {
      this.stats.controlCalls += 1;
      const reply = await conn.request(cmd, args);
      checkProtocol(reply);
      if (!reply.ok) throw Object.assign(new Error(reply.error.message), { code: reply.error.code });
      return reply.result;
    } finally {
      conn.close();
    }
  }

  async _ensure(options) {
    const timeoutMs = options.timeoutMs || DEFAULT_TIMEOUT_MS;
    const deadline = Date.now() + timeoutMs;
    const endpoint = this._endpoint();
    for (;;) {
      let info = await this._askPort(endpoint, deadline, timeoutMs);
      if (!info) info = await this._start(options, endpoint, deadline, timeoutMs);
      else if (this._shouldOfferUpgrade(options, info)) info = await this._upgrade(options, info, deadline, timeoutMs);
      const health = await this._waitHealth(info.port, deadline, timeoutMs);
      if (health === 'ok') {
        this._backend = Object.freeze({
          port: info.port,
          url: info.url,
          token: info.token,
          version: info.version,
          pid: info.pid,
        });
        this._nonce = info.nonce || null; // null: learnt through dbtkctl, which omits it
        this._stale = false;
        return this._backend;
      }
      if (health === 'failed') {
        const status = await this._control('status').catch(() => null);
        throw failedError(status && status.error);
      }
      // Refused: the daemon that reported this port has exited. Never reuse what it said.
      this._markStale();
      if (Date.now() >= deadline) throw timeoutError('GET /health', timeoutMs);
      await sleep(CLOSED_RETRY_MS);
    }
  }

  /**
   * `hello` and `port` pipelined on one control connection. Resolves the port result (plus
   * the daemon's nonce), or null when no daemon listens.
   */
  async _askPort(endpoint, deadline, timeoutMs) {
    let busyDelay = BUSY_RETRY_FIRST_MS;
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw timeoutError('the control socket', timeoutMs);
      let conn;
      try {
        conn = await ControlConnection.open(endpoint.controlSocket, {
          timeoutMs: Math.min(CONNECT_TIMEOUT_MS, remaining),
        });
      } catch (err) {
        if (isNotRunning(err)) return null;
        throw this._controlFailure(err, endpoint, timeoutMs);
      }
      this.stats.controlCalls += 1;
      try {
        const hello = conn.request('hello', { client: 'electron' }, { timeoutMs: remaining });
        const port = conn.request('port', {}, { timeoutMs: remaining });
        port.catch(() => {}); // awaited below, unless hello already failed
        const helloReply = await hello;
        checkProtocol(helloReply);
        if (!helloReply.ok && helloReply.error.code === 'busy') {
          await sleep(jittered(busyDelay));
          busyDelay *= 2;
          continue;
        }
        const portReply = await port;
        checkProtocol(portReply);
        if (portReply.ok) return { ...portReply.result, nonce: portReply.daemon.nonce };
        if (portReply.error.code === 'not_ready') {
          const status = await conn.call('status').catch(() => null);
          throw failedError(
            (status && status.error) || { reason: portReply.error.message },
            { logFile: status && status.log_file },
          );
        }
        throw new BackendError(
          CODES.DAEMON_FAILED,
          `The DB Toolkit backend answered with an error: ${portReply.error.message}.`,
          { reason: portReply.error.code },
        );
      } catch (err) {
        if (err instanceof BackendError) throw err;
        if (err instanceof ControlError && err.code === 'ECONNRESET') {
          // Closed before answering: stopping, or handing off. Ask again shortly.
          await sleep(CLOSED_RETRY_MS);
          continue;
        }
        throw this._controlFailure(err, endpoint, timeoutMs);
      } finally {
        conn.close();
      }
    }
  }

  _controlFailure(err, endpoint, timeoutMs) {
    if (err.code === 'timeout') return timeoutError('the control socket', timeoutMs, { cause: err });
    if (err.code === 'untrusted_endpoint') {
      return new BackendError(CODES.DAEMON_FAILED, err.message, { cause: err });
    }
    if (err.code === 'EACCES' || err.code === 'EPERM') {
      return new BackendError(
        CODES.DAEMON_FAILED,
        `DB Toolkit may not use the backend's control socket (${endpoint.controlSocket}): it ` +
          'belongs to another user. Run DB Toolkit as that user, or give it its own DBTK_HOME.',
        { cause: err },
      );
    }
    return new BackendError(
      CODES.DAEMON_FAILED,
      `DB Toolkit cannot talk to its backend (${err.message}). Restart DB Toolkit; if it ` +
        'happens again, "dbtkctl status" and "dbtkctl logs" say more.',
      { cause: err },
    );
  }

  /**
   * The app ships backend `backendVersion` and meets a daemon of another version: once per
   * daemon, let dbtkctl decide (DESIGN §2: it hands over to a newer version only, and keeps a
   * newer daemon). The usual warm path stays free of dbtkctl.
   */
  _shouldOfferUpgrade(options, info) {
    if (!options.backendVersion || info.version === options.backendVersion) return false;
    if (this._upgradeOffered.has(info.nonce)) return false;
    this._upgradeOffered.add(info.nonce);
    return true;
  }

  async _upgrade(options, info, deadline, timeoutMs) {
    this.stats.upgrades += 1;
    try {
      return await dbtkctlPort(options, deadline, timeoutMs);
    } catch (err) {
      if (err.code === CODES.VERSION_MISMATCH) throw err;
      return info; // "upgrade failed": the running daemon still serves
    }
  }

  /**
   * No daemon answers: start one with dbtkctl. Windows of other processes starting at the same
   * moment would each run a dbtkctl (a Python process apiece, only for all but one to wait on
   * its spawn lock); a start marker in the runtime dir lets one run it while the others
   * watch the control socket. dbtkctl's lock stays the guarantee; the marker only saves work,
   * so anything odd about it (a stale marker, a runtime dir we may not use) means: run dbtkctl.
   */
  async _start(options, endpoint, deadline, timeoutMs) {
    for (;;) {
      const marker = startMarker.claim(endpoint.runDir);
      if (marker.owned || marker.unusable) {
        this.stats.fallbacks += 1;
        try {
          return await this._runDbtkctl(options, endpoint, deadline, timeoutMs);
        } finally {
          marker.release();
        }
      }
      // Another process is starting the daemon: watch the control socket meanwhile.
      while (startMarker.held(marker)) {
        if (Date.now() >= deadline) throw timeoutError('another window starting the backend', timeoutMs);
        await sleep(START_WATCH_MS);
        const info = await this._askPort(endpoint, deadline, timeoutMs);
        if (info) return info;
      }
      const info = await this._askPort(endpoint, deadline, timeoutMs);
      if (info) return info; // it finished between two looks
    }
  }

  /**
   * dbtkctl answers once the worker is ready, then Python has to exit; the control socket
   * answers the same moment without that tail, so watch it too and take whichever is first.
   * dbtkctl is left to finish on its own (it holds its spawn lock until then).
   */
  async _runDbtkctl(options, endpoint, deadline, timeoutMs) {
    let settled = false;
    const started = dbtkctlPort(options, deadline, timeoutMs).finally(() => {
      settled = true;
    });
    const watched = (async () => {
      while (!settled && Date.now() < deadline) {
        await sleep(START_WATCH_MS);
        if (settled) break;
        const info = await this._askPort(endpoint, deadline, timeoutMs).catch(() => null);
        if (info) return info;
      }
      return started; // dbtkctl's answer, or its error (the reason, the log path)
    })();
    return Promise.race([started, watched]);
  }

  /** Resolves 'ok' (200), 'failed' (503) or 'refused'; retries anything else until the deadline. */
  async _waitHealth(port, deadline, timeoutMs) {
    for (;;) {
      const remaining = deadline - Date.now();
      if (remaining <= 0) throw timeoutError('GET /health', timeoutMs);
      this.stats.healthChecks += 1;
      try {
        const status = await httpStatus(port, '/health', remaining);
        if (status === 200) return 'ok';
        if (status === 503) return 'failed';
      } catch (err) {
        if (isRefused(err)) return 'refused';
      }
      await sleep(HEALTH_POLL_MS);
    }
  }
}

const defaultManager = new BackendManager();

module.exports = {
  ensureBackend: (options) => defaultManager.ensureBackend(options),
  attach: (name, options) => defaultManager.attach(name, options),
  authHeaders: () => defaultManager.authHeaders(),
  webSocketProtocols: () => defaultManager.webSocketProtocols(),
  openStream: (streamPath, onMessage) => defaultManager.openStream(streamPath, onMessage),
  retryIdempotent: (fn, options) => defaultManager.retryIdempotent(fn, options),
  refresh: () => defaultManager.refresh(),
  on: (event, listener) => defaultManager.on(event, listener),
  once: (event, listener) => defaultManager.once(event, listener),
  off: (event, listener) => defaultManager.off(event, listener),
  manager: defaultManager,
  BackendManager,
  BackendError,
  CODES,
  runtimePaths: paths.runtimePaths,
  controlEndpoint: paths.controlEndpoint,
};
Object.defineProperty(module.exports, 'WebSocketClient', {
  enumerable: true,
  get: () => require('./lib/websocket').WebSocketClient,
});
