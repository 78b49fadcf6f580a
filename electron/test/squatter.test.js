'use strict';
// The warm path asks the control socket only; the token goes only to a port it just reported.

const assert = require('node:assert/strict');
const http = require('node:http');
const test = require('node:test');

const { BackendManager, CODES } = require('../backend-manager');
const { ctl, makeHome, pidAlive, requireDbtkctl, status } = require('../testing/support');

function startDaemon(ctx) {
  const done = ctl(ctx.home, ['port', '--json', '--port-range', '0']);
  assert.equal(done.status, 0, done.stderr);
  const port = JSON.parse(done.stdout);
  ctx.pids.add(port.pid);
  return port;
}

function stopDaemon(ctx, pid) {
  const done = ctl(ctx.home, ['stop']);
  assert.equal(done.status, 0, done.stderr);
  assert.equal(pidAlive(pid), false);
}

const getStatus = async ({ url, headers }) => {
  const response = await fetch(`${url}/api/v1/status`, { headers });
  return { status: response.status, body: await response.json() };
};

test('a warm ensureBackend asks the control socket and never runs dbtkctl', { timeout: 60000 }, async (t) => {
  const ctx = makeHome(t);
  const running = startDaemon(ctx);
  // A dbtkctl that cannot run: any use of the fallback would fail the call.
  const manager = new BackendManager({ home: ctx.home, dbtkctl: '/nonexistent/dbtkctl' });
  t.after(() => manager.close());
  const backend = await manager.ensureBackend();
  assert.deepEqual(
    { port: backend.port, url: backend.url, token: backend.token, pid: backend.pid, version: backend.version },
    { port: running.port, url: running.url, token: running.token, pid: running.pid, version: running.version },
  );
  for (let i = 0; i < 5; i += 1) await manager.ensureBackend();
  assert.equal(manager.stats.fallbacks, 0);
  assert.deepEqual(manager.authHeaders(), { Authorization: `Bearer ${running.token}` });
});

test('after a refused connection the next try asks the control socket (and starts a daemon)', { timeout: 60000 }, async (t) => {
  const ctx = makeHome(t);
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl(), portRange: '0' });
  t.after(() => manager.close());
  const first = await manager.ensureBackend();
  ctx.pids.add(first.pid);
  stopDaemon(ctx, first.pid);
  // No lease told us; the refused connection does.
  const seen = [];
  const answer = await manager.retryIdempotent((backend) => {
    seen.push(backend.port);
    return getStatus(backend);
  });
  ctx.pids.add(answer.body.pid);
  assert.equal(answer.status, 200);
  assert.notEqual(answer.body.pid, first.pid);
  assert.equal(seen[0], first.port);
  assert.equal(seen.at(-1), (await status(ctx.home)).port);
  assert.equal(manager.stats.fallbacks, 2);
});

test('after a daemon exit the cached token never reaches whoever took its port', { timeout: 60000 }, async (t) => {
  const ctx = makeHome(t);
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl(), portRange: '0' });
  t.after(() => manager.close());
  const first = await manager.ensureBackend();
  ctx.pids.add(first.pid);
  const lease = await manager.attach('window-1');
  const stopped = new Promise((resolve) => lease.once('stopped', resolve));
  const reattached = new Promise((resolve) => lease.once('reattached', resolve));
  stopDaemon(ctx, first.pid);
  await stopped;

  // A squatter takes the port the daemon had and records every request.
  const requests = [];
  const squatter = http.createServer((request, response) => {
    requests.push({ url: request.url, authorization: request.headers.authorization });
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end('{"status":"ok"}');
  });
  await new Promise((resolve) => squatter.listen(first.port, '127.0.0.1', resolve));
  t.after(() => squatter.close());

  assert.throws(() => manager.authHeaders(), { code: CODES.NOT_READY });
  assert.throws(() => manager.webSocketProtocols(), { code: CODES.NOT_READY });
  const answer = await manager.retryIdempotent(getStatus);
  ctx.pids.add(answer.body.pid);
  assert.equal(answer.status, 200);
  assert.notEqual(answer.body.pid, first.pid);
  assert.notEqual(manager.backend.port, first.port);
  assert.equal(requests.length, 0, `the squatter got ${JSON.stringify(requests)}`);

  // The window's lease follows the new daemon by itself.
  const event = await reattached;
  assert.equal(event.port, manager.backend.port);
  assert.equal(lease.state, 'attached');
  const clients = (await status(ctx.home)).clients.map((c) => c.name);
  assert.deepEqual(clients, ['window-1']);
});
