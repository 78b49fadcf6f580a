'use strict';
/**
 * "A window is starting the daemon": a marker file in the runtime dir, created with O_EXCL,
 * holding the starter's pid. Only an optimisation over dbtkctl's spawn lock (a kernel lock
 * Node cannot take without a native module): the process that creates the marker runs
 * dbtkctl; the others watch the control socket instead of each starting a Python process to
 * wait on that lock. A marker whose pid is gone, or older than the start deadline, is stale
 * and removed. The runtime dir is used only if it is (or can be made) a real 0700 directory
 * of ours, as dbtkd requires; otherwise every window just runs dbtkctl.
 */

const fs = require('node:fs');
const path = require('node:path');

const MARKER_NAME = 'electron-start.pid';
// dbtkctl gives a start 40 s; a marker older than that belongs to a start that is over.
const STALE_AFTER_MS = 45000;

function privateDir(dir) {
  try {
    fs.mkdirSync(dir, { mode: 0o700 }); // the last component only: never creates a home
  } catch (err) {
    if (err.code !== 'EEXIST') return false;
  }
  try {
    const st = fs.lstatSync(dir);
    const uid = typeof process.getuid === 'function' ? process.getuid() : st.uid;
    return st.isDirectory() && st.uid === uid && (process.platform === 'win32' || (st.mode & 0o077) === 0);
  } catch {
    return false;
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return err.code === 'EPERM';
  }
}

/** The marker's pid, or null when it is missing or stale (a stale one is removed). */
function holder(file) {
  let text;
  let st;
  try {
    st = fs.statSync(file);
    text = fs.readFileSync(file, 'utf8');
  } catch {
    return null;
  }
  const pid = Number.parseInt(text, 10);
  if (Number.isInteger(pid) && pid > 0 && alive(pid) && Date.now() - st.mtimeMs < STALE_AFTER_MS) {
    return pid;
  }
  if (!text && Date.now() - st.mtimeMs < 1000) return -1; // being written right now
  fs.rmSync(file, { force: true });
  return null;
}

/** Try to become the starter: `{owned, unusable, file, release()}`. */
function claim(runDir) {
  const file = path.join(runDir, MARKER_NAME);
  const none = { owned: false, unusable: true, file, release() {} };
  if (!privateDir(runDir)) return none;
  for (let attempt = 0; attempt < 2; attempt += 1) {
    let fd;
    try {
      fd = fs.openSync(file, 'wx', 0o600);
    } catch (err) {
      if (err.code !== 'EEXIST') return none;
      if (holder(file) !== null) return { owned: false, unusable: false, file, release() {} };
      continue; // it was stale and is gone: try once more
    }
    fs.writeSync(fd, `${process.pid}\n`);
    fs.closeSync(fd);
    return {
      owned: true,
      unusable: false,
      file,
      release() {
        try {
          if (Number.parseInt(fs.readFileSync(file, 'utf8'), 10) === process.pid) fs.rmSync(file);
        } catch {
          // already gone
        }
      },
    };
  }
  return none;
}

/** True while another process's marker stands. */
function held(marker) {
  return holder(marker.file) !== null;
}

module.exports = { MARKER_NAME, claim, held };
