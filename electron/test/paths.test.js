'use strict';
// The control endpoint rules of DESIGN §3, checked against the fixture the Python tests use.

const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const test = require('node:test');

const { isPrivateDir, runtimePaths } = require('../lib/paths');

const FIXTURE = path.resolve(__dirname, '..', '..', 'tests', 'fixtures', 'paths.json');
const { cases } = JSON.parse(fs.readFileSync(FIXTURE, 'utf8'));
const KEYS = {
  run_dir: 'runDir',
  control_socket: 'controlSocket',
  state_file: 'stateFile',
  legacy_port_file: 'legacyPortFile',
};

function expected(testCase, key) {
  const value = testCase.expected[key];
  if (!value.includes('HASH')) return value;
  const digest = crypto.createHash('sha256').update(testCase.hash_input, 'utf8').digest('hex');
  return value.replace('HASH', digest.slice(0, 12));
}

test('the fixture has cases for every platform rule', () => {
  assert.ok(cases.length >= 8, `only ${cases.length} cases in ${FIXTURE}`);
  assert.ok(cases.some((c) => c.platform === 'win32'));
});

for (const testCase of cases) {
  test(`paths fixture: ${testCase.name}`, () => {
    const privateDirs = new Set(testCase.private_dirs);
    const result = runtimePaths({
      env: { HOME: '/home/ann', ...testCase.env },
      platform: testCase.platform,
      uid: testCase.uid,
      sid: testCase.sid,
      isPrivateDir: (dir) => privateDirs.has(dir),
    });
    for (const key of Object.keys(testCase.expected)) {
      assert.ok(KEYS[key], `the fixture names a key this test does not know: ${key}`);
      assert.equal(result[KEYS[key]], expected(testCase, key), key);
    }
  });
}

test('the private-dir check refuses symlinks, loose modes and foreign owners', (t) => {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'dbtk-paths-'));
  t.after(() => fs.rmSync(root, { recursive: true, force: true }));
  const good = path.join(root, 'good');
  fs.mkdirSync(good, { mode: 0o700 });
  const loose = path.join(root, 'loose');
  fs.mkdirSync(loose);
  fs.chmodSync(loose, 0o755);
  const link = path.join(root, 'link');
  fs.symlinkSync(good, link);
  const uid = process.getuid();
  assert.equal(isPrivateDir(good, uid), true);
  assert.equal(isPrivateDir(loose, uid), false);
  assert.equal(isPrivateDir(link, uid), false);
  assert.equal(isPrivateDir(good, uid + 1), false);
  assert.equal(isPrivateDir(path.join(root, 'missing'), uid), false);
});

test('the home option wins over DBTK_HOME and is made absolute', () => {
  const result = runtimePaths({
    env: { DBTK_HOME: '/elsewhere' },
    home: 'relative/profile',
    platform: 'linux',
    uid: 1000,
  });
  assert.equal(result.home, path.resolve('relative/profile'));
  assert.equal(result.controlSocket, path.join(path.resolve('relative/profile'), 'run', 'dbtkd.sock'));
});
