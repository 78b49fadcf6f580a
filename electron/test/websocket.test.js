'use strict';
// WebSockets: the daemon accepts webSocketProtocols() and refuses the rest before accept;
// the module's own RFC 6455 client handles framing a server may use.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const net = require('node:net');
const test = require('node:test');

const { BackendManager, WebSocketClient } = require('../backend-manager');
const { makeHome, requireDbtkctl } = require('../testing/support');

/** Connect; resolve {opened, protocol, messages, close:{code}, error} once it closes or opens. */
function connect(url, protocols, { headers, untilMessage = false } = {}) {
  return new Promise((resolve) => {
    const ws = new WebSocketClient(url, protocols, { headers });
    const result = { opened: false, protocol: null, messages: [], error: null, ws };
    ws.on('open', (protocol) => {
      result.opened = true;
      result.protocol = protocol;
      if (!untilMessage) resolve(result);
    });
    ws.on('message', (data) => {
      result.messages.push(data);
      if (untilMessage) resolve(result);
    });
    ws.on('error', (err) => {
      result.error = err;
    });
    ws.on('close', (code) => {
      result.close = { code };
      resolve(result);
    });
  });
}

test('a WebSocket with webSocketProtocols() is accepted; without the token it is refused', { timeout: 60000 }, async (t) => {
  const ctx = makeHome(t);
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl(), portRange: '0' });
  t.after(() => manager.close());
  const backend = await manager.ensureBackend();
  ctx.pids.add(backend.pid);
  const url = `ws://127.0.0.1:${backend.port}/ws/logs`;

  const protocols = manager.webSocketProtocols();
  assert.deepEqual(protocols, ['dbtk.v1', `dbtk.bearer.${backend.token}`]);
  const accepted = await connect(url, protocols, { untilMessage: true });
  assert.equal(accepted.error, null);
  assert.equal(accepted.protocol, 'dbtk.v1', 'the server selects dbtk.v1, never the bearer one');
  assert.equal(JSON.parse(accepted.messages[0]).type, 'line');
  accepted.ws.close();

  const noToken = await connect(url, ['dbtk.v1']);
  assert.equal(noToken.opened, false);
  assert.equal(noToken.error.status, 401);
  assert.equal(noToken.close.code, 1006);

  const wrongToken = await connect(url, ['dbtk.v1', 'dbtk.bearer.not-the-token']);
  assert.equal(wrongToken.opened, false);
  assert.equal(wrongToken.error.status, 401);

  const noSubprotocol = await connect(url, [`dbtk.bearer.${backend.token}`]);
  assert.equal(noSubprotocol.error.status, 403);

  const foreign = await connect(url, protocols, { headers: { Origin: 'http://evil.example' } });
  assert.equal(foreign.error.status, 403);
  assert.ok(!foreign.error.body.includes(backend.token), 'a refusal must not echo the token');

  const allowed = await connect(url, protocols, { headers: { Origin: 'app://dbtk' } });
  assert.equal(allowed.opened, true);
  allowed.ws.close();

  // The same header for plain HTTP.
  const ok = await fetch(`${backend.url}/api/v1/status`, { headers: manager.authHeaders() });
  assert.equal(ok.status, 200);
  const refused = await fetch(`${backend.url}/api/v1/status`);
  assert.equal(refused.status, 401);
});

/** A one-connection WebSocket server speaking raw frames, to exercise the client's parser. */
function rawServer(script) {
  return new Promise((resolve) => {
    const server = net.createServer((socket) => {
      let head = '';
      socket.on('data', function onData(chunk) {
        head += chunk.toString('latin1');
        if (!head.includes('\r\n\r\n')) return;
        socket.removeListener('data', onData);
        const key = /sec-websocket-key: (\S+)/i.exec(head)[1];
        const accept = crypto
          .createHash('sha1')
          .update(`${key}258EAFA5-E914-47DA-95CA-C5AB0DC85B11`)
          .digest('base64');
        socket.write(
          'HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n' +
            `Sec-WebSocket-Accept: ${accept}\r\nSec-WebSocket-Protocol: dbtk.v1\r\n\r\n`,
        );
        script(socket);
      });
    });
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

function frame(opcode, payload, { fin = true } = {}) {
  const body = Buffer.from(payload);
  let header;
  if (body.length < 126) {
    header = Buffer.from([(fin ? 0x80 : 0) | opcode, body.length]);
  } else if (body.length < 65536) {
    header = Buffer.alloc(4);
    header[1] = 126;
    header.writeUInt16BE(body.length, 2);
  } else {
    header = Buffer.alloc(10);
    header[1] = 127;
    header.writeBigUInt64BE(BigInt(body.length), 2);
  }
  header[0] = (fin ? 0x80 : 0) | opcode;
  return Buffer.concat([header, body]);
}

/** Unmask the client's frames (enough for control frames and short messages). */
function clientFrames(buffer) {
  const frames = [];
  let offset = 0;
  while (offset + 6 <= buffer.length) {
    const opcode = buffer[offset] & 0x0f;
    const length = buffer[offset + 1] & 0x7f;
    const mask = buffer.subarray(offset + 2, offset + 6);
    const payload = Buffer.from(buffer.subarray(offset + 6, offset + 6 + length));
    for (let i = 0; i < payload.length; i += 1) payload[i] ^= mask[i & 3];
    frames.push({ opcode, payload, masked: (buffer[offset + 1] & 0x80) !== 0 });
    offset += 6 + length;
  }
  return frames;
}

test('the client reassembles fragments, answers pings, reads long frames and the close code', async (t) => {
  const big = 'x'.repeat(70000);
  const received = [];
  const server = await rawServer((socket) => {
    socket.on('data', (chunk) => received.push(chunk));
    socket.write(
      Buffer.concat([
        frame(0x1, 'hel', { fin: false }),
        frame(0x9, 'are you there'),
        frame(0x0, 'lo', { fin: true }),
        frame(0x1, 'm'.repeat(300)),
        frame(0x1, big),
        frame(0x2, Buffer.from([1, 2, 3])),
        frame(0x8, Buffer.concat([Buffer.from([0x03, 0xf4]), Buffer.from('service restart')])),
      ]),
    );
    socket.on('end', () => socket.end());
  });
  t.after(() => server.close());
  const ws = new WebSocketClient(`ws://127.0.0.1:${server.address().port}/x`, ['dbtk.v1', 'dbtk.bearer.t']);
  const messages = [];
  ws.on('message', (data, isBinary) => messages.push({ data, isBinary }));
  const [code, reason] = await new Promise((resolve) => ws.on('close', (...args) => resolve(args)));
  assert.equal(messages[0].data, 'hello');
  assert.equal(messages[1].data.length, 300);
  assert.equal(messages[2].data, big);
  assert.deepEqual([...messages[3].data], [1, 2, 3]);
  assert.equal(messages[3].isBinary, true);
  assert.equal(code, 1012);
  assert.equal(reason, 'service restart');
  const sent = clientFrames(Buffer.concat(received));
  assert.ok(sent.every((f) => f.masked), 'client frames must be masked');
  // A pong echoing the ping, then the close frame echoing the server's code (1012 = 0x03f4).
  assert.deepEqual(
    sent.map((f) => [f.opcode, f.payload.toString('hex')]),
    [
      [0xa, Buffer.from('are you there').toString('hex')],
      [0x8, '03f4'],
    ],
  );
});

test('the client refuses a server that selects a subprotocol it did not offer', async (t) => {
  const server = await rawServer(() => {});
  t.after(() => server.close());
  const ws = new WebSocketClient(`ws://127.0.0.1:${server.address().port}/x`, ['other']);
  const errors = [];
  ws.on('error', (err) => errors.push(err));
  const [code] = await new Promise((resolve) => ws.on('close', (...args) => resolve(args)));
  assert.equal(code, 1006);
  assert.equal(errors[0].code, 'ws_handshake');
});
