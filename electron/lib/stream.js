'use strict';
/**
 * A WebSocket stream of the daemon (`/ws/logs`, `/ws/backups`, ...) that survives worker
 * restarts and daemon exits. Every (re)connect first asks the control socket for port and
 * token (the squatter rule); every stream sends a snapshot on connect, so a client that
 * reconnects misses nothing. The stream owns its socket; `close()` ends it for good.
 */

const { EventEmitter } = require('node:events');

const { BackendError, CODES } = require('./errors');
const { isRefused, jittered } = require('./retry');
const { WebSocketClient } = require('./websocket');

const SECONDS = 1000;
const STREAM_BACKOFF_FIRST_MS = 100;
const STREAM_BACKOFF_MAX_MS = 5 * SECONDS;
const SUBPROTOCOL = 'dbtk.v1';
const BEARER_PREFIX = 'dbtk.bearer.';

/**
 * A WebSocket stream that reconnects with backoff (100 ms doubling to 5 s, ±20 %) after a
 * worker restart or a daemon exit, asking the control socket for port and token before each
 * reconnect. Every stream sends a snapshot on connect, so nothing is missed. Emits `open`
 * ({reconnected}), `close` ({code, reason}), `reconnecting` ({attempt, delayMs}), `error`
 * (only when listened to; a 403/404 refusal ends the stream), `end`.
 */
class BackendStream extends EventEmitter {
  constructor(manager, streamPath, onMessage) {
    super();
    this.manager = manager;
    this.path = streamPath;
    this.onMessage = onMessage;
    this.closed = false;
    this.connects = 0;
    this.lastError = null;
    this._ws = null;
    this._wake = null;
  }

  async _run() {
    let delay = STREAM_BACKOFF_FIRST_MS;
    let attempt = 0;
    let fresh = true;
    while (!this.closed) {
      let outcome;
      try {
        const backend = fresh ? await this.manager._usable() : await this.manager.refresh();
        fresh = false;
        if (this.closed) break;
        outcome = await this._connectOnce(backend);
      } catch (err) {
        outcome = { opened: false, error: err };
      }
      if (this.closed) break;
      const { opened, error } = outcome;
      if (error) {
        this.lastError = error;
        if (isRefused(error)) this.manager._markStale();
        if (error.status === 403 || error.status === 404 || error.code === CODES.VERSION_MISMATCH) {
          this._error(error);
          break; // a refusal retrying cannot fix (bad origin, unknown path, wrong version)
        }
        if (error instanceof BackendError || error.status !== undefined) this._error(error);
      }
      if (opened) {
        delay = STREAM_BACKOFF_FIRST_MS;
        attempt = 0;
      }
      attempt += 1;
      const wait = error && error.status === 401 && attempt === 1 ? 0 : jittered(delay);
      delay = Math.min(delay * 2, STREAM_BACKOFF_MAX_MS);
      this.emit('reconnecting', { attempt, delayMs: wait });
      await new Promise((resolve) => {
        this._wake = resolve;
        setTimeout(resolve, wait);
      });
    }
    this.closed = true;
    this.emit('end');
  }

  _connectOnce(backend) {
    const url = backend.url.replace(/^http:/, 'ws:') + this.path;
    const ws = new WebSocketClient(url, [SUBPROTOCOL, BEARER_PREFIX + backend.token]);
    this._ws = ws;
    return new Promise((resolve) => {
      let opened = false;
      let error = null;
      ws.on('open', () => {
        opened = true;
        this.connects += 1;
        this.emit('open', { reconnected: this.connects > 1 });
      });
      ws.on('message', (data, isBinary) => this._deliver(data, isBinary));
      ws.on('error', (err) => {
        error = error || err;
      });
      ws.on('close', (code, reason) => {
        this._ws = null;
        if (opened) this.emit('close', { code, reason });
        resolve({ opened, error: opened ? null : error });
      });
    });
  }

  _deliver(data, isBinary) {
    if (this.closed) return;
    if (isBinary) {
      this.onMessage(data);
      return;
    }
    let value = data;
    try {
      value = JSON.parse(data);
    } catch {
      // not JSON: hand over the text
    }
    this.onMessage(value);
  }

  _error(err) {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  /** Stop the stream (closing the socket with 1000); no reconnect follows. */
  close() {
    if (this.closed) return;
    this.closed = true;
    if (this._ws) this._ws.close(1000, 'closed by the client');
    if (this._wake) this._wake();
  }
}

module.exports = { BackendStream };
