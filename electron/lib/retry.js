'use strict';
/**
 * Backoff and the classification of failed requests, shared by leases, streams and
 * `retryIdempotent`. A request "died with its connection" when it was reset or refused: a
 * worker restart resets connections in flight (the supervisor keeps the port, so new ones
 * wait in the backlog); a refused connection means no daemon holds the port any more.
 */

const JITTER = 0.2; // ±20 %, so the windows of one user do not reconnect in lockstep
const CONNECTION_ERROR_CODES = new Set([
  'ECONNRESET',
  'ECONNREFUSED',
  'ECONNABORTED',
  'EPIPE',
  'UND_ERR_SOCKET', // fetch (undici): "other side closed"
  'UND_ERR_CLOSED',
]);

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const jittered = (ms) => Math.round(ms * (1 - JITTER + Math.random() * 2 * JITTER));

/** The `code`s of an error and its causes (fetch wraps the socket error twice). */
function errorCodes(err) {
  const codes = [];
  for (let current = err, depth = 0; current && depth < 4; current = current.cause, depth += 1) {
    if (current.code) codes.push(current.code);
  }
  return codes;
}

/** True for a request that died with its connection (a worker restart, a daemon exit). */
function isConnectionError(err) {
  return errorCodes(err).some((code) => CONNECTION_ERROR_CODES.has(code));
}

/** True when nothing listened on the port: the daemon that reported it is gone. */
function isRefused(err) {
  return errorCodes(err).includes('ECONNREFUSED');
}

module.exports = { isConnectionError, isRefused, jittered, sleep };
