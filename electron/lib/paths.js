'use strict';
/**
 * Where the daemon's control endpoint is: the Node twin of `dbtkd/paths.py` (DESIGN §3).
 *
 * Every rule is a pure function of the environment, the platform, the uid (and on Windows the
 * SID); the one filesystem check (`isPrivateDir`) and the home directory are parameters, so
 * the shared fixture `tests/fixtures/paths.json` pins Linux, macOS and Windows rules on any
 * host, for Python and Node alike. Path syntax follows the target platform (`path.win32` for
 * `win32`, `path.posix` otherwise), as Python's `ntpath`/`posixpath` do.
 */

const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const APP_NAME = 'db-toolkit';
// sun_path is 108 bytes on Linux and 104 on macOS; 100 is the figure dbtkd/paths.py uses.
const SOCKET_PATH_MAX = 100;
const SOCKET_NAME = 'dbtkd.sock';
const LOCK_NAME = 'dbtkd.lock';
const SPAWN_LOCK_NAME = 'spawn.lock';
const STATE_NAME = 'dbtkd.json';
const LEGACY_PORT_NAME = 'backend.port';

function flavour(platform) {
  return platform === 'win32' ? path.win32 : path.posix;
}

function currentUid() {
  return typeof process.getuid === 'function' ? process.getuid() : 0;
}

/** True if `dir` is a real directory (not a symlink) owned by `uid` with no group/other bits. */
function isPrivateDir(dir, uid) {
  let st;
  try {
    st = fs.lstatSync(dir);
  } catch {
    return false;
  }
  return st.isDirectory() && st.uid === uid && (st.mode & 0o077) === 0;
}

/** `~` and `~/x` as Python's expanduser does: HOME (USERPROFILE on Windows) first. */
function expandUser(value, env, platform) {
  if (value !== '~' && !value.startsWith('~/') && !(platform === 'win32' && value.startsWith('~\\'))) {
    return value;
  }
  const home = (platform === 'win32' ? env.USERPROFILE : env.HOME) || os.homedir();
  return home + value.slice(1);
}

/** The temp dir as Python's tempfile picks it first: TMPDIR, TEMP, TMP, then a fixed default. */
function tempDir(env, platform) {
  for (const name of ['TMPDIR', 'TEMP', 'TMP']) {
    if (env[name]) return env[name];
  }
  return platform === 'win32' ? 'C:\\Windows\\Temp' : '/tmp';
}

/** The profile home: the `home` option wins over DBTK_HOME; null means per-OS defaults. */
function homeFrom(env, home, platform) {
  const value = home !== undefined && home !== null ? home : env.DBTK_HOME;
  if (!value) return null;
  return flavour(platform).resolve(expandUser(value, env, platform));
}

function runtimeDir(env, home, { platform, uid, privateDir }) {
  const p = flavour(platform);
  if (home !== null) return p.join(home, 'run');
  if (platform === 'win32') {
    const base = env.LOCALAPPDATA || p.join(expandUser('~', env, platform), 'AppData', 'Local');
    return p.join(base, APP_NAME, 'run');
  }
  if (platform === 'darwin') {
    return p.join(expandUser('~', env, platform), 'Library', 'Caches', APP_NAME, 'run');
  }
  for (const candidate of [env.XDG_RUNTIME_DIR, `/run/user/${uid}`]) {
    if (candidate && p.isAbsolute(candidate) && privateDir(candidate, uid)) {
      return p.join(candidate, APP_NAME);
    }
  }
  return p.join(tempDir(env, platform), `dbtk-${uid}`);
}

function shortHash(text) {
  const crypto = require('node:crypto'); // only long paths and Windows need it: load it then
  return crypto.createHash('sha256').update(text, 'utf8').digest('hex').slice(0, 12);
}

/** `\\.\pipe\db-toolkit-<SID>-<12 hex of sha256(normcase(realpath(home)))>`. */
function windowsPipeName(homeDir, sid, { realpath } = {}) {
  let real = path.win32.resolve(homeDir);
  if (realpath) real = realpath(real);
  const normcase = real.replace(/\//g, '\\').toLowerCase(); // ntpath.normcase
  return `\\\\.\\pipe\\${APP_NAME}-${sid}-${shortHash(normcase)}`;
}

function controlSocketPath(env, runDir, { platform, uid }) {
  const p = flavour(platform);
  const socket = p.join(runDir, SOCKET_NAME);
  if (Buffer.byteLength(socket, 'utf8') <= SOCKET_PATH_MAX) return socket;
  return p.join(tempDir(env, platform), `dbtk-${uid}`, `${shortHash(runDir)}.sock`);
}

/**
 * All runtime file locations for this user and profile.
 *
 * @param {object} [options]
 * @param {Record<string, string|undefined>} [options.env] defaults to process.env
 * @param {string|null} [options.home] overrides DBTK_HOME
 * @param {string} [options.platform] defaults to process.platform
 * @param {number} [options.uid] defaults to the current uid
 * @param {string} [options.sid] Windows: the user's SID (required there; see currentUserSid)
 * @param {(dir: string, uid: number) => boolean} [options.isPrivateDir] the ours-and-0700 check
 * @param {(p: string) => string} [options.realpath] Windows: resolves the home for the pipe name
 */
function runtimePaths(options = {}) {
  const env = options.env || process.env;
  const platform = options.platform || process.platform;
  const uid = options.uid === undefined ? currentUid() : options.uid;
  const privateDir = options.isPrivateDir || isPrivateDir;
  const p = flavour(platform);
  const home = homeFrom(env, options.home, platform);
  const runDir = runtimeDir(env, home, { platform, uid, privateDir });
  let controlSocket;
  if (platform === 'win32') {
    if (!options.sid) throw new TypeError('runtimePaths: a Windows pipe name needs the user SID');
    controlSocket = windowsPipeName(home || expandUser('~', env, platform), options.sid, {
      realpath: options.realpath,
    });
  } else {
    controlSocket = controlSocketPath(env, runDir, { platform, uid });
  }
  const legacyDir = home !== null ? home : p.join(expandUser('~', env, platform), '.db-toolkit');
  return {
    home,
    runDir,
    controlSocket,
    lockFile: p.join(runDir, LOCK_NAME),
    spawnLock: p.join(runDir, SPAWN_LOCK_NAME),
    stateFile: p.join(runDir, STATE_NAME),
    legacyPortFile: p.join(legacyDir, LEGACY_PORT_NAME),
  };
}

let cachedSid = null;

/**
 * The current user's SID on Windows (`whoami /user`), cached. Only called when no state file
 * names the pipe; Node has no API for it and a native module would be a runtime dependency.
 */
function currentUserSid() {
  if (cachedSid) return cachedSid;
  const { execFileSync } = require('node:child_process');
  const out = execFileSync('whoami', ['/user', '/fo', 'csv', '/nh'], {
    encoding: 'utf8',
    windowsHide: true,
  });
  const match = /"(S-1-[0-9-]+)"/.exec(out);
  if (!match) throw new Error(`whoami /user printed no SID: ${out.trim()}`);
  cachedSid = match[1];
  return cachedSid;
}

/**
 * The daemon's data dir, as dbtkd.paths.data_paths computes it (platformdirs' user_data_dir
 * for "db-toolkit" without an app author), POSIX only.
 */
function dataDir({ env = process.env, home, platform = process.platform } = {}) {
  const resolved = homeFrom(env, home, platform);
  if (resolved) return path.join(resolved, 'data');
  const user = expandUser('~', env, platform);
  if (platform === 'darwin') return path.join(user, 'Library', 'Application Support', APP_NAME);
  const base = (env.XDG_DATA_HOME || '').trim() || path.join(user, '.local', 'share');
  return path.join(base, APP_NAME);
}

/**
 * The control endpoint for this process: on POSIX computed; on Windows taken from the state
 * file when a daemon runs (it records the pipe name), else computed from the SID.
 */
function controlEndpoint({ env = process.env, home } = {}) {
  if (process.platform !== 'win32') {
    const computed = runtimePaths({ env, home });
    if (fs.existsSync(computed.controlSocket)) return computed;
    // No daemon at our socket: one started with another runtime dir (a login item vs an ssh
    // session) records its socket next to the data it owns (dbtkd.live.json).
    try {
      const live = JSON.parse(fs.readFileSync(path.join(dataDir({ env, home }), 'dbtkd.live.json'), 'utf8'));
      if (typeof live.control_socket === 'string' && fs.existsSync(live.control_socket)) {
        return { ...computed, controlSocket: live.control_socket };
      }
    } catch {
      // no record: no daemon owns the data dir
    }
    return computed;
  }
  const probe = runtimePaths({ env, home, sid: 'S-0' });
  try {
    const state = JSON.parse(fs.readFileSync(probe.stateFile, 'utf8'));
    if (typeof state.control_socket === 'string' && state.control_socket) {
      return { ...probe, controlSocket: state.control_socket };
    }
  } catch {
    // no daemon wrote a state file: compute the name
  }
  const realpath = (dir) => {
    try {
      return fs.realpathSync.native(dir);
    } catch {
      return dir; // like ntpath.realpath(strict=False): a missing home keeps its name
    }
  };
  return runtimePaths({ env, home, sid: currentUserSid(), realpath });
}

module.exports = {
  APP_NAME,
  SOCKET_PATH_MAX,
  controlEndpoint,
  currentUserSid,
  dataDir,
  isPrivateDir,
  runtimePaths,
  windowsPipeName,
};
