'use strict';
// electron/renderer/backend-client.js without a browser: what it caches, what it refuses, and
// how it fills axios configs of both header kinds. The browser test is renderer-client-chromium.

const assert = require('node:assert/strict');
const path = require('node:path');
const test = require('node:test');
const { pathToFileURL } = require('node:url');

const MODULE = pathToFileURL(path.join(__dirname, '..', 'renderer', 'backend-client.js')).href;
const ANSWER = {
  url: 'http://127.0.0.1:8123',
  headers: { Authorization: 'Bearer secret-token' },
  protocols: ['dbtk.v1', 'dbtk.bearer.secret-token'],
};

test('without a preload bridge the module says what it expected', async () => {
  const { createBackendClient } = await import(MODULE);
  assert.throws(() => createBackendClient(), /expected window\.dbtk\.backend\(\)/);
});

test('a failed question is not cached: the next call asks again', async () => {
  const { createBackendClient } = await import(MODULE);
  let calls = 0;
  const client = createBackendClient({
    backend: async () => {
      calls += 1;
      if (calls === 1) throw new Error('daemon starting');
      return ANSWER;
    },
  });
  await assert.rejects(client.info(), /daemon starting/);
  assert.deepEqual(await client.info(), ANSWER);
  assert.equal(calls, 2);
});

test('an answer that is not a loopback http URL is refused, without quoting the token', async () => {
  const { createBackendClient } = await import(MODULE);
  for (const url of ['http://evil.example:80', 'https://127.0.0.1:8000', 'http://127.0.0.1:8000/x']) {
    const client = createBackendClient({ backend: async () => ({ ...ANSWER, url }) });
    await assert.rejects(client.info(), (error) => {
      assert.match(error.message, /expected \{url: "http:\/\/127\.0\.0\.1:PORT"/);
      assert.doesNotMatch(error.message, /secret-token/);
      return true;
    });
  }
});

test('the interceptor fills plain header objects and AxiosHeaders-like ones', async () => {
  const { createBackendClient } = await import(MODULE);
  const client = createBackendClient({ backend: async () => ANSWER });
  const plain = await client.axiosInterceptor({ url: '/connections' });
  assert.equal(plain.baseURL, 'http://127.0.0.1:8123/api/v1');
  assert.equal(plain.headers.Authorization, 'Bearer secret-token');

  const set = new Map();
  const axiosLike = await client.axiosInterceptor({ url: '/settings', headers: { set: (k, v) => set.set(k, v) } });
  assert.equal(axiosLike.baseURL, 'http://127.0.0.1:8123/api/v1');
  assert.equal(set.get('Authorization'), 'Bearer secret-token');
});

test('sockets go to /ws/<name> on the ws scheme with the subprotocols', async () => {
  const { createBackendClient } = await import(MODULE);
  const opened = [];
  class FakeSocket {
    constructor(url, protocols) {
      opened.push({ url, protocols });
    }
  }
  const client = createBackendClient({ backend: async () => ANSWER, WebSocket: FakeSocket });
  await client.openSocket('terminal');
  assert.deepEqual(opened, [{ url: 'ws://127.0.0.1:8123/ws/terminal', protocols: ANSWER.protocols }]);
});
