'use strict';
// Every error code of issue 5, each with a message fit for a dialog, from real failures.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');
const test = require('node:test');

const { BackendError, BackendManager, CODES } = require('../backend-manager');
const {
  controlSocketOf,
  makeHome,
  pidsNaming,
  requireDbtkctl,
  supervisorsOf,
  waitFor,
} = require('../testing/support');

function assertDialogReady(err, code) {
  assert.ok(err instanceof BackendError, `expected a BackendError, got ${err && err.stack}`);
  assert.equal(err.code, code);
  assert.ok(err.title.length > 0);
  assert.match(err.message, /^[A-Z].*\.$/s, `not a sentence: ${err.message}`);
  assert.doesNotMatch(err.message, /Traceback|undefined|\[object/);
  return true;
}

/** A control socket at the home's path that answers like `reply(request)` (or not at all). */
function fakeControl(t, home, reply) {
  fs.mkdirSync(path.join(home, 'run'), { recursive: true, mode: 0o700 });
  const server = net.createServer((socket) => {
    let buffer = '';
    socket.on('data', (chunk) => {
      buffer += chunk;
      let newline;
      while ((newline = buffer.indexOf('\n')) >= 0) {
        const request = JSON.parse(buffer.slice(0, newline));
        buffer = buffer.slice(newline + 1);
        const answer = reply(request);
        if (answer) socket.write(`${JSON.stringify(answer)}\n`);
      }
    });
    socket.on('error', () => {});
  });
  t.after(() => server.close());
  return new Promise((resolve) => server.listen(controlSocketOf(home), () => resolve(server)));
}

test('before ensureBackend, authHeaders refuses with not_ready', () => {
  const manager = new BackendManager();
  assert.throws(() => manager.authHeaders(), (err) => assertDialogReady(err, CODES.NOT_READY));
  assert.throws(() => manager.webSocketProtocols(), { code: CODES.NOT_READY });
});

test('a missing dbtkctl is executable_missing', async (t) => {
  const ctx = makeHome(t);
  const missing = path.join(ctx.home, 'no-such-dir', 'dbtkctl');
  const manager = new BackendManager({ home: ctx.home, dbtkctl: missing });
  await assert.rejects(manager.ensureBackend(), (err) => {
    assertDialogReady(err, CODES.EXECUTABLE_MISSING);
    assert.ok(err.message.includes(missing));
    return true;
  });
});

test('a port range that is all taken is port_range_exhausted', { timeout: 60000 }, async (t) => {
  const ctx = makeHome(t);
  const squatter = net.createServer();
  await new Promise((resolve) => squatter.listen(0, '127.0.0.1', resolve));
  t.after(() => squatter.close());
  const port = squatter.address().port;
  const manager = new BackendManager({
    home: ctx.home,
    dbtkctl: requireDbtkctl(),
    portRange: `${port}-${port}`,
  });
  await assert.rejects(manager.ensureBackend(), (err) => {
    assertDialogReady(err, CODES.PORT_RANGE_EXHAUSTED);
    assert.equal(err.portRange, `${port}-${port}`);
    assert.ok(err.message.includes(`${port}-${port}`));
    assert.match(err.message, /DBTK_PORT_RANGE/);
    return true;
  });
  assert.deepEqual(supervisorsOf(ctx.home), [], 'no daemon may stay behind');
});

test('a daemon that refuses its dbtkd.toml says why, in its own words', { timeout: 60000 }, async (t) => {
  const ctx = makeHome(t);
  fs.mkdirSync(path.join(ctx.home, 'config'), { recursive: true });
  fs.writeFileSync(path.join(ctx.home, 'config', 'dbtkd.toml'), 'log_levle = "debug"\n');
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl(), portRange: '0' });
  t.after(() => manager.close());
  await assert.rejects(manager.ensureBackend(), (err) => {
    assertDialogReady(err, CODES.DAEMON_FAILED);
    // On 4ca2263: "dbtkd exited with status 2 while starting" and an empty log, nothing more.
    assert.match(err.message, /dbtkd\.toml: unknown key 'log_levle'; known keys: /);
    return true;
  });
  assert.deepEqual(supervisorsOf(ctx.home), [], 'no daemon may stay behind');
});

test('a worker that cannot start is daemon_failed, and a lease hears `failed`', { timeout: 90000 }, async (t) => {
  const ctx = makeHome(t);
  const env = { ...process.env, DBTK_TEST_FAULTS: 'crash_on_start' };
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl(), portRange: '0', env });
  t.after(() => manager.close());
  await assert.rejects(manager.ensureBackend(), (err) => {
    assertDialogReady(err, CODES.DAEMON_FAILED);
    assert.match(err.message, /worker/);
    return true;
  });
  pidsNaming(ctx.home).forEach((pid) => ctx.pids.add(pid));
  // The failed daemon keeps its control socket; a window attaching now is told at once.
  const lease = await manager.attach('window-late');
  const failure = await new Promise((resolve) => lease.once('failed', resolve));
  assertDialogReady(failure, CODES.DAEMON_FAILED);
  assert.match(failure.detail, /crash_on_start/);
});

test('a daemon turning failed under an attached window emits `failed`', { timeout: 90000 }, async (t) => {
  const ctx = makeHome(t);
  const dbtkd = path.join(path.dirname(requireDbtkctl()), 'dbtkd');
  const daemon = spawn(dbtkd, ['--home', ctx.home, '--port-range', '0'], {
    env: { ...process.env, DBTK_TEST_FAULTS: 'crash_on_start' },
    stdio: 'ignore',
  });
  ctx.children.add(daemon);
  ctx.pids.add(daemon.pid);
  await waitFor(() => fs.existsSync(controlSocketOf(ctx.home)), { what: 'the control socket' });
  const manager = new BackendManager({ home: ctx.home, dbtkctl: '/nonexistent/dbtkctl' });
  t.after(() => manager.close());
  const lease = await manager.attach('window-early');
  const managerFailed = new Promise((resolve) => manager.once('failed', resolve));
  const failure = await new Promise((resolve) => lease.once('failed', resolve));
  assertDialogReady(failure, CODES.DAEMON_FAILED);
  assert.equal(await managerFailed, failure);
});

test('a daemon speaking another protocol is version_mismatch, without running dbtkctl', async (t) => {
  const ctx = makeHome(t);
  await fakeControl(t, ctx.home, (request) => ({
    id: request.id,
    ok: true,
    result: { version: '9.0.0', protocol: 2, pid: 1, state: 'running' },
    daemon: { version: '9.0.0', protocol: 2, nonce: 'n' },
  }));
  const manager = new BackendManager({ home: ctx.home, dbtkctl: '/nonexistent/dbtkctl' });
  await assert.rejects(manager.ensureBackend(), (err) => {
    assertDialogReady(err, CODES.VERSION_MISMATCH);
    assert.match(err.message, /9\.0\.0/);
    return true;
  });
  assert.equal(manager.stats.fallbacks, 0);
});

test('a daemon that never answers is timeout', async (t) => {
  const ctx = makeHome(t);
  await fakeControl(t, ctx.home, () => null);
  const manager = new BackendManager({ home: ctx.home, dbtkctl: '/nonexistent/dbtkctl', timeoutMs: 300 });
  const started = Date.now();
  await assert.rejects(manager.ensureBackend(), (err) => assertDialogReady(err, CODES.TIMEOUT));
  assert.ok(Date.now() - started < 5000);
});
