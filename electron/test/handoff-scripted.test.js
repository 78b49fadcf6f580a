'use strict';
// The handoff corner the real daemon does not produce on demand (handoff.test.js covers the
// real one): a daemon that announces `handoff {version}` and still answers re-attaches for a
// while. A lease must not count that as the upgrade; it waits for the announced version on
// the same socket path and port, with token and nonce carried over. A scripted control
// endpoint that speaks protocol v1 plays both daemons.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const path = require('node:path');
const test = require('node:test');

const { BackendManager } = require('../backend-manager');
const { controlSocketOf, makeHome, waitFor } = require('../testing/support');

/** A control endpoint answering hello/port/status/attach as daemon `version` with `nonce`. */
class ScriptedDaemon {
  constructor({ socketPath, port, version, nonce, token }) {
    Object.assign(this, { socketPath, port, version, nonce, token });
    this.leases = new Set();
    this.attaches = 0;
    this.server = net.createServer((socket) => this._serve(socket));
  }

  listen() {
    return new Promise((resolve) => this.server.listen(this.socketPath, resolve));
  }

  _serve(socket) {
    let buffer = '';
    socket.on('error', () => {});
    socket.on('close', () => this.leases.delete(socket));
    socket.on('data', (chunk) => {
      buffer += chunk;
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const request = JSON.parse(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
        socket.write(`${JSON.stringify(this._reply(request, socket))}\n`);
      }
    });
  }

  _reply(request, socket) {
    const daemon = { version: this.version, protocol: 1, nonce: this.nonce };
    const url = `http://127.0.0.1:${this.port}`;
    const results = {
      hello: { version: this.version, protocol: 1, pid: process.pid, state: 'running' },
      port: { port: this.port, url, token: this.token, pid: process.pid, version: this.version },
      status: { state: 'running', error: null, pid: process.pid, port: this.port, url },
      attach: { lease: this.leases.size + 1, state: 'running', port: this.port },
    };
    if (request.cmd === 'attach') {
      this.attaches += 1;
      this.leases.add(socket);
      socket.leaseId = request.id;
    }
    return { id: request.id, ok: true, result: results[request.cmd], daemon };
  }

  announce(event, fields) {
    for (const socket of this.leases) {
      socket.write(`${JSON.stringify({ id: socket.leaseId, event, ...fields })}\n`);
    }
  }

  /** Stop accepting and drop every connection, leaving the socket file to the successor. */
  close() {
    this.server.close();
    for (const socket of this.leases) socket.destroy();
  }
}

test('a handoff to a newer daemon re-attaches the lease and emits `upgraded`', { timeout: 30000 }, async (t) => {
  const ctx = makeHome(t);
  fs.mkdirSync(path.join(ctx.home, 'run'), { recursive: true, mode: 0o700 });
  const health = http.createServer((request, response) => {
    response.writeHead(request.url === '/health' ? 200 : 404).end('{"status":"ok"}');
  });
  await new Promise((resolve) => health.listen(0, '127.0.0.1', resolve));
  t.after(() => health.close());
  const port = health.address().port;
  const socketPath = controlSocketOf(ctx.home);
  // A handoff carries token and nonce over; only the version differs.
  const old = new ScriptedDaemon({ socketPath, port, version: '0.1.0', nonce: 'kept', token: 'kept' });
  await old.listen();
  t.after(() => old.close());

  const manager = new BackendManager({ home: ctx.home, dbtkctl: '/nonexistent/dbtkctl' });
  t.after(() => manager.close());
  await manager.ensureBackend();
  const lease = await manager.attach('window-1');
  const upgrading = new Promise((resolve) => lease.once('upgrading', resolve));
  const upgraded = new Promise((resolve) => lease.once('upgraded', resolve));
  const managerUpgraded = new Promise((resolve) => manager.once('upgraded', resolve));
  let stopped = false;
  lease.on('stopped', () => {
    stopped = true;
  });

  // The old daemon announces the handoff, then goes on accepting for a while: re-attaching
  // to it must not count as the upgrade.
  old.announce('handoff', { version: '0.2.0' });
  assert.deepEqual(await upgrading, { version: '0.2.0' });
  for (const socket of old.leases) socket.destroy();
  await waitFor(() => old.attaches >= 3, { what: 'the lease to try the old daemon again' });
  assert.equal(lease.state, 'reattaching');

  // The new daemon takes over the socket path (the real one inherits the listener).
  old.close();
  fs.rmSync(socketPath, { force: true });
  const successor = new ScriptedDaemon({ socketPath, port, version: '0.2.0', nonce: 'kept', token: 'kept' });
  await successor.listen();
  t.after(() => successor.close());

  const event = await upgraded;
  assert.deepEqual(event, {
    version: '0.2.0',
    previousVersion: '0.1.0',
    port,
    url: `http://127.0.0.1:${port}`,
  });
  assert.deepEqual(await managerUpgraded, event);
  assert.equal(lease.daemon.version, '0.2.0');
  assert.equal(manager.backend.version, '0.2.0');
  assert.equal(stopped, false, 'a handoff is not a stop');
  assert.equal(successor.leases.size, 1);
});
