'use strict';
/**
 * Test support: temporary homes whose daemons are always stopped, "window" child processes,
 * deadlines instead of sleeps. Lives outside test/ because `node --test test/` runs every .js
 * file under a test/ directory as a test file.
 *
 * Every test gets its own DBTK_HOME (`makeHome(t)`); `t.after` stops whatever runs for it,
 * also when the test failed: window processes by pid, then `dbtkctl stop`, then SIGKILL by pid
 * for any supervisor or worker of that home still alive (found through the control socket,
 * the state file and the processes whose command line names the home).
 */

const { spawn, spawnSync } = require('node:child_process');
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const { ControlConnection } = require('../lib/control');

const ELECTRON_DIR = path.resolve(__dirname, '..');
const DBTKCTL = process.env.DBTKCTL || path.resolve(ELECTRON_DIR, '..', '.venv', 'bin', 'dbtkctl');
const WINDOW_SCRIPT = path.join(__dirname, 'window.js');
const STOP_TIMEOUT_MS = 20000;
const POLL_MS = 20;

function requireDbtkctl() {
  if (!fs.existsSync(DBTKCTL)) {
    throw new Error(`dbtkctl not found at ${DBTKCTL}: run "python3 dev.py setup" or set DBTKCTL`);
  }
  return DBTKCTL;
}

/** Poll `predicate` (sync or async) every 20 ms until truthy; throw after `timeoutMs`. */
async function waitFor(predicate, { timeoutMs = 10000, what = 'a condition', detail } = {}) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await predicate();
      if (last) return last;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      const cause = last instanceof Error ? `: ${last.message}` : '';
      const more = detail ? ` (${detail()})` : '';
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}${cause}${more}`);
    }
    await new Promise((resolve) => setTimeout(resolve, POLL_MS));
  }
}

/** True while `pid` runs; a zombie has exited. */
function pidAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3) !== 'Z';
  } catch {
    return false;
  }
}

function cmdline(pid) {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0');
  } catch {
    return [];
  }
}

/** Pids whose command line names `home` as an argument (the daemons dbtkctl spawned for it). */
function pidsNaming(home) {
  return fs
    .readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry) && Number(entry) !== process.pid)
    .map(Number)
    .filter((pid) => cmdline(pid).includes(home));
}

/** Supervisors of `home`: `python -m dbtkd ... --home HOME` (not dbtkctl, not a worker). */
function supervisorsOf(home) {
  return pidsNaming(home).filter((pid) => {
    const argv = cmdline(pid);
    return argv.includes('dbtkd') && !argv.includes('_worker') && pidAlive(pid);
  });
}

function sha(text) {
  return crypto.createHash('sha256').update(text).digest('hex').slice(0, 12);
}

function controlSocketOf(home) {
  return path.join(home, 'run', 'dbtkd.sock');
}

/** One control request to the daemon of `home`; resolves the whole reply. */
async function control(home, cmd, args = {}) {
  const conn = await ControlConnection.open(controlSocketOf(home));
  try {
    return await conn.request(cmd, args, { timeoutMs: 10000 });
  } finally {
    conn.close();
  }
}

async function status(home) {
  const reply = await control(home, 'status');
  if (!reply.ok) throw new Error(`status failed: ${JSON.stringify(reply.error)}`);
  return reply.result;
}

function ctl(home, args, options = {}) {
  return spawnSync(requireDbtkctl(), ['--home', home, ...args], {
    encoding: 'utf8',
    timeout: options.timeoutMs || STOP_TIMEOUT_MS,
    env: { ...process.env, DBTK_HOME: home },
  });
}

/** A fresh home for one test, cleaned up (daemons stopped) after it whatever happened. */
function makeHome(t, prefix = 'dbtk-e-') {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), prefix));
  const ctx = { home, pids: new Set(), children: new Set() };
  t.after(() => cleanup(ctx));
  return ctx;
}

/** A dbtkd supervisor or worker (its command line runs dbtkd): the only pids cleanup kills. */
function isDaemonProcess(pid) {
  return (
    Number.isInteger(pid) &&
    pid > 1 &&
    pid !== process.pid &&
    cmdline(pid).some((arg) => arg === 'dbtkd' || arg.endsWith('/dbtkd'))
  );
}

async function cleanup(ctx) {
  for (const child of ctx.children) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  const pids = new Set(ctx.pids);
  try {
    const conn = await ControlConnection.open(controlSocketOf(ctx.home), { timeoutMs: 1000 });
    try {
      const reply = await conn.request('status', {}, { timeoutMs: 2000 });
      pids.add(reply.result.pid);
      pids.add(reply.result.worker_pid);
    } finally {
      conn.close();
    }
  } catch {
    // not running, or not answering (or not a daemon): the other sources below
  }
  try {
    const state = JSON.parse(fs.readFileSync(path.join(ctx.home, 'run', 'dbtkd.json'), 'utf8'));
    pids.add(state.pid);
    pids.add(state.worker_pid);
  } catch {
    // no state file
  }
  for (const pid of pidsNaming(ctx.home)) pids.add(pid);
  for (const pid of pids) if (!isDaemonProcess(pid)) pids.delete(pid);
  if ([...pids].some(pidAlive)) ctl(ctx.home, ['stop', '--timeout', '2']);
  for (const pid of pids) {
    if (!pidAlive(pid) || !isDaemonProcess(pid)) continue;
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // gone meanwhile
    }
  }
  await waitFor(() => [...pids].every((pid) => !pidAlive(pid)), {
    timeoutMs: 5000,
    what: 'the daemons of the test home to exit',
  }).catch(() => {});
  fs.rmSync(ctx.home, { recursive: true, force: true });
}

/**
 * A "window": a Node process running testing/window.js, which calls ensureBackend and
 * attach and reports JSON lines. `next(predicate)` waits for a matching message.
 */
function spawnWindow(ctx, name, options = {}) {
  const config = {
    name,
    home: ctx.home,
    dbtkctl: options.dbtkctl || requireDbtkctl(),
    portRange: options.portRange === undefined ? '0' : options.portRange,
    idleExit: options.idleExit,
  };
  const child = spawn(process.execPath, [WINDOW_SCRIPT, JSON.stringify(config)], {
    stdio: ['pipe', 'pipe', 'pipe'],
    env: { ...process.env, ...(options.env || {}) },
  });
  ctx.children.add(child);
  const messages = [];
  const waiters = new Set();
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk) => {
    stderr += chunk;
  });
  readline.createInterface({ input: child.stdout }).on('line', (line) => {
    let message;
    try {
      message = JSON.parse(line);
    } catch {
      message = { text: line };
    }
    messages.push(message);
    for (const waiter of waiters) waiter();
  });
  const exited = new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
  const window = {
    name,
    child,
    messages,
    exited,
    get stderr() {
      return stderr;
    },
    send(command) {
      child.stdin.write(`${command}\n`);
    },
    /** The first message (from index `from`) matching `predicate`. */
    next(predicate, { timeoutMs = 20000, from = 0, what = 'a message' } = {}) {
      return new Promise((resolve, reject) => {
        const check = () => {
          const found = messages.slice(from).find(predicate);
          if (found) {
            cleanupWaiter();
            resolve(found);
            return;
          }
          const failure = messages.find((m) => m.error);
          if (failure) {
            cleanupWaiter();
            reject(new Error(`${name} failed: ${JSON.stringify(failure.error)}\n${stderr}`));
          }
        };
        const timer = setTimeout(() => {
          cleanupWaiter();
          reject(new Error(`${name}: no ${what} within ${timeoutMs} ms; got ${JSON.stringify(messages)}\n${stderr}`));
        }, timeoutMs);
        const cleanupWaiter = () => {
          clearTimeout(timer);
          waiters.delete(check);
        };
        waiters.add(check);
        check();
      });
    },
  };
  return window;
}

/**
 * A daemon started through the module for a test page served at `origin` (the only origin it
 * allows), and what the preload would hand that page: `{started, backend: {url, headers,
 * protocols}}`. Everything is stopped after the test.
 */
async function backendForPage(t, ctx, origin) {
  const { BackendManager } = require('../backend-manager');
  process.env.DBTK_ALLOWED_ORIGINS = origin;
  t.after(() => delete process.env.DBTK_ALLOWED_ORIGINS);
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl(), portRange: '0' });
  t.after(() => manager.close());
  const started = await manager.ensureBackend();
  ctx.pids.add(started.pid);
  const backend = { url: started.url, headers: manager.authHeaders(), protocols: manager.webSocketProtocols() };
  return { started, backend };
}

module.exports = {
  backendForPage,
  DBTKCTL,
  control,
  controlSocketOf,
  ctl,
  makeHome,
  pidAlive,
  pidsNaming,
  requireDbtkctl,
  sha,
  spawnWindow,
  status,
  supervisorsOf,
  waitFor,
};
