'use strict';
// Many windows, one daemon: cold start, leases, a worker killed under them, leases released.

const assert = require('node:assert/strict');
const test = require('node:test');

const { BackendManager } = require('../backend-manager');
const {
  makeHome,
  pidAlive,
  requireDbtkctl,
  spawnWindow,
  status,
  supervisorsOf,
  waitFor,
} = require('../testing/support');

const WINDOWS = 8;

test('eight windows from cold share one daemon and ride through a worker kill', { timeout: 120000 }, async (t) => {
  const ctx = makeHome(t);
  const windows = [];
  for (let i = 0; i < WINDOWS; i += 1) windows.push(spawnWindow(ctx, `window-${i}`));
  const ready = await Promise.all(windows.map((w) => w.next((m) => m.ready, { what: 'ready' })));
  ready.forEach((r) => ctx.pids.add(r.pid));

  // One daemon, one port, one token, eight leases.
  assert.equal(new Set(ready.map((r) => r.pid)).size, 1, `daemon pids: ${ready.map((r) => r.pid)}`);
  assert.equal(new Set(ready.map((r) => r.port)).size, 1);
  assert.equal(new Set(ready.map((r) => r.token)).size, 1);
  // One window ran dbtkctl; the others watched the control socket meanwhile.
  assert.equal(ready.reduce((sum, r) => sum + r.fallbacks, 0), 1);
  assert.deepEqual(supervisorsOf(ctx.home), [ready[0].pid]);
  const before = await status(ctx.home);
  assert.equal(before.state, 'running');
  assert.deepEqual(
    before.clients.map((c) => c.name).sort(),
    windows.map((w) => w.name).sort(),
  );
  ctx.pids.add(before.worker_pid);

  // An open stream in this process, to see it resume after the kill.
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl() });
  t.after(() => manager.close());
  await manager.ensureBackend();
  const lines = [];
  const opens = [];
  const stream = manager.openStream('/ws/logs', (message) => lines.push(message));
  stream.on('open', (info) => opens.push(info));
  await waitFor(() => opens.length === 1 && lines.length > 0, { what: 'the log stream to open' });

  // kill -9 the worker: every window hears `restarted`, the port does not move.
  const marks = windows.map((w) => w.messages.length);
  process.kill(before.worker_pid, 'SIGKILL');
  const restarted = await Promise.all(
    windows.map((w, i) =>
      w.next((m) => m.event === 'restarted', { from: marks[i], what: 'a restarted event' }),
    ),
  );
  const after = await status(ctx.home);
  ctx.pids.add(after.worker_pid);
  assert.notEqual(after.worker_pid, before.worker_pid);
  for (const event of restarted) {
    assert.equal(event.workerPid, after.worker_pid);
    assert.equal(event.cause, 'signal');
    assert.equal(event.port, ready[0].port);
  }
  assert.equal(after.port, before.port);

  // Each window's next authenticated request succeeds, served by the new worker.
  const answers = await Promise.all(
    windows.map((w) => {
      const from = w.messages.length;
      w.send('status');
      return w.next((m) => m.command === 'status', { from, what: 'a status answer' });
    }),
  );
  for (const answer of answers) {
    assert.equal(answer.failed, undefined, JSON.stringify(answer.failed));
    assert.equal(answer.status, 200);
    assert.equal(answer.body.worker_pid, after.worker_pid);
  }

  // The stream reconnected by itself and got the new worker's snapshot.
  await waitFor(() => opens.length >= 2, { what: 'the log stream to reconnect' });
  assert.equal(opens[1].reconnected, true);
  await waitFor(
    () => lines.some((m) => m.type === 'line' && m.line.includes(`worker ${after.worker_pid} ready`)),
    { what: `a log line about worker ${after.worker_pid} after the reconnect` },
  );

  // Windows leaving release their leases; the daemon stays (no window stops it).
  let clients = [];
  const leasesAre = (names, what) =>
    waitFor(
      async () => {
        clients = (await status(ctx.home)).clients.map((c) => c.name).sort();
        return JSON.stringify(clients) === JSON.stringify(names.sort());
      },
      { what, detail: () => JSON.stringify(clients) },
    );
  windows.slice(0, 3).forEach((w) => w.send('release'));
  await leasesAre(windows.slice(3).map((w) => w.name), 'three released leases to end');
  windows.slice(3, 6).forEach((w) => w.send('exit'));
  windows.slice(6).forEach((w) => w.child.stdin.end());
  await Promise.all(windows.slice(3).map((w) => w.exited));
  await leasesAre([], 'the leases of exited windows to end');
  windows.slice(0, 3).forEach((w) => w.send('exit'));
  await Promise.all(windows.map((w) => w.exited));
  assert.ok(pidAlive(ready[0].pid), 'the daemon must outlive its windows');
  assert.equal((await status(ctx.home)).state, 'running');
});
