'use strict';
/**
 * A window's lease on the daemon: one open control connection that sent `attach` (DESIGN §2).
 * The daemon counts it as a client until the connection closes, so idle exit waits for it;
 * it never stops the daemon. Its event lines become the lease's events, and the manager
 * relays each daemon event once to its own listeners. The lease owns its connection.
 */

const { EventEmitter } = require('node:events');

const { ControlConnection, checkProtocol } = require('./control');
const { BackendError, CODES, failedError } = require('./errors');
const { jittered, sleep } = require('./retry');

const SECONDS = 1000;
const CONNECT_TIMEOUT_MS = 2 * SECONDS;
const REATTACH_FIRST_MS = 50;
const REATTACH_MAX_MS = 2 * SECONDS;
// After a handoff the new daemon keeps carried leases this long (DESIGN §2).
const HANDOFF_GRACE_MS = 10 * SECONDS;

/**
 * One window's lease on the daemon: the open `attach` connection. Emits `restarted`
 * ({workerPid, cause, port}), `failed` (a BackendError, code daemon_failed), `state`
 * ({state}), `upgraded` ({version, previousVersion, port, url}) after a handoff, `stopped`
 * ({reason, version}) when the daemon went away without one, and `reattached` (like
 * `upgraded`) when a daemon is back after `stopped`. Until released it re-attaches by itself.
 */
class Lease extends EventEmitter {
  constructor(manager, name, pid) {
    super();
    this.manager = manager;
    this.name = name;
    this.pid = pid;
    this.id = null;
    this.state = 'attaching'; // attaching | attached | reattaching | released
    this.daemon = null; // {version, protocol, nonce} of the daemon holding the lease
    this.daemonState = null;
    this.lastKeepalive = null;
    this._conn = null;
    this._handoff = null;
  }

  /** Open a connection and send `attach`; the caller adopts or closes what it returns. */
  async _open() {
    const endpoint = this.manager._endpoint();
    const conn = await ControlConnection.open(endpoint.controlSocket, {
      timeoutMs: CONNECT_TIMEOUT_MS,
    });
    try {
      const reply = await conn.request('attach', { name: this.name, pid: this.pid });
      checkProtocol(reply);
      if (!reply.ok && reply.error.code === 'busy') {
        throw Object.assign(new Error(reply.error.message), { code: 'busy' });
      }
      if (!reply.ok) {
        throw new BackendError(
          CODES.DAEMON_FAILED,
          `The DB Toolkit backend refused this window: ${reply.error.message}.`,
          { reason: reply.error.code },
        );
      }
      return { conn, reply };
    } catch (err) {
      conn.close();
      throw err;
    }
  }

  _adopt(conn, reply) {
    this._conn = conn;
    this.id = reply.result.lease;
    this.daemon = reply.daemon;
    this.daemonState = reply.result.state;
    this.state = 'attached';
    conn.on('event', (message) => this._onEvent(message));
    conn.on('close', () => this._onClose(conn));
    if (reply.result.state === 'failed') this._reportFailedState();
  }

  async _reportFailedState() {
    let error = null;
    try {
      error = (await this.manager._control('status')).error;
    } catch {
      // the daemon's reason is a nicety; the failure itself is known
    }
    if (this.state === 'attached') this._failed(error);
  }

  _failed(error) {
    const err = failedError(error);
    this.emit('failed', err);
    this.manager._relay('failed', `${this.daemon.nonce}:${this.manager._restartsSeen}`, err);
  }

  _onEvent(message) {
    switch (message.event) {
      case 'worker_restarted': {
        this.daemonState = 'running';
        const backend = this.manager._backend;
        const payload = {
          workerPid: message.worker_pid,
          cause: message.cause,
          port: backend ? backend.port : null,
        };
        this.emit('restarted', payload);
        this.manager._relay('restarted', `${this.daemon.nonce}:${message.worker_pid}`, payload);
        break;
      }
      case 'state':
        this.daemonState = message.state;
        if (message.state === 'failed') this._failed(message.error);
        else this.emit('state', { state: message.state });
        break;
      case 'handoff':
        this._handoff = { version: message.version };
        this.emit('upgrading', { version: message.version });
        this.manager._relay('upgrading', `${this.daemon.nonce}:${message.version}`, {
          version: message.version,
        });
        break;
      case 'keepalive':
        this.lastKeepalive = Date.now();
        break;
      default:
        break; // events a newer daemon adds are not ours to handle
    }
  }

  _onClose(conn) {
    if (this.state === 'released' || conn !== this._conn) return;
    const previous = this.daemon;
    const handoff = this._handoff;
    this._handoff = null;
    this._conn = null;
    this.state = 'reattaching';
    this.manager._daemonGone(previous.nonce);
    if (!handoff) this._stopped(previous);
    this._reattach(previous, handoff).catch(() => {});
  }

  _stopped(previous) {
    const payload = { reason: 'the DB Toolkit backend stopped', version: previous.version };
    this.emit('stopped', payload);
    this.manager._relay('stopped', previous.nonce, payload);
  }

  async _reattach(previous, handoff) {
    let delay = REATTACH_FIRST_MS;
    const graceEnds = Date.now() + HANDOFF_GRACE_MS;
    while (this.state === 'reattaching') {
      await sleep(jittered(delay));
      delay = Math.min(delay * 2, REATTACH_MAX_MS);
      if (this.state !== 'reattaching') return;
      if (handoff && Date.now() > graceEnds) {
        handoff = null; // no new daemon took over in time: the old one is simply gone
        this._stopped(previous);
      }
      let opened;
      try {
        opened = await this._open();
      } catch {
        continue; // nobody listens yet (or the old daemon is draining)
      }
      if (this.state !== 'reattaching') {
        opened.conn.close();
        return;
      }
      const { conn, reply } = opened;
      // A handoff carries token and nonce over: the version tells the two daemons apart.
      const sameVersion = reply.daemon.version === previous.version;
      if (handoff && sameVersion && handoff.version !== previous.version) {
        conn.close(); // the old daemon still answered: the new one is not serving yet
        continue;
      }
      this._adopt(conn, reply);
      let backend = null;
      try {
        backend = await this.manager.refresh(); // squatter rule: ask for the port again
      } catch {
        // the lease stands; the next request asks the control socket again
      }
      const payload = {
        version: reply.daemon.version,
        previousVersion: previous.version,
        port: backend ? backend.port : reply.result.port,
        url: backend ? backend.url : null,
      };
      const event = handoff || !sameVersion ? 'upgraded' : 'reattached';
      this.emit(event, payload);
      this.manager._relay(event, `${reply.daemon.nonce}:${reply.daemon.version}`, payload);
      return;
    }
  }

  /** End the lease (the window closed). Never stops the daemon. */
  release() {
    if (this.state === 'released') return;
    this.state = 'released';
    this.manager._leases.delete(this);
    if (this._conn) this._conn.close();
    this._conn = null;
    this.emit('released');
  }
}

module.exports = { Lease };
