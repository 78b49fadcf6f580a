'use strict';
// CORS for the renderer in a real browser: a page from the Vite dev origin (127.0.0.1:5173)
// fetches /api/v1/status with authHeaders() and opens a WebSocket with webSocketProtocols();
// the same page from another origin fails both.

const assert = require('node:assert/strict');
const http = require('node:http');
const test = require('node:test');

const { BackendManager } = require('../backend-manager');
const { findChromium, launchChromium } = require('../testing/chromium');
const { makeHome, requireDbtkctl } = require('../testing/support');

const VITE_PORT = 5173; // in the daemon's default allowlist as http://127.0.0.1:5173

/** The renderer: what preload hands over (url, headers, protocols), then one fetch, one socket. */
function page(backend) {
  const config = JSON.stringify(backend).replace(/</g, '\\u003c');
  return `<!doctype html><meta charset="utf-8"><title>renderer</title><script>
const backend = ${config};
window.result = (async () => {
  const out = { origin: location.origin };
  try {
    const response = await fetch(backend.url + '/api/v1/status', { headers: backend.headers });
    out.fetch = { ok: true, status: response.status, body: await response.json() };
  } catch (error) {
    out.fetch = { ok: false, error: String(error) };
  }
  out.ws = await new Promise((resolve) => {
    const ws = new WebSocket(backend.url.replace('http:', 'ws:') + '/ws/logs', backend.protocols);
    const timer = setTimeout(() => resolve({ ok: false, error: 'no message in 10 s' }), 10000);
    ws.onmessage = (event) => {
      clearTimeout(timer);
      resolve({ ok: true, protocol: ws.protocol, type: JSON.parse(event.data).type });
      ws.close();
    };
    ws.onerror = () => {
      clearTimeout(timer);
      resolve({ ok: false, error: 'error event' });
    };
  });
  return out;
})();
</script>`;
}

function serve(port, html) {
  const server = http.createServer((request, response) => {
    response.writeHead(request.url === '/' ? 200 : 404, { 'content-type': 'text/html; charset=utf-8' });
    response.end(request.url === '/' ? html : '');
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server));
  });
}

const chromium = findChromium();
const skip = !chromium && process.env.CI !== 'true' ? 'chromium is not installed (apt-get install chromium)' : false;

test('a page from the allowed dev origin reaches the API and streams; a foreign one cannot', { timeout: 120000, skip }, async (t) => {
  assert.ok(chromium, 'chromium is not installed (apt-get install chromium); CI must have it');
  const ctx = makeHome(t);
  const manager = new BackendManager({ home: ctx.home, dbtkctl: requireDbtkctl(), portRange: '0' });
  t.after(() => manager.close());
  const backend = await manager.ensureBackend();
  ctx.pids.add(backend.pid);
  const html = page({
    url: backend.url,
    headers: manager.authHeaders(),
    protocols: manager.webSocketProtocols(),
  });

  let allowed;
  try {
    allowed = await serve(VITE_PORT, html);
  } catch (err) {
    assert.fail(`port ${VITE_PORT} (the Vite dev origin) is taken by another program: ${err.message}`);
  }
  t.after(() => allowed.close());
  const foreign = await serve(0, html);
  t.after(() => foreign.close());

  const browser = await launchChromium(chromium);
  t.after(() => browser.close());

  const good = await browser.evaluatePage(`http://127.0.0.1:${VITE_PORT}/`, 'window.result');
  assert.equal(good.origin, `http://127.0.0.1:${VITE_PORT}`);
  assert.deepEqual(good.fetch.ok && good.fetch.status, 200, JSON.stringify(good.fetch));
  assert.equal(good.fetch.body.pid, backend.pid);
  assert.deepEqual(good.ws, { ok: true, protocol: 'dbtk.v1', type: 'line' });

  const foreignOrigin = `http://127.0.0.1:${foreign.address().port}`;
  const bad = await browser.evaluatePage(`${foreignOrigin}/`, 'window.result');
  assert.equal(bad.origin, foreignOrigin);
  assert.equal(bad.fetch.ok, false, `a foreign origin fetched: ${JSON.stringify(bad.fetch)}`);
  assert.match(bad.fetch.error, /TypeError/);
  assert.equal(bad.ws.ok, false, `a foreign origin opened a WebSocket: ${JSON.stringify(bad.ws)}`);
});
