'use strict';
// A daemon started on demand with --idle-exit goes away after its last window, not before.

const assert = require('node:assert/strict');
const test = require('node:test');

const { makeHome, pidAlive, spawnWindow, status, waitFor } = require('../testing/support');

const IDLE_EXIT_S = 2;

test('with --idle-exit 2 the daemon exits after the last window, not while one is open', { timeout: 60000 }, async (t) => {
  const ctx = makeHome(t);
  const first = spawnWindow(ctx, 'window-a', { idleExit: IDLE_EXIT_S });
  const second = spawnWindow(ctx, 'window-b', { idleExit: IDLE_EXIT_S });
  const [a, b] = await Promise.all(
    [first, second].map((w) => w.next((m) => m.ready, { what: 'ready' })),
  );
  ctx.pids.add(a.pid);
  assert.equal(a.pid, b.pid);
  const daemon = await status(ctx.home);
  assert.equal(daemon.idle_exit, IDLE_EXIT_S);

  // One window leaves; the other still holds a lease, so the daemon must stay past idle_exit.
  first.send('exit');
  await first.exited;
  await waitFor(async () => (await status(ctx.home)).clients.length === 1, {
    what: 'the first lease to end',
  });
  const holdUntil = Date.now() + (IDLE_EXIT_S + 1.5) * 1000;
  await waitFor(() => !pidAlive(a.pid) || Date.now() > holdUntil, {
    timeoutMs: (IDLE_EXIT_S + 5) * 1000,
    what: 'the hold period',
  });
  assert.ok(pidAlive(a.pid), 'the daemon exited while a window still held a lease');

  // The last window leaves: the daemon exits about idle_exit seconds later.
  const leftAt = Date.now();
  second.child.stdin.end();
  await second.exited;
  await waitFor(() => !pidAlive(a.pid), {
    timeoutMs: (IDLE_EXIT_S + 10) * 1000,
    what: `the daemon (pid ${a.pid}) to exit after its last window`,
  });
  const gone = (Date.now() - leftAt) / 1000;
  assert.ok(gone >= IDLE_EXIT_S - 0.5, `the daemon exited ${gone.toFixed(2)} s after the last window`);
});
