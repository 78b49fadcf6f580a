'use strict';
// The renderer module (electron/renderer/backend-client.js) in a real browser against a real
// daemon: a page from an allowed origin, given what the preload would expose, saves a SQLite
// connection, runs a query through the axios interceptor's config, opens /ws/backups and sees
// the backup it started; an `upgraded` event makes the next call ask the preload again.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const test = require('node:test');

const { findChromium, launchChromium } = require('../testing/chromium');
const { backendForPage, makeHome } = require('../testing/support');

const MODULE = fs.readFileSync(path.join(__dirname, '..', 'renderer', 'backend-client.js'), 'utf8');

/** The renderer: a stand-in for the preload (counting its calls), then the module at work. */
function page(backend, database) {
  const config = JSON.stringify({ backend, database }).replace(/</g, '\\u003c');
  return `<!doctype html><meta charset="utf-8"><title>renderer</title><script type="module">
import { createBackendClient } from '/backend-client.js';
const { backend, database } = ${config};
let asked = 0;
let fire = null;
window.dbtk = {
  backend: async () => { asked += 1; return backend; },
  onBackendEvent: (callback) => { fire = callback; },
};
window.result = (async () => {
  const out = { origin: location.origin };
  try {
    const client = createBackendClient();
    const created = await client.apiFetch('/connections', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: 'renderer', db_type: 'sqlite', host: '', port: 0, database, username: '', password: '' }),
    });
    const connection = await created.json();
    out.created = created.status;

    // What axios does with the interceptor's config: baseURL + url, the headers as given.
    const config = await client.axiosInterceptor({ url: '/connections/' + connection.id + '/query', headers: {} });
    const answer = await fetch(config.baseURL + config.url, {
      method: 'POST',
      headers: { ...config.headers, 'Content-Type': 'application/json' },
      body: JSON.stringify({ query: 'SELECT 41 + 1 AS answer', limit: 1000, offset: 0, timeout: 30 }),
    });
    const query = await answer.json();
    out.query = { status: answer.status, success: query.success, rows: query.rows };
    out.baseURL = config.baseURL;

    const ws = await client.openSocket('backups');
    out.ws = await new Promise((resolve) => {
      const timer = setTimeout(() => resolve({ ok: false, error: 'no backup_update in 15 s', seen: window.seen }), 15000);
      // The stream may announce the backup before the POST's answer arrives: wait for both.
      let posted = null;
      ws.onopen = () => {
        posted = client.apiFetch('/backups', {
          method: 'POST',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ connection_id: connection.id, name: 'from-renderer' }),
        }).then((started) => { out.backupStatus = started.status; });
      };
      ws.onmessage = async (event) => {
        const message = JSON.parse(event.data); (window.seen = window.seen || []).push(message.type);
        if (message.type !== 'backup_update') return;
        await posted;
        clearTimeout(timer);
        resolve({ ok: true, protocol: ws.protocol, type: message.type });
        ws.close();
      };
      ws.onerror = () => { clearTimeout(timer); resolve({ ok: false, error: 'error event' }); };
    });

    out.askedBefore = asked;
    await client.info();
    out.askedCached = asked;
    fire('restarted', {});
    await client.info();
    out.askedAfterRestarted = asked;
    fire('upgraded', {});
    await client.info();
    out.askedAfterUpgraded = asked;
  } catch (error) {
    out.error = String(error && error.stack || error);
  }
  return out;
})();
</script>`;
}

function serve(html) {
  const server = http.createServer((request, response) => {
    if (request.url === '/') {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      response.end(html());
    } else if (request.url === '/backend-client.js') {
      response.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      response.end(MODULE);
    } else {
      response.writeHead(404);
      response.end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

const chromium = findChromium();
const skip = !chromium && process.env.CI !== 'true' ? 'chromium is not installed (apt-get install chromium)' : false;

test('the renderer module queries, streams backups and asks again after an upgrade', { timeout: 120000, skip }, async (t) => {
  assert.ok(chromium, 'chromium is not installed (apt-get install chromium); CI must have it');
  const ctx = makeHome(t);
  let backend = null;
  const site = await serve(() => page(backend, path.join(ctx.home, 'renderer.db')));
  t.after(() => site.close());
  const origin = `http://127.0.0.1:${site.address().port}`;
  // The daemon this test starts allows the page's origin (and only it).
  let started;
  ({ started, backend } = await backendForPage(t, ctx, origin));

  const browser = await launchChromium(chromium);
  t.after(() => browser.close());
  const result = await browser.evaluatePage(`${origin}/`, 'window.result');

  assert.equal(result.error, undefined, result.error);
  assert.equal(result.origin, origin);
  assert.ok([200, 201].includes(result.created), `POST /connections answered ${result.created}`);
  assert.equal(result.baseURL, `${started.url}/api/v1`);
  assert.deepEqual(result.query, { status: 200, success: true, rows: [[42]] });
  assert.ok([200, 201, 202].includes(result.backupStatus), `POST /backups answered ${result.backupStatus}`);
  assert.deepEqual(result.ws, { ok: true, protocol: 'dbtk.v1', type: 'backup_update' });
  // One question to the preload for all of the above; `restarted` keeps it, `upgraded` does not.
  assert.equal(result.askedBefore, 1);
  assert.equal(result.askedCached, 1);
  assert.equal(result.askedAfterRestarted, 1);
  assert.equal(result.askedAfterUpgraded, 2);
});
