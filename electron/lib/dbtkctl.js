'use strict';
/**
 * The fallback that starts a daemon: `dbtkctl port --json`, used only when no daemon answers
 * the control socket. dbtkctl's exit codes and stderr (DESIGN §6: 4 = could not start, with
 * the reason, the log path and the last log lines) become BackendErrors with dialog-ready
 * messages. The daemon dbtkctl spawns is detached, so killing dbtkctl on a timeout leaves it
 * running for the next attempt.
 */

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');

const { BackendError, CODES, missingExecutable, timeoutError } = require('./errors');

/** DBTKCTL, else the packaged copy, else `dbtkctl` from PATH (development). */
function defaultDbtkctl(env) {
  if (env.DBTKCTL) return env.DBTKCTL;
  const name = process.platform === 'win32' ? 'dbtkctl.exe' : 'dbtkctl';
  // Packaged app: electron-builder's extraResources copies dist/db-toolkit-backend there.
  if (process.resourcesPath) {
    const packaged = path.join(process.resourcesPath, 'backend', name);
    if (fs.existsSync(packaged)) return packaged;
  }
  return name;
}

/**
 * Run `dbtkctl [--home H] port --json [--port-range R] [--idle-exit S]`: dbtkctl starts a
 * daemon under its spawn lock (so racing windows start one) and waits until it serves.
 * Resolves its port document `{port, url, token, pid, version, started, handoff}`.
 */
function dbtkctlPort(options, deadline, timeoutMs) {
  const env = options.env || process.env;
  const executable = options.dbtkctl || defaultDbtkctl(env);
  const args = [];
  if (options.home) args.push('--home', options.home);
  args.push('port', '--json');
  if (options.portRange !== undefined && options.portRange !== null) {
    args.push('--port-range', String(options.portRange));
  }
  if (options.idleExit !== undefined && options.idleExit !== null) {
    args.push('--idle-exit', String(options.idleExit));
  }
  return new Promise((resolve, reject) => {
    let child;
    try {
      child = spawn(executable, args, { env, stdio: ['ignore', 'pipe', 'pipe'], windowsHide: true });
    } catch (err) {
      reject(missingExecutable(executable, err));
      return;
    }
    let stdout = '';
    let stderr = '';
    let timedOut = false;
    child.stdout.setEncoding('utf8').on('data', (chunk) => {
      stdout += chunk;
    });
    child.stderr.setEncoding('utf8').on('data', (chunk) => {
      stderr += chunk;
    });
    const timer = setTimeout(() => {
      timedOut = true;
      child.kill('SIGKILL'); // dbtkctl only; the daemon it spawned is detached and goes on
    }, Math.max(0, deadline - Date.now()));
    child.on('error', (err) => {
      clearTimeout(timer);
      reject(missingExecutable(executable, err));
    });
    child.on('close', (code) => {
      clearTimeout(timer);
      if (timedOut) {
        reject(timeoutError('dbtkctl port', timeoutMs, { detail: stderr }));
        return;
      }
      if (code === 0) {
        try {
          resolve(JSON.parse(stdout));
        } catch (err) {
          reject(
            new BackendError(
              CODES.DAEMON_FAILED,
              'The DB Toolkit backend answered in a way this app does not understand. ' +
                'Reinstall DB Toolkit.',
              { detail: `dbtkctl printed: ${stdout.slice(0, 500)}`, cause: err },
            ),
          );
        }
        return;
      }
      reject(dbtkctlFailure(code, stdout, stderr));
    });
  });
}

/** Turn dbtkctl's exit code and stderr (DESIGN §6) into a BackendError. */
function dbtkctlFailure(code, stdout, stderr) {
  let reason = '';
  try {
    reason = JSON.parse(stdout).error || '';
  } catch {
    // --json prints the error document on stdout; fall back to stderr
  }
  if (!reason) {
    const line = stderr.split('\n').find((l) => l.startsWith('dbtkctl: ')) || stderr.split('\n')[0];
    reason = line.replace(/^dbtkctl: /, '');
  }
  const firstLine = reason.split('\n')[0].trim();
  const logLine = stderr.split('\n').find((l) => l.startsWith('log: '));
  const extra = {
    exitCode: code,
    reason: firstLine,
    logFile: logLine ? logLine.slice(5).trim() : undefined,
    detail: stderr.trim(),
  };
  const range = /port range (\S+) is all in use/.exec(reason);
  if (range) {
    return new BackendError(
      CODES.PORT_RANGE_EXHAUSTED,
      `Every port in the range ${range[1]} is in use, so the DB Toolkit backend cannot start. ` +
        'Close the program that holds them, or choose other ports (DBTK_PORT_RANGE=A-B, or 0 ' +
        'for any free port; or port_range in dbtkd.toml), then open DB Toolkit again.',
      { ...extra, portRange: range[1] },
    );
  }
  const newer = /daemon is newer \(([^)]*)\)/.exec(reason);
  if (newer) {
    return new BackendError(
      CODES.VERSION_MISMATCH,
      `A newer DB Toolkit backend (version ${newer[1]}) is running, and this version of the app ` +
        'cannot talk to it. Update DB Toolkit, or stop the newer backend ("dbtkctl stop") and ' +
        'open this app again.',
      { ...extra, daemonVersion: newer[1] },
    );
  }
  const where = extra.logFile ? ` Its log (${extra.logFile}) says more.` : ' "dbtkctl logs" says more.';
  return new BackendError(
    CODES.DAEMON_FAILED,
    `The DB Toolkit backend could not start: ${firstLine || `dbtkctl exited with status ${code}`}.${where}`,
    extra,
  );
}

module.exports = { dbtkctlFailure, dbtkctlPort, defaultDbtkctl };
