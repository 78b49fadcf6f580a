'use strict';
// Two windows (two headless Chromium pages) on one real daemon, each with the renderer module:
// page A saves a connection and creates a table; page B, watching changes, hears both and its
// cached connection list and schema cache are gone. Then the worker is killed between two
// changes: B still hears both in order, or a `resync` (issue 19).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const http = require('node:http');
const path = require('node:path');
const test = require('node:test');

const { findChromium, launchChromium } = require('../testing/chromium');
const { backendForPage, makeHome, status, waitFor } = require('../testing/support');

const MODULE = fs.readFileSync(path.join(__dirname, '..', 'renderer', 'backend-client.js'), 'utf8');

function preload(backend) {
  const config = JSON.stringify(backend).replace(/</g, '\\u003c');
  return `window.dbtk = { backend: async () => (${config}), onBackendEvent: () => {} };`;
}

/** Window B: caches like the UI's, watches changes, reports each to the test server. */
function watcherPage(backend) {
  return `<!doctype html><meta charset="utf-8"><script type="module">
${preload(backend)}
import { createBackendClient } from '/backend-client.js';
const report = (what) => fetch('/report', { method: 'POST', body: JSON.stringify(what) });
localStorage.setItem('db_toolkit_connections', JSON.stringify({ value: [], timestamp: Date.now(), ttl: 1800000 }));
localStorage.setItem('db_toolkit_settings', JSON.stringify({ value: {}, timestamp: Date.now(), ttl: 3600000 }));
const events = [];
window.result = new Promise((resolve) => {
  window.addEventListener('dbtk:change', async (event) => {
    const detail = event.detail;
    events.push(detail);
    const cached = Object.keys(localStorage).filter((k) => k.startsWith('db_toolkit_schema_'));
    await report({ type: detail.type, kind: detail.kind, id: detail.id || detail.connection_id, seq: detail.seq,
                   connectionsCached: localStorage.getItem('db_toolkit_connections') !== null,
                   settingsCached: localStorage.getItem('db_toolkit_settings') !== null, schemaKeys: cached,
                   idbKeys: await idbKeys() });
  });
  window.finish = () => resolve(events);
});
const client = createBackendClient();
client.watchChanges();
// Ready once the feed has said hello: poll a second socket's first frame.
const probe = await client.openSocket('events');
probe.onmessage = async (event) => { probe.close(); await report({ type: 'ready', hello: JSON.parse(event.data) }); };
// The UI's IndexedDB cache (services/indexedDB.js: db-toolkit-cache v2, stores keyed by 'key').
const openCache = () => new Promise((resolve, reject) => {
  const request = indexedDB.open('db-toolkit-cache', 2);
  request.onupgradeneeded = () => {
    for (const name of ['schema-analysis', 'table-analysis', 'query-tabs', 'schema-cache', 'table-info']) {
      request.result.createObjectStore(name, { keyPath: 'key' });
    }
  };
  request.onsuccess = () => resolve(request.result);
  request.onerror = () => reject(request.error);
});
const idbKeys = async () => {
  const db = await openCache();
  const keys = await new Promise((resolve) => {
    const out = [];
    const tx = db.transaction(['schema-cache', 'table-info']);
    for (const name of ['schema-cache', 'table-info']) {
      tx.objectStore(name).getAllKeys().onsuccess = (e) => out.push(...e.target.result.map((k) => name + ':' + k));
    }
    tx.oncomplete = () => resolve(out.sort());
  });
  db.close();
  return keys;
};
// Seed the schema caches of one connection (and one of another), like the UI's schemaAPI.
window.seedSchema = async (id) => {
  localStorage.setItem('db_toolkit_schema_' + id, JSON.stringify({ value: {}, timestamp: Date.now(), ttl: 900000 }));
  const db = await openCache();
  await new Promise((resolve) => {
    const tx = db.transaction(['schema-cache', 'table-info'], 'readwrite');
    tx.objectStore('schema-cache').put({ key: id, data: {} });
    tx.objectStore('schema-cache').put({ key: 'other', data: {} });
    tx.objectStore('table-info').put({ key: id + '_main_t', data: {} });
    tx.oncomplete = resolve;
  });
  db.close();
};
const poll = async () => {
  const state = await fetch('/state').then((r) => r.json());
  if (state.seed && !window.seeded) { window.seeded = true; await window.seedSchema(state.seed); await report({ type: 'seeded' }); }
  if (state.done) window.finish();
  else setTimeout(poll, 20);
};
poll();
</script>`;
}

/** Window A: one action per load, named in the URL. */
function actorPage(backend, database) {
  return `<!doctype html><meta charset="utf-8"><script type="module">
${preload(backend)}
import { createBackendClient } from '/backend-client.js';
const client = createBackendClient();
const action = new URL(location.href).searchParams.get('action');
const json = { 'Content-Type': 'application/json' };
window.result = (async () => {
  if (action.startsWith('create:')) {
    const name = action.slice(7);
    const response = await client.apiFetch('/connections', { method: 'POST', headers: json,
      body: JSON.stringify({ name, db_type: 'sqlite', host: '', port: 0, database: ${JSON.stringify(database)} + name + '.db', username: '', password: '' }) });
    return { status: response.status, body: await response.json() };
  }
  if (action.startsWith('table:')) {
    const response = await client.apiFetch('/connections/' + action.slice(6) + '/query', { method: 'POST', headers: json,
      body: JSON.stringify({ query: 'CREATE TABLE made_in_a (id INTEGER PRIMARY KEY)', limit: 1000, offset: 0, timeout: 30 }) });
    return { status: response.status, body: await response.json() };
  }
  return { error: 'unknown action ' + action };
})();
</script>`;
}

function serve(pages) {
  const state = { done: false, seed: null };
  const reports = [];
  const server = http.createServer((request, response) => {
    const url = new URL(request.url, 'http://x');
    if (url.pathname === '/backend-client.js') {
      response.writeHead(200, { 'content-type': 'text/javascript; charset=utf-8' });
      response.end(MODULE);
    } else if (url.pathname === '/report') {
      let body = '';
      request.on('data', (chunk) => (body += chunk));
      request.on('end', () => {
        reports.push(JSON.parse(body));
        response.end('{}');
      });
    } else if (url.pathname === '/state') {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify(state));
    } else if (pages[url.pathname]) {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      response.end(pages[url.pathname]());
    } else {
      response.writeHead(404);
      response.end();
    }
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve({ server, state, reports }));
  });
}

const chromium = findChromium();
const skip = !chromium && process.env.CI !== 'true' ? 'chromium is not installed (apt-get install chromium)' : false;

test('a change made in one window reaches the other, its caches cleared, across a worker kill', { timeout: 120000, skip }, async (t) => {
  assert.ok(chromium, 'chromium is not installed (apt-get install chromium); CI must have it');
  const ctx = makeHome(t);
  let backend = null;
  const pages = {
    '/b': () => watcherPage(backend),
    '/a': () => actorPage(backend, path.join(ctx.home, 'db-')),
  };
  const site = await serve(pages);
  t.after(() => site.server.close());
  const origin = `http://127.0.0.1:${site.server.address().port}`;
  ({ backend } = await backendForPage(t, ctx, origin));

  const browser = await launchChromium(chromium);
  t.after(() => browser.close());
  const watcher = browser.evaluatePage(`${origin}/b`, 'window.result');
  const seen = (predicate, what) => waitFor(() => site.reports.find(predicate), { timeoutMs: 20000, what });
  await seen((r) => r.type === 'ready', 'window B subscribed');

  const act = (action) => browser.evaluatePage(`${origin}/a?action=${encodeURIComponent(action)}`, 'window.result');
  const first = await act('create:one');
  assert.equal(first.status, 201, JSON.stringify(first));
  const created = await seen((r) => r.kind === 'connection_created' && r.id === first.body.id, 'B hears connection one');
  assert.equal(created.connectionsCached, false, "B's cached connection list was not cleared");
  assert.equal(created.settingsCached, true, 'a connection change cleared the settings cache too');

  site.state.seed = first.body.id; // B caches the schema tree of connection one, as the UI does
  await seen((r) => r.type === 'seeded', 'B cached a schema tree');
  const table = await act(`table:${first.body.id}`);
  assert.equal(table.body.success, true, JSON.stringify(table));
  const schema = await seen((r) => r.kind === 'schema_changed' && r.id === first.body.id, 'B hears the table');
  assert.deepEqual(schema.schemaKeys, [], "B's schema cache for the connection was not cleared");
  assert.deepEqual(schema.idbKeys, ['schema-cache:other'], "B's IndexedDB schema entries were not cleared");

  // kill -9 of the worker between two changes.
  const before = await status(ctx.home);
  process.kill(before.worker_pid, 'SIGKILL');
  await waitFor(async () => {
    const now = await status(ctx.home).catch(() => null);
    return now && now.state === 'running' && now.worker_pid !== before.worker_pid;
  }, { timeoutMs: 20000, what: 'a new worker' });
  const second = await act('create:two');
  assert.equal(second.status, 201, JSON.stringify(second));
  await seen(
    (r) => r.type === 'resync' || (r.kind === 'connection_created' && r.id === second.body.id),
    'B hears connection two, or a resync',
  );
  site.state.done = true;
  const events = await watcher;
  const order = events.map((e) => (e.type === 'resync' ? 'resync' : `${e.kind}:${e.id || e.connection_id}`));
  const one = order.indexOf(`connection_created:${first.body.id}`);
  const after = order.slice(order.indexOf(`schema_changed:${first.body.id}`) + 1);
  assert.ok(one >= 0 && one < order.indexOf(`schema_changed:${first.body.id}`), order.join(', '));
  assert.ok(
    after.includes('resync') || after.includes(`connection_created:${second.body.id}`),
    `after the kill B got neither connection two nor a resync: ${order.join(', ')}`,
  );
});
