#!/usr/bin/env node
'use strict';
/**
 * Electron figures (issue 5), side by side with the per-window design in one run:
 *
 * 1. warm ensureBackend: module loaded, daemon running; a fresh BackendManager per sample
 *    does hello + port (one control connection), GET /health, then attach (lease answered).
 *    Median of 50 after 5 unmeasured. Budget ≤ 10 ms. The baseline column is what one
 *    window paid before: spawn per_window_backend.py, parse BACKEND_PORT, GET health 200.
 * 2. 8 windows from cold: 8 Node processes started at once, each calling ensureBackend +
 *    attach (electron/testing/window.js) with no daemon running, vs 8 Node processes each
 *    spawning per_window_backend.py, parsing BACKEND_PORT and waiting for
 *    GET /api/v1/health 200. Time from the first spawn to the last window ready; PSS (RSS
 *    beside it) of the backend processes then: supervisor + worker vs the 8 backends.
 *    Page cache warm after one unmeasured run of each; samples interleaved, alternating
 *    which side goes first. Budgets: time ≤ 0.35×, PSS ≤ 0.15×.
 *
 * Usage: node bench/electron_bench.js [--quick] [--json] [--samples N] [--warm-samples N]
 * Env: DBTKCTL (default .venv/bin/dbtkctl), DBTK_BASELINE_PYTHON (default
 * bench/.venv-baseline/bin/python, else a venv it creates under the temp dir),
 * DBTK_BASELINE_SCRIPT (default ../shared/baselines/per_window_backend.py).
 * Every daemon and backend it starts is stopped by pid on the way out, Ctrl-C included.
 * Progress goes to stderr; stdout holds only the table (or the JSON document).
 */

const { execFileSync, spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const os = require('node:os');
const path = require('node:path');
const readline = require('node:readline');

const REPO = path.resolve(__dirname, '..');
const ELECTRON = path.join(REPO, 'electron');
const WINDOW_SCRIPT = path.join(ELECTRON, 'testing', 'window.js');
const DBTKCTL = process.env.DBTKCTL || path.join(REPO, '.venv', 'bin', 'dbtkctl');
const BASELINE_SCRIPT =
  process.env.DBTK_BASELINE_SCRIPT ||
  path.join(REPO, '..', 'shared', 'baselines', 'per_window_backend.py');
const BASELINE_PACKAGES = ['fastapi', 'uvicorn', 'psutil'];
const WINDOWS = 8;
const WARM_SAMPLES = 50;
const WARM_WARMUP = 5;
const COLD_SAMPLES = 5;
const QUICK_COLD_SAMPLES = 2;
const QUICK_WARM_SAMPLES = 15;
const START_DEADLINE_MS = 60000;
const BUDGET_WARM_MS = 10;
const BUDGET_COLD_TIME = 0.35;
const BUDGET_COLD_PSS = 0.15;

// ----- baseline "window": node process spawning one per-window backend ---------------------

if (process.argv[2] === '--baseline-window') {
  const [python, script] = process.argv.slice(3);
  const backend = spawn(python, [script], { stdio: ['ignore', 'pipe', 'inherit'] });
  const lines = readline.createInterface({ input: backend.stdout });
  lines.on('line', (line) => {
    if (!line.startsWith('BACKEND_PORT:')) return;
    const port = Number(line.slice('BACKEND_PORT:'.length));
    const probe = () => {
      const request = http.get({ host: '127.0.0.1', port, path: '/api/v1/health', agent: false }, (response) => {
        response.resume();
        if (response.statusCode === 200) {
          process.stdout.write(`${JSON.stringify({ ready: true, port, backendPid: backend.pid })}\n`);
        } else setTimeout(probe, 1);
      });
      request.on('error', () => setTimeout(probe, 1));
    };
    probe();
  });
  process.stdin.on('end', () => {
    backend.kill('SIGKILL');
    process.exit(0);
  });
  process.stdin.resume();
  return;
}

// ----- bookkeeping: every process and home we start is stopped on the way out --------------

const progress = (message) => process.stderr.write(`bench: ${message}\n`);
const tracked = new Set(); // child processes
const homes = new Set();
const workdir = fs.mkdtempSync(path.join(os.tmpdir(), 'dbtk-ebench-'));

function pidAlive(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat[stat.lastIndexOf(')') + 2] !== 'Z';
  } catch {
    return false;
  }
}

function pidsNaming(home) {
  return fs
    .readdirSync('/proc')
    .filter((entry) => /^\d+$/.test(entry))
    .map(Number)
    .filter((pid) => {
      try {
        return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').includes(home);
      } catch {
        return false;
      }
    });
}

function daemonPids(home) {
  try {
    const status = JSON.parse(
      execFileSync(DBTKCTL, ['--home', home, 'status', '--json'], { encoding: 'utf8', timeout: 20000 }),
    );
    return [status.pid, status.worker_pid].filter(Boolean);
  } catch (err) {
    throw new Error(`dbtkctl status for ${home}: ${err.stderr || err.message}`);
  }
}

function stopHome(home) {
  const pids = new Set(pidsNaming(home));
  try {
    daemonPids(home).forEach((pid) => pids.add(pid));
  } catch {
    // not running
  }
  if ([...pids].some(pidAlive)) spawnSync(DBTKCTL, ['--home', home, 'stop'], { timeout: 20000 });
  for (const pid of pids) {
    if (pidAlive(pid)) {
      try {
        process.kill(pid, 'SIGKILL');
      } catch {
        // gone
      }
    }
  }
  homes.delete(home);
}

function cleanup() {
  for (const child of tracked) {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }
  for (const home of [...homes]) stopHome(home);
  fs.rmSync(workdir, { recursive: true, force: true });
}

function newHome() {
  const home = fs.mkdtempSync(path.join(workdir, 'h'));
  homes.add(home);
  return home;
}

/** Start a child that prints JSON lines; resolves the first `{ready}` line (or rejects). */
function startReporting(argv, options = {}) {
  const child = spawn(argv[0], argv.slice(1), { stdio: ['pipe', 'pipe', 'pipe'], ...options });
  tracked.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
  });
  const ready = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ready line in time: ${stderr}`)), START_DEADLINE_MS);
    readline.createInterface({ input: child.stdout }).on('line', (line) => {
      let message;
      try {
        message = JSON.parse(line);
      } catch {
        return;
      }
      if (message.ready) {
        clearTimeout(timer);
        resolve({ ...message, at: performance.now() });
      } else if (message.error) {
        clearTimeout(timer);
        reject(new Error(`window failed: ${JSON.stringify(message.error)} ${stderr}`));
      }
    });
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited ${code} before ready: ${stderr}`));
    });
  });
  ready.catch(() => {});
  return { child, ready };
}

async function endChildren(children) {
  await Promise.all(
    children.map(
      (child) =>
        new Promise((resolve) => {
          if (child.exitCode !== null || child.signalCode !== null) {
            resolve();
            return;
          }
          child.once('exit', resolve);
          child.stdin.end();
          setTimeout(() => child.kill('SIGKILL'), 5000).unref();
        }),
    ),
  );
  children.forEach((child) => tracked.delete(child));
}

function memory(pids) {
  let pss = 0;
  let rss = 0;
  for (const pid of pids) {
    const text = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    pss += Number(/^Pss:\s+(\d+) kB/m.exec(text)[1]);
    rss += Number(/^Rss:\s+(\d+) kB/m.exec(text)[1]);
  }
  return { pssKib: pss, rssKib: rss };
}

const median = (values) => {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
};
const summary = (values) => ({ median: median(values), min: Math.min(...values), max: Math.max(...values), n: values.length });
const ms = (s, digits = 1) => `${s.median.toFixed(digits)} ms (${s.min.toFixed(digits)}-${s.max.toFixed(digits)})`;
const mib = (kib) => `${(kib / 1024).toFixed(1)} MiB`;

// ----- the baseline's interpreter ------------------------------------------------------------

function baselinePython() {
  if (process.env.DBTK_BASELINE_PYTHON) return process.env.DBTK_BASELINE_PYTHON;
  const shared = path.join(REPO, 'bench', '.venv-baseline');
  if (fs.existsSync(path.join(shared, '.bench-ready.json'))) return path.join(shared, 'bin', 'python');
  const own = path.join(os.tmpdir(), 'dbtk-electron-baseline-venv');
  const python = path.join(own, 'bin', 'python');
  if (!fs.existsSync(path.join(own, '.ready'))) {
    progress(`creating the baseline venv ${own} (pip install ${BASELINE_PACKAGES.join(' ')})`);
    fs.rmSync(own, { recursive: true, force: true });
    let base = 'python3';
    try {
      const cfg = fs.readFileSync(path.join(REPO, '.venv', 'pyvenv.cfg'), 'utf8');
      base = /^executable\s*=\s*(.+)$/m.exec(cfg)[1].trim();
    } catch {
      // the project venv says nothing: python3 from PATH
    }
    execFileSync(base, ['-m', 'venv', own], { stdio: 'inherit' });
    execFileSync(python, ['-m', 'pip', 'install', '-q', ...BASELINE_PACKAGES], { stdio: 'inherit' });
    fs.writeFileSync(path.join(own, '.ready'), '');
  }
  return python;
}

// ----- the figures ---------------------------------------------------------------------------

async function warmFigure(samples, python) {
  const { BackendManager } = require(path.join(ELECTRON, 'backend-manager.js'));
  const home = newHome();
  const started = JSON.parse(
    execFileSync(DBTKCTL, ['--home', home, 'port', '--json', '--port-range', '0'], { encoding: 'utf8' }),
  );
  progress(`warm ensureBackend: daemon ${started.pid} on port ${started.port}; ${WARM_WARMUP} + ${samples} samples`);
  const times = [];
  let fallbacks = 0;
  try {
    for (let i = 0; i < WARM_WARMUP + samples; i += 1) {
      const manager = new BackendManager({ home, dbtkctl: '/nonexistent/dbtkctl' });
      const t0 = performance.now();
      await manager.ensureBackend();
      const lease = await manager.attach('bench');
      const elapsed = performance.now() - t0;
      lease.release();
      fallbacks += manager.stats.fallbacks;
      if (i >= WARM_WARMUP) times.push(elapsed);
    }
  } finally {
    stopHome(home);
  }
  if (fallbacks) throw new Error(`a warm call ran dbtkctl ${fallbacks} times`);
  // What a window paid before: one per-window backend, spawn to health.
  const single = [];
  for (let i = 0; i < 4; i += 1) {
    const t0 = performance.now();
    const window = startReporting([process.execPath, __filename, '--baseline-window', python, BASELINE_SCRIPT]);
    await window.ready;
    if (i > 0) single.push(performance.now() - t0);
    await endChildren([window.child]);
  }
  return { warm: summary(times), singleBaseline: summary(single), samples: times, single };
}

async function coldOurs() {
  const home = newHome();
  const t0 = performance.now();
  const windows = [];
  for (let i = 0; i < WINDOWS; i += 1) {
    const config = { name: `window-${i}`, home, dbtkctl: DBTKCTL, portRange: '0' };
    windows.push(startReporting([process.execPath, WINDOW_SCRIPT, JSON.stringify(config)]));
  }
  const ready = await Promise.all(windows.map((w) => w.ready));
  const elapsed = Math.max(...ready.map((r) => r.at)) - t0;
  const pids = daemonPids(home);
  const mem = memory(pids);
  if (new Set(ready.map((r) => r.pid)).size !== 1) throw new Error('the windows reached different daemons');
  await endChildren(windows.map((w) => w.child));
  stopHome(home);
  return { elapsedMs: elapsed, ...mem, pids };
}

async function coldBaseline(python) {
  const t0 = performance.now();
  const windows = [];
  for (let i = 0; i < WINDOWS; i += 1) {
    windows.push(startReporting([process.execPath, __filename, '--baseline-window', python, BASELINE_SCRIPT]));
  }
  const ready = await Promise.all(windows.map((w) => w.ready));
  const elapsed = Math.max(...ready.map((r) => r.at)) - t0;
  const pids = ready.map((r) => r.backendPid);
  const mem = memory(pids);
  await endChildren(windows.map((w) => w.child));
  for (const pid of pids) if (pidAlive(pid)) process.kill(pid, 'SIGKILL');
  return { elapsedMs: elapsed, ...mem, pids };
}

async function coldFigure(samples, python) {
  progress('8 windows from cold: one unmeasured run of each side (page cache)');
  await coldOurs();
  await coldBaseline(python);
  const ours = [];
  const theirs = [];
  for (let i = 0; i < samples; i += 1) {
    progress(`8 windows from cold: sample ${i + 1}/${samples}`);
    if (i % 2 === 0) {
      ours.push(await coldOurs());
      theirs.push(await coldBaseline(python));
    } else {
      theirs.push(await coldBaseline(python));
      ours.push(await coldOurs());
    }
  }
  return { ours, theirs };
}

function rows(warm, cold) {
  const oursTime = summary(cold.ours.map((s) => s.elapsedMs));
  const theirTime = summary(cold.theirs.map((s) => s.elapsedMs));
  const oursPss = median(cold.ours.map((s) => s.pssKib));
  const theirPss = median(cold.theirs.map((s) => s.pssKib));
  const oursRss = median(cold.ours.map((s) => s.rssKib));
  const theirRss = median(cold.theirs.map((s) => s.rssKib));
  const timeRatio = oursTime.median / theirTime.median;
  const pssRatio = oursPss / theirPss;
  return [
    {
      figure: `warm ensureBackend + attach (median of ${warm.warm.n})`,
      dbtkd: ms(warm.warm, 2),
      baseline: `${ms(warm.singleBaseline, 0)} (1 window spawns a backend)`,
      ratio: warm.warm.median / warm.singleBaseline.median,
      budget: `<= ${BUDGET_WARM_MS} ms`,
      ok: warm.warm.median <= BUDGET_WARM_MS,
    },
    {
      figure: `${WINDOWS} windows from cold: first spawn to last ready (median of ${oursTime.n})`,
      dbtkd: ms(oursTime, 0),
      baseline: ms(theirTime, 0),
      ratio: timeRatio,
      budget: `<= ${BUDGET_COLD_TIME.toFixed(2)}x`,
      ok: timeRatio <= BUDGET_COLD_TIME,
    },
    {
      figure: `${WINDOWS} windows from cold: backend PSS (RSS)`,
      dbtkd: `${mib(oursPss)} (${mib(oursRss)})`,
      baseline: `${mib(theirPss)} (${mib(theirRss)})`,
      ratio: pssRatio,
      budget: `<= ${BUDGET_COLD_PSS.toFixed(2)}x`,
      ok: pssRatio <= BUDGET_COLD_PSS,
    },
  ];
}

function table(tableRows) {
  const header = ['figure', 'dbtkd', 'baseline', 'ratio', 'budget', 'ok?'];
  const cells = [
    header,
    ...tableRows.map((r) => [r.figure, r.dbtkd, r.baseline, `${r.ratio.toFixed(2)}x`, r.budget, r.ok ? 'yes' : 'NO']),
  ];
  const widths = header.map((_, i) => Math.max(...cells.map((line) => line[i].length)));
  const lines = cells.map((line) => line.map((cell, i) => cell.padEnd(widths[i])).join(' | ').trimEnd());
  lines.splice(1, 0, widths.map((w) => '-'.repeat(w)).join('-+-'));
  return lines.join('\n');
}

function parseArgs(argv) {
  const args = { quick: false, json: false, samples: null, warmSamples: null };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--quick') args.quick = true;
    else if (arg === '--json') args.json = true;
    else if (arg === '--samples') args.samples = Number(argv[(i += 1)]);
    else if (arg === '--warm-samples') args.warmSamples = Number(argv[(i += 1)]);
    else {
      process.stderr.write(`usage: node bench/electron_bench.js [--quick] [--json] [--samples N] [--warm-samples N]\n`);
      process.exit(2);
    }
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  for (const file of [DBTKCTL, BASELINE_SCRIPT]) {
    if (!fs.existsSync(file)) throw new Error(`missing ${file}`);
  }
  const python = baselinePython();
  const warmSamples = args.warmSamples || (args.quick ? QUICK_WARM_SAMPLES : WARM_SAMPLES);
  const coldSamples = args.samples || (args.quick ? QUICK_COLD_SAMPLES : COLD_SAMPLES);
  const warm = await warmFigure(warmSamples, python);
  const cold = await coldFigure(coldSamples, python);
  const result = rows(warm, cold);
  if (args.json) {
    const document = {
      machine: { cpus: os.cpus().length, platform: `${os.type()} ${os.release()}`, node: process.version, load_average: os.loadavg() },
      baseline: { python, script: BASELINE_SCRIPT },
      rows: result,
      data: { warm, cold },
    };
    process.stdout.write(`${JSON.stringify(document, null, 2)}\n`);
  } else {
    process.stdout.write(`${table(result)}\n`);
  }
}

for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(signal, () => {
    progress(`${signal}: stopping every process started`);
    cleanup();
    process.exit(130);
  });
}

main()
  .then(() => {
    cleanup();
  })
  .catch((err) => {
    progress(`error: ${err.message}`);
    cleanup();
    process.exitCode = 1;
  });
