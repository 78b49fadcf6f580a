'use strict';
/**
 * Headless Chromium driven over the DevTools protocol with the module's own WebSocket client:
 * no puppeteer, no playwright. `launchChromium()` starts the Debian `chromium` with a
 * throw-away profile and `--remote-debugging-port=0`, reads the DevTools URL from stderr, and
 * returns `{evaluatePage(url, expression), close()}`. `close()` kills the browser's process
 * group (it was started as its own group) and removes the profile.
 */

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');

const { WebSocketClient } = require('../lib/websocket');

const CANDIDATES = ['/usr/bin/chromium', '/usr/lib/chromium/chromium', '/usr/bin/chromium-browser'];
const LAUNCH_TIMEOUT_MS = 30000;
const CALL_TIMEOUT_MS = 30000;

function findChromium() {
  if (process.env.CHROMIUM) return process.env.CHROMIUM;
  return CANDIDATES.find((candidate) => fs.existsSync(candidate)) || null;
}

/** A DevTools protocol session over one WebSocket (flat sessions for page targets). */
class Cdp {
  constructor(ws) {
    this.ws = ws;
    this.ids = 0;
    this.pending = new Map();
    this.listeners = new Set();
    ws.on('message', (text) => {
      const message = JSON.parse(text);
      if (message.id !== undefined) {
        const entry = this.pending.get(message.id);
        if (!entry) return;
        this.pending.delete(message.id);
        clearTimeout(entry.timer);
        if (message.error) entry.reject(new Error(`${entry.method}: ${message.error.message}`));
        else entry.resolve(message.result);
      } else {
        for (const listener of this.listeners) listener(message);
      }
    });
    ws.on('close', () => {
      for (const entry of this.pending.values()) entry.reject(new Error('DevTools connection closed'));
      this.pending.clear();
    });
  }

  send(method, params = {}, sessionId = undefined) {
    this.ids += 1;
    const id = this.ids;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new Error(`${method}: no answer from Chromium in ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer, method });
      this.ws.send(JSON.stringify({ id, method, params, sessionId }));
    });
  }

  waitEvent(method, sessionId) {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.listeners.delete(listener);
        reject(new Error(`no ${method} event in ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
      const listener = (message) => {
        if (message.method === method && message.sessionId === sessionId) {
          clearTimeout(timer);
          this.listeners.delete(listener);
          resolve(message.params);
        }
      };
      this.listeners.add(listener);
    });
  }
}

async function launchChromium(executable) {
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), 'dbtk-chromium-'));
  const browser = spawn(
    executable,
    [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-dev-shm-usage',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-extensions',
      '--disable-sync',
      '--no-first-run',
      '--no-default-browser-check',
      '--remote-debugging-address=127.0.0.1',
      '--remote-debugging-port=0',
      `--user-data-dir=${profile}`,
      'about:blank',
    ],
    { stdio: ['ignore', 'ignore', 'pipe'], detached: true },
  );
  let stderr = '';
  const close = async () => {
    if (browser.exitCode === null && browser.signalCode === null) {
      const exited = new Promise((resolve) => browser.once('exit', resolve));
      try {
        process.kill(-browser.pid, 'SIGKILL');
      } catch {
        // already gone
      }
      await exited;
    }
    fs.rmSync(profile, { recursive: true, force: true });
  };
  let devtoolsUrl;
  try {
    devtoolsUrl = await new Promise((resolve, reject) => {
      const timer = setTimeout(
        () => reject(new Error(`Chromium printed no DevTools URL in ${LAUNCH_TIMEOUT_MS} ms:\n${stderr}`)),
        LAUNCH_TIMEOUT_MS,
      );
      browser.stderr.setEncoding('utf8').on('data', (chunk) => {
        stderr += chunk;
        const match = /DevTools listening on (ws:\/\/\S+)/.exec(stderr);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]);
        }
      });
      browser.once('exit', (code, signal) => {
        clearTimeout(timer);
        reject(new Error(`Chromium exited (${code ?? signal}) before it listened:\n${stderr}`));
      });
      browser.once('error', reject);
    });
  } catch (err) {
    await close();
    throw err;
  }
  const ws = new WebSocketClient(devtoolsUrl, []);
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
  });
  const cdp = new Cdp(ws);

  /** Load `url` in a fresh tab and return the value of `expression` (promises awaited). */
  async function evaluatePage(url, expression) {
    const { targetId } = await cdp.send('Target.createTarget', { url: 'about:blank' });
    const { sessionId } = await cdp.send('Target.attachToTarget', { targetId, flatten: true });
    try {
      await cdp.send('Page.enable', {}, sessionId);
      const loaded = cdp.waitEvent('Page.loadEventFired', sessionId);
      const navigation = await cdp.send('Page.navigate', { url }, sessionId);
      if (navigation.errorText) throw new Error(`cannot load ${url}: ${navigation.errorText}`);
      await loaded;
      const { result, exceptionDetails } = await cdp.send(
        'Runtime.evaluate',
        { expression, awaitPromise: true, returnByValue: true },
        sessionId,
      );
      if (exceptionDetails) throw new Error(`page script failed: ${JSON.stringify(exceptionDetails)}`);
      return result.value;
    } finally {
      await cdp.send('Target.closeTarget', { targetId }).catch(() => {});
    }
  }

  return {
    evaluatePage,
    async close() {
      ws.close();
      await close();
    },
  };
}

module.exports = { findChromium, launchChromium };
