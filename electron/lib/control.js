'use strict';
/**
 * A client connection to the daemon's control socket (DESIGN §4, docs/control-protocol.md):
 * newline-delimited JSON over a Unix socket (a named pipe on Windows).
 *
 * `ControlConnection.open(address)` resolves once connected; `request(cmd, args)` sends one
 * line and resolves with the whole reply message (`{id, ok, result|error, daemon}`) — several
 * may be in flight, since the daemon answers in request order. Event lines (`{id, event, ...}`)
 * of a streaming command (`attach`) are emitted as `event`. The caller owns the connection and
 * ends it with `close()`; `close` is emitted once, whichever side closed.
 */

const { EventEmitter } = require('node:events');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

const { versionMismatch } = require('./errors');

const PROTOCOL_VERSION = 1;
// The daemon's own line limit; a longer line from it means we are not talking to dbtkd.
const MAX_LINE_BYTES = 64 * 1024;

/** Errors of the connection itself (not error replies), with a Node-style `code`. */
class ControlError extends Error {
  constructor(code, message) {
    super(message);
    this.name = 'ControlError';
    this.code = code;
  }
}

/** An error reply from the daemon: `code` is the protocol's (`not_ready`, `busy`, ...). */
class DaemonReplyError extends Error {
  constructor(reply) {
    const error = reply.error || {};
    super(`${error.message || 'the daemon refused the request'} (${error.code})`);
    this.name = 'DaemonReplyError';
    this.code = String(error.code);
    this.reply = reply;
  }
}

/** Throw `version_mismatch` for a reply from a daemon speaking another control protocol. */
function checkProtocol(reply) {
  if (reply && reply.daemon && reply.daemon.protocol !== PROTOCOL_VERSION) {
    throw versionMismatch(reply.daemon, PROTOCOL_VERSION);
  }
}

/**
 * Before a byte goes out (POSIX): the socket's directory must be a real directory (lstat, not
 * a symlink) of this user with mode 0700, and the socket a socket of this user. Node has no
 * peer-credential call, so ownership and modes are what it can check; in a shared temp dir
 * another user could otherwise have created the path first and would receive the token.
 * Throws ControlError `untrusted_endpoint`; a missing path is left to connect (ENOENT).
 */
function checkEndpoint(address, platform = process.platform) {
  if (platform === 'win32') return; // a named pipe whose DACL admits only the user
  const me = process.getuid();
  const refuse = (why) =>
    new ControlError(
      'untrusted_endpoint',
      `refusing to use ${address}: ${why}; another user may be impersonating the DB Toolkit ` +
        'backend. Remove it, or give DB Toolkit its own DBTK_HOME.',
    );
  const lstat = (target) => {
    try {
      return fs.lstatSync(target);
    } catch (err) {
      if (err.code === 'ENOENT') return null;
      throw err;
    }
  };
  const dir = lstat(path.dirname(address));
  if (dir === null) return;
  if (!dir.isDirectory()) throw refuse(`${path.dirname(address)} is not a real directory`);
  if (dir.uid !== me || (dir.mode & 0o077) !== 0) {
    throw refuse(
      `${path.dirname(address)} belongs to uid ${dir.uid} with mode ${(dir.mode & 0o777).toString(8)}, ` +
        `expected uid ${me} and 700`,
    );
  }
  const file = lstat(address);
  if (file !== null && (!file.isSocket() || file.uid !== me)) {
    throw refuse(`it is not a socket of uid ${me} (uid ${file.uid})`);
  }
}

/** True for the errors that mean "no daemon listens there" (so one may be started). */
function isNotRunning(err) {
  return Boolean(err) && ['ENOENT', 'ECONNREFUSED', 'ENOTSOCK'].includes(err.code);
}

class ControlConnection extends EventEmitter {
  constructor(socket) {
    super();
    this.socket = socket;
    this.closed = false;
    this.daemon = null; // the `daemon` block of the last reply: {version, protocol, nonce}
    this._ids = 0;
    this._pending = []; // replies come in request order: a FIFO of {id, resolve, reject, timer}
    this._buffer = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk) => this._feed(chunk));
    socket.on('error', (err) => this._end(err));
    socket.on('close', () => this._end(null));
  }

  /**
   * Connect to `address` (a socket path or pipe name). Rejects with the socket error (`code`
   * ENOENT/ECONNREFUSED when no daemon listens) or a ControlError `timeout`.
   */
  static open(address, { timeoutMs = 2000 } = {}) {
    try {
      checkEndpoint(address);
    } catch (err) {
      return Promise.reject(err);
    }
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ path: address });
      const timer = setTimeout(() => {
        socket.destroy();
        reject(new ControlError('timeout', `no answer from the control socket ${address}`));
      }, timeoutMs);
      const failed = (err) => {
        clearTimeout(timer);
        reject(err);
      };
      socket.once('error', failed);
      socket.once('connect', () => {
        clearTimeout(timer);
        socket.removeListener('error', failed);
        resolve(new ControlConnection(socket));
      });
    });
  }

  /** Send `{id, cmd, ...args}`; resolve with the reply message (error replies included). */
  request(cmd, args = {}, { timeoutMs = 35000 } = {}) {
    if (this.closed) {
      return Promise.reject(new ControlError('ECONNRESET', 'the control connection is closed'));
    }
    this._ids += 1;
    const id = this._ids;
    return new Promise((resolve, reject) => {
      const entry = { id, resolve, reject, timer: null };
      entry.timer = setTimeout(() => {
        this._end(new ControlError('timeout', `the daemon did not answer '${cmd}' in time`));
      }, timeoutMs);
      this._pending.push(entry);
      this.socket.write(`${JSON.stringify({ ...args, id, cmd })}\n`);
    });
  }

  /** Like `request`, but resolve with `result` and reject an error reply (DaemonReplyError). */
  async call(cmd, args, options) {
    const reply = await this.request(cmd, args, options);
    if (!reply.ok) throw new DaemonReplyError(reply);
    return reply.result;
  }

  close() {
    if (!this.closed) this.socket.destroy();
    this._end(null);
  }

  _feed(chunk) {
    this._buffer += chunk;
    let newline;
    while ((newline = this._buffer.indexOf('\n')) >= 0) {
      const line = this._buffer.slice(0, newline).replace(/\r$/, '');
      this._buffer = this._buffer.slice(newline + 1);
      this._line(line);
      if (this.closed) return;
    }
    if (this._buffer.length > MAX_LINE_BYTES) {
      this._end(new ControlError('EPROTO', 'the control socket sent a line over 64 KiB'));
    }
  }

  _line(line) {
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      this._end(new ControlError('EPROTO', `the control socket sent something not JSON: ${line.slice(0, 80)}`));
      return;
    }
    if (message === null || typeof message !== 'object') {
      this._end(new ControlError('EPROTO', 'the control socket sent a non-object line'));
      return;
    }
    if (message.daemon) this.daemon = message.daemon;
    if (typeof message.event === 'string') {
      this.emit('event', message);
      return;
    }
    const entry = this._pending.shift();
    if (!entry) return; // a reply nobody waits for (a refusal after close): nothing to do
    clearTimeout(entry.timer);
    entry.resolve(message);
  }

  _end(err) {
    if (this.closed && this._pending.length === 0) return;
    const first = !this.closed;
    this.closed = true;
    this.socket.destroy();
    const failure =
      err || new ControlError('ECONNRESET', 'the daemon closed the control connection');
    for (const entry of this._pending.splice(0)) {
      clearTimeout(entry.timer);
      entry.reject(failure);
    }
    if (first) this.emit('close', err);
  }
}

module.exports = {
  checkProtocol,
  ControlConnection,
  ControlError,
  DaemonReplyError,
  PROTOCOL_VERSION,
  isNotRunning,
  checkEndpoint,
};
