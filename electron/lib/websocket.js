'use strict';
/**
 * A small RFC 6455 WebSocket client over `node:http` upgrade, so the module needs no runtime
 * dependency: Node 20 has a global `WebSocket` only behind `--experimental-websocket`, and
 * the browser-style API hides why an upgrade was refused (a 401 means "ask for the token
 * again", a 503 "the daemon is failed", a 403 is a bug). Here a refused upgrade is an `error`
 * with `status`, `headers` and `body`.
 *
 * Events: `open` (protocol), `message` (data: string for text, Buffer for binary), `error`
 * (only emitted when someone listens), and `close` (code, reason, wasClean) exactly once —
 * 1006 when the connection ended without a close frame. No extensions (no compression), no
 * proxies; text must be valid UTF-8. The client owns its socket and destroys it on close.
 */

const crypto = require('node:crypto');
const { EventEmitter } = require('node:events');
const http = require('node:http');

const ACCEPT_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const CONNECTING = 0;
const OPEN = 1;
const CLOSING = 2;
const CLOSED = 3;
// The daemon caps messages at 1 MiB; a stream snapshot (a log backlog) can be several lines in
// one message, so the client accepts more before calling the peer broken.
const DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024;
const HANDSHAKE_TIMEOUT_MS = 10000;
// After sending a close frame, how long to wait for the server's before dropping the socket.
const CLOSE_TIMEOUT_MS = 2000;
const REFUSAL_BODY_MAX = 4096;

function acceptFor(key) {
  return crypto.createHash('sha1').update(key + ACCEPT_GUID).digest('base64');
}

class WebSocketClient extends EventEmitter {
  /**
   * @param {string} url ws://host:port/path
   * @param {string[]} [protocols] offered subprotocols; the server must select one of them
   * @param {{headers?: Record<string,string>, handshakeTimeoutMs?: number,
   *          maxMessageBytes?: number}} [options]
   */
  constructor(url, protocols = [], options = {}) {
    super();
    this.url = url;
    this.protocols = protocols;
    this.protocol = '';
    this.readyState = CONNECTING;
    this._maxMessageBytes = options.maxMessageBytes || DEFAULT_MAX_MESSAGE_BYTES;
    this._socket = null;
    this._buffer = Buffer.alloc(0);
    this._fragments = null; // {opcode, parts, size} while a fragmented message arrives
    this._closeFrame = null; // {code, reason} from the server
    this._closeSent = false;
    this._closeTimer = null;
    this._closedEmitted = false;
    this._connect(options);
  }

  _connect(options) {
    const target = new URL(this.url);
    if (target.protocol !== 'ws:') {
      throw new TypeError(`expected a ws:// URL (loopback only); got ${target.protocol}`);
    }
    const key = crypto.randomBytes(16).toString('base64');
    const headers = {
      Connection: 'Upgrade',
      Upgrade: 'websocket',
      'Sec-WebSocket-Key': key,
      'Sec-WebSocket-Version': '13',
      ...(options.headers || {}),
    };
    if (this.protocols.length) headers['Sec-WebSocket-Protocol'] = this.protocols.join(', ');
    const request = http.request({
      host: target.hostname.replace(/^\[|\]$/g, ''),
      port: target.port || 80,
      path: target.pathname + target.search,
      method: 'GET',
      headers,
      agent: false,
    });
    this._request = request;
    const timer = setTimeout(() => {
      request.destroy(this._error('timeout', `WebSocket handshake with ${this.url} timed out`));
    }, options.handshakeTimeoutMs || HANDSHAKE_TIMEOUT_MS);
    request.on('upgrade', (response, socket, head) => {
      clearTimeout(timer);
      this._upgraded(response, socket, head, key);
    });
    request.on('response', (response) => {
      clearTimeout(timer);
      this._refused(response);
    });
    request.on('error', (err) => {
      clearTimeout(timer);
      this._emitError(err);
      this._finish(1006, '', false);
    });
    request.end();
  }

  _error(code, message, extra = {}) {
    return Object.assign(new Error(message), { code }, extra);
  }

  _refused(response) {
    const chunks = [];
    let size = 0;
    response.on('data', (chunk) => {
      if (size < REFUSAL_BODY_MAX) chunks.push(chunk);
      size += chunk.length;
    });
    const done = () => {
      const body = Buffer.concat(chunks).subarray(0, REFUSAL_BODY_MAX).toString('utf8');
      this._emitError(
        this._error('ws_refused', `WebSocket upgrade refused with HTTP ${response.statusCode}`, {
          status: response.statusCode,
          headers: response.headers,
          body,
        }),
      );
      this._finish(1006, '', false);
    };
    response.on('end', done);
    response.on('error', done);
  }

  _upgraded(response, socket, head, key) {
    this._socket = socket;
    const selected = response.headers['sec-websocket-protocol'] || '';
    let problem = null;
    if (response.headers['sec-websocket-accept'] !== acceptFor(key)) {
      problem = 'the server sent a wrong Sec-WebSocket-Accept';
    } else if (this.protocols.length ? !this.protocols.includes(selected) : selected) {
      problem = `the server selected subprotocol '${selected}', which was not offered`;
    } else if (response.headers['sec-websocket-extensions']) {
      problem = 'the server enabled an extension that was not offered';
    }
    socket.on('close', () => this._finish(1006, '', false));
    socket.on('error', (err) => this._emitError(err));
    if (problem) {
      this._emitError(this._error('ws_handshake', problem));
      socket.destroy();
      return;
    }
    socket.setNoDelay(true);
    socket.setTimeout(0);
    this.protocol = selected;
    this.readyState = OPEN;
    socket.on('data', (chunk) => this._feed(chunk));
    this.emit('open', selected);
    if (head && head.length) this._feed(head);
  }

  /** Send a text (string) or binary (Buffer) message. */
  send(data) {
    if (this.readyState !== OPEN) throw new Error('WebSocket is not open');
    if (typeof data === 'string') this._sendFrame(0x1, Buffer.from(data, 'utf8'));
    else this._sendFrame(0x2, Buffer.from(data));
  }

  /** Start the closing handshake (or abort a connection still being made). */
  close(code = 1000, reason = '') {
    if (this.readyState === CONNECTING) {
      this.readyState = CLOSING;
      this._request.destroy();
      this._finish(1006, '', false);
      return;
    }
    if (this.readyState !== OPEN) return;
    this._sendClose(code, reason);
  }

  /** Drop the connection at once, without a closing handshake. */
  terminate() {
    if (this._socket) this._socket.destroy();
    else if (this._request) this._request.destroy();
  }

  _sendClose(code, reason) {
    if (this._closeSent) return;
    this._closeSent = true;
    this.readyState = CLOSING;
    const reasonBytes = Buffer.from(reason, 'utf8').subarray(0, 123);
    const payload = Buffer.alloc(2 + reasonBytes.length);
    payload.writeUInt16BE(code, 0);
    reasonBytes.copy(payload, 2);
    this._sendFrame(0x8, payload);
    this._closeTimer = setTimeout(() => this._socket && this._socket.destroy(), CLOSE_TIMEOUT_MS);
  }

  _sendFrame(opcode, payload) {
    const socket = this._socket;
    if (!socket || socket.destroyed) return;
    let header;
    if (payload.length < 126) {
      header = Buffer.alloc(2);
      header[1] = 0x80 | payload.length;
    } else if (payload.length < 65536) {
      header = Buffer.alloc(4);
      header[1] = 0x80 | 126;
      header.writeUInt16BE(payload.length, 2);
    } else {
      header = Buffer.alloc(10);
      header[1] = 0x80 | 127;
      header.writeBigUInt64BE(BigInt(payload.length), 2);
    }
    header[0] = 0x80 | opcode;
    const mask = crypto.randomBytes(4);
    const masked = Buffer.alloc(payload.length);
    for (let i = 0; i < payload.length; i += 1) masked[i] = payload[i] ^ mask[i & 3];
    socket.write(Buffer.concat([header, mask, masked]));
  }

  _feed(chunk) {
    this._buffer = this._buffer.length ? Buffer.concat([this._buffer, chunk]) : chunk;
    while (this.readyState !== CLOSED && this._nextFrame()) {
      // each call consumes one complete frame
    }
  }

  /** Parse and handle one frame from the buffer; false when more bytes are needed. */
  _nextFrame() {
    const buffer = this._buffer;
    if (buffer.length < 2) return false;
    const fin = (buffer[0] & 0x80) !== 0;
    const opcode = buffer[0] & 0x0f;
    let length = buffer[1] & 0x7f;
    let offset = 2;
    if (buffer[0] & 0x70) return this._fail(1002, 'reserved bits set without an extension');
    if (buffer[1] & 0x80) return this._fail(1002, 'the server masked a frame');
    if (length === 126) {
      if (buffer.length < 4) return false;
      length = buffer.readUInt16BE(2);
      offset = 4;
    } else if (length === 127) {
      if (buffer.length < 10) return false;
      const big = buffer.readBigUInt64BE(2);
      if (big > BigInt(this._maxMessageBytes)) return this._fail(1009, 'message too big');
      length = Number(big);
      offset = 10;
    }
    if (length > this._maxMessageBytes) return this._fail(1009, 'message too big');
    if (buffer.length < offset + length) return false;
    const payload = buffer.subarray(offset, offset + length);
    this._buffer = buffer.subarray(offset + length);
    this._frame(fin, opcode, payload);
    return true;
  }

  _frame(fin, opcode, payload) {
    if (opcode >= 0x8) {
      if (!fin || payload.length > 125) {
        this._fail(1002, 'a fragmented or oversized control frame');
        return;
      }
      if (opcode === 0x8) this._onClose(payload);
      else if (opcode === 0x9) this._sendFrame(0xa, payload);
      else if (opcode !== 0xa) this._fail(1002, `unknown control opcode ${opcode}`);
      return;
    }
    if (opcode === 0x1 || opcode === 0x2) {
      if (this._fragments) {
        this._fail(1002, 'a new message began inside a fragmented one');
        return;
      }
      if (fin) {
        this._deliver(opcode, payload);
        return;
      }
      this._fragments = { opcode, parts: [Buffer.from(payload)], size: payload.length };
      return;
    }
    if (opcode === 0x0 && this._fragments) {
      const fragments = this._fragments;
      fragments.parts.push(Buffer.from(payload));
      fragments.size += payload.length;
      if (fragments.size > this._maxMessageBytes) {
        this._fail(1009, 'message too big');
        return;
      }
      if (fin) {
        this._fragments = null;
        this._deliver(fragments.opcode, Buffer.concat(fragments.parts, fragments.size));
      }
      return;
    }
    this._fail(1002, `unexpected opcode ${opcode}`);
  }

  _deliver(opcode, payload) {
    if (this.readyState !== OPEN) return; // data after our close frame is dropped
    if (opcode === 0x2) {
      this.emit('message', Buffer.from(payload), true);
      return;
    }
    let text;
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(payload);
    } catch {
      this._fail(1007, 'a text message that is not UTF-8');
      return;
    }
    this.emit('message', text, false);
  }

  _onClose(payload) {
    let code = 1005;
    let reason = '';
    if (payload.length >= 2) {
      code = payload.readUInt16BE(0);
      reason = payload.subarray(2).toString('utf8');
    } else if (payload.length === 1) {
      this._fail(1002, 'a one-byte close frame');
      return;
    }
    this._closeFrame = { code, reason };
    if (!this._closeSent) this._sendClose(code === 1005 ? 1000 : code, '');
    // The server closes TCP after the handshake; ending our side lets it do so at once.
    this._socket.end();
  }

  _fail(code, reason) {
    this._emitError(this._error('ws_protocol', `WebSocket protocol error: ${reason}`));
    if (this.readyState === OPEN) this._sendClose(code, reason);
    this._closeFrame = this._closeFrame || { code, reason };
    if (this._socket) this._socket.destroy();
    return false;
  }

  _emitError(err) {
    if (this.listenerCount('error') > 0) this.emit('error', err);
  }

  _finish(code, reason, wasClean) {
    if (this._closedEmitted) return;
    this._closedEmitted = true;
    this.readyState = CLOSED;
    clearTimeout(this._closeTimer);
    const frame = this._closeFrame;
    if (frame) this.emit('close', frame.code, frame.reason, this._closeSent);
    else this.emit('close', code, reason, wasClean);
  }
}

WebSocketClient.CONNECTING = CONNECTING;
WebSocketClient.OPEN = OPEN;
WebSocketClient.CLOSING = CLOSING;
WebSocketClient.CLOSED = CLOSED;

module.exports = { WebSocketClient };
