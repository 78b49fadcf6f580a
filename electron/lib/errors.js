'use strict';
/**
 * The errors the backend manager reports, each with a stable `code` and a message fit for an
 * error dialog: what happened, in the user's words, and what to do next. `title` is a short
 * heading for the dialog; `detail` carries what a developer needs (dbtkctl's stderr, the log
 * path, the daemon's last output) and is kept out of `message`.
 *
 * Codes:
 * - `port_range_exhausted`: every port of the configured range is taken.
 * - `executable_missing`: dbtkctl (the packaged backend) is not where it should be.
 * - `daemon_failed`: the daemon could not start its worker, or is in state `failed`.
 * - `timeout`: no answer within the deadline.
 * - `version_mismatch`: the running daemon speaks another control protocol.
 * - `not_ready`: no backend is known (call `ensureBackend()` first) or it has gone away.
 */

const CODES = Object.freeze({
  PORT_RANGE_EXHAUSTED: 'port_range_exhausted',
  EXECUTABLE_MISSING: 'executable_missing',
  DAEMON_FAILED: 'daemon_failed',
  TIMEOUT: 'timeout',
  VERSION_MISMATCH: 'version_mismatch',
  NOT_READY: 'not_ready',
});

const TITLES = Object.freeze({
  port_range_exhausted: 'No free port for the DB Toolkit backend',
  executable_missing: 'The DB Toolkit backend is missing',
  daemon_failed: 'The DB Toolkit backend could not start',
  timeout: 'The DB Toolkit backend does not answer',
  version_mismatch: 'The DB Toolkit backend is a different version',
  not_ready: 'The DB Toolkit backend is not connected',
});

class BackendError extends Error {
  /**
   * @param {string} code one of CODES
   * @param {string} message a sentence or two for the user, ending with what to do
   * @param {{detail?: string, cause?: unknown, [key: string]: unknown}} [extra]
   */
  constructor(code, message, extra = {}) {
    const { cause, ...rest } = extra;
    super(message, cause === undefined ? undefined : { cause });
    this.name = 'BackendError';
    this.code = code;
    this.title = TITLES[code] || 'DB Toolkit backend error';
    this.detail = rest.detail || '';
    Object.assign(this, rest);
  }
}

const SECONDS = 1000;

function timeoutError(what, timeoutMs, extra = {}) {
  return new BackendError(
    CODES.TIMEOUT,
    `The DB Toolkit backend did not answer within ${Math.round(timeoutMs / SECONDS)} s (${what}). ` +
      'It may still be starting on a busy machine: try again, and if it keeps happening look at ' +
      'its log ("dbtkctl logs").',
    extra,
  );
}

/** The daemon speaks control protocol `daemon.protocol`; this client speaks `ours`. */
function versionMismatch(daemon, ours) {
  const newer = daemon.protocol > ours;
  return new BackendError(
    CODES.VERSION_MISMATCH,
    `A ${newer ? 'newer' : 'different'} DB Toolkit backend (version ${daemon.version}) is ` +
      `running, and this version of the app cannot talk to it (control protocol ` +
      `${daemon.protocol}, not ${ours}). ${newer ? 'Update DB Toolkit' : 'Update the backend'}, ` +
      'or stop the other backend ("dbtkctl stop") and open this app again.',
    { daemonVersion: daemon.version, daemonProtocol: daemon.protocol },
  );
}

/** State `failed`: `error` is the daemon's {reason, exit, stderr} (status / state event). */
function failedError(error, extra = {}) {
  const reason = (error && error.reason) || 'its worker keeps exiting';
  const stderr = (error && error.stderr) || [];
  return new BackendError(
    CODES.DAEMON_FAILED,
    `The DB Toolkit backend stopped working: ${reason}. Restart it with "dbtkctl restart"; ` +
      'its log ("dbtkctl logs") says why it failed.',
    { reason, detail: stderr.join('\n'), exit: error && error.exit, ...extra },
  );
}

function missingExecutable(executable, cause) {
  return new BackendError(
    CODES.EXECUTABLE_MISSING,
    `DB Toolkit cannot run its backend program (${executable}: ` +
      `${cause.code === 'ENOENT' ? 'not found' : cause.message}). Reinstall DB Toolkit ` +
      '(in development, set DBTKCTL to the path of dbtkctl).',
    { executable, cause },
  );
}

module.exports = {
  BackendError,
  CODES,
  TITLES,
  failedError,
  missingExecutable,
  timeoutError,
  versionMismatch,
};
