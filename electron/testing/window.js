'use strict';
/**
 * One simulated Electron window for the tests and the bench: a process that does what a
 * window's main-process code does — ensureBackend, attach a lease — and reports JSON lines on
 * stdout: `{ready, ...}` once attached (with timings), one line per lease event, and answers
 * commands read from stdin: `status` (an authenticated GET /api/v1/status through
 * retryIdempotent), `release` (end the lease), `exit`. Closing stdin exits too.
 *
 * argv[2]: JSON {name, home, dbtkctl, portRange, idleExit}.
 */

const crypto = require('node:crypto');
const readline = require('node:readline');

const started = performance.now();
const { BackendManager } = require('../backend-manager');

const config = JSON.parse(process.argv[2]);

function out(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

async function main() {
  const manager = new BackendManager({
    home: config.home,
    dbtkctl: config.dbtkctl,
    portRange: config.portRange,
    idleExit: config.idleExit,
  });
  const backend = await manager.ensureBackend();
  const lease = await manager.attach(config.name);
  for (const event of ['restarted', 'failed', 'state', 'upgraded', 'stopped', 'reattached']) {
    lease.on(event, (payload) => {
      const data = payload instanceof Error ? { code: payload.code, message: payload.message } : payload;
      out({ event, ...data });
    });
  }
  out({
    ready: true,
    name: config.name,
    port: backend.port,
    url: backend.url,
    pid: backend.pid,
    version: backend.version,
    token: crypto.createHash('sha256').update(backend.token).digest('hex').slice(0, 12),
    lease: lease.id,
    fallbacks: manager.stats.fallbacks,
    elapsedMs: performance.now() - started,
  });
  const commands = readline.createInterface({ input: process.stdin });
  commands.on('line', async (line) => {
    const command = line.trim();
    try {
      if (command === 'status') {
        const result = await manager.retryIdempotent(async ({ url, headers }) => {
          const response = await fetch(`${url}/api/v1/status`, { headers });
          return { status: response.status, body: await response.json() };
        });
        out({ command, ...result });
      } else if (command === 'release') {
        lease.release();
        out({ command, released: true });
      } else if (command === 'exit') {
        process.exit(0);
      }
    } catch (err) {
      out({ command, failed: { code: err.code, message: err.message } });
    }
  });
  commands.on('close', () => process.exit(0));
}

main().catch((err) => {
  out({ error: { code: err.code, message: err.message } });
  process.exit(1);
});
