'use strict';
// A real handoff (DESIGN §2): a window attached to dbtkd 1.0.0 hears `upgraded` when an app
// shipping 1.1.0 starts, keeps its port and token, and its stream resumes on the new daemon.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');

const { BackendManager } = require('../backend-manager');
const { installCopy } = require('../testing/installs');
const { makeHome, pidAlive, requireDbtkctl, status, waitFor } = require('../testing/support');

test('an app shipping a newer backend upgrades the daemon; open windows follow it', { timeout: 120000 }, async (t) => {
  const base = fs.mkdtempSync(path.join(os.tmpdir(), 'dbtk-installs-'));
  t.after(() => fs.rmSync(base, { recursive: true, force: true }));
  const old = installCopy(base, '1.0.0', requireDbtkctl());
  const next = installCopy(base, '1.1.0', requireDbtkctl());
  const ctx = makeHome(t);

  // A window of the installed app (1.0.0).
  const window = new BackendManager({ home: ctx.home, dbtkctl: path.join(old, 'dbtkctl'), portRange: '0' });
  t.after(() => window.close());
  const before = await window.ensureBackend();
  ctx.pids.add(before.pid);
  assert.equal(before.version, '1.0.0');
  const lease = await window.attach('window-1');
  const upgraded = new Promise((resolve) => lease.once('upgraded', resolve));
  let stopped = false;
  lease.on('stopped', () => {
    stopped = true;
  });
  const opens = [];
  const stream = window.openStream('/ws/logs', () => {});
  stream.on('open', (info) => opens.push(info));
  await waitFor(() => opens.length === 1, { what: 'the stream to open' });

  // The updated app (1.1.0) starts: its first ensureBackend hands the daemon over.
  const updated = new BackendManager({
    home: ctx.home,
    dbtkctl: path.join(next, 'dbtkctl'),
    backendVersion: '1.1.0',
  });
  t.after(() => updated.close());
  const after = await updated.ensureBackend();
  ctx.pids.add(after.pid);
  assert.equal(after.version, '1.1.0');
  assert.equal(updated.stats.upgrades, 1);
  assert.equal(after.port, before.port);
  assert.equal(after.token, before.token);
  assert.notEqual(after.pid, before.pid);

  const event = await upgraded;
  assert.deepEqual(event, {
    version: '1.1.0',
    previousVersion: '1.0.0',
    port: before.port,
    url: before.url,
  });
  assert.equal(stopped, false, 'a handoff is not a stop');
  assert.equal(window.backend.version, '1.1.0');
  await waitFor(() => !pidAlive(before.pid), { timeoutMs: 15000, what: 'the old daemon to exit' });
  const clients = (await status(ctx.home)).clients;
  assert.deepEqual(
    clients.map((c) => [c.name, c.pid, Boolean(c.carried)]),
    [['window-1', process.pid, false]],
  );
  await waitFor(() => opens.length >= 2, { what: 'the stream to reopen on the new daemon' });
  const answer = await window.retryIdempotent(async ({ url, headers }) => {
    const response = await fetch(`${url}/api/v1/health`, { headers });
    return response.json();
  });
  assert.equal(answer.version, '1.1.0');

  // A second look does not ask dbtkctl again.
  await updated.ensureBackend();
  assert.equal(updated.stats.upgrades, 1);
});
