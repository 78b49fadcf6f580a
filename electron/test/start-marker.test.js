'use strict';
// The start marker: one window runs dbtkctl while the others watch; stale or unsafe markers
// never block a start.

const assert = require('node:assert/strict');
const { spawnSync } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');

const marker = require('../lib/start-marker');

function tempRoot(t) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dbtk-marker-'));
  t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  return root;
}

test('the first claim owns the start, a second waits until it is released', (t) => {
  const runDir = path.join(tempRoot(t), 'run');
  const first = marker.claim(runDir);
  assert.equal(first.owned, true);
  assert.equal(fs.statSync(runDir).mode & 0o777, 0o700);
  const second = marker.claim(runDir);
  assert.equal(second.owned, false);
  assert.equal(second.unusable, false);
  assert.equal(marker.held(second), true);
  first.release();
  assert.equal(marker.held(second), false);
  assert.equal(marker.claim(runDir).owned, true);
});

test('a marker left by a process that died is stale and taken over', (t) => {
  const runDir = path.join(tempRoot(t), 'run');
  fs.mkdirSync(runDir, { mode: 0o700 });
  const dead = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))'], {
    encoding: 'utf8',
  });
  fs.writeFileSync(path.join(runDir, marker.MARKER_NAME), `${dead.stdout}\n`);
  assert.equal(marker.claim(runDir).owned, true);
});

test('a runtime dir that is a symlink or open to others is not used', (t) => {
  const root = tempRoot(t);
  const real = path.join(root, 'real');
  fs.mkdirSync(real, { mode: 0o700 });
  const link = path.join(root, 'link');
  fs.symlinkSync(real, link);
  assert.equal(marker.claim(link).unusable, true);
  const loose = path.join(root, 'loose');
  fs.mkdirSync(loose);
  fs.chmodSync(loose, 0o755);
  assert.equal(marker.claim(loose).unusable, true);
  assert.equal(marker.claim(path.join(root, 'no', 'parent')).unusable, true);
  assert.deepEqual(fs.readdirSync(real), [], 'nothing may be written through the link');
});
