// A node-coap device for tests/integration/test_down.py.
// node device.js observe|get URL: prints one JSON line per response or
// notification ({code, len, observe}) and, for get, exits after the first.
'use strict';
const coap = require('coap');

const [mode, url] = process.argv.slice(2);
const u = new URL(url);
const req = coap.request({ hostname: u.hostname, port: Number(u.port), pathname: u.pathname,
                           observe: mode === 'observe', confirmable: true });
const say = (o) => process.stdout.write(JSON.stringify(o) + '\n');
req.on('response', (res) => {
  if (mode === 'get') {
    say({ code: res.code, len: res.payload.length });
    process.exit(0);
  }
  say({ code: res.code, len: res.payload.length, first: true });
  res.on('data', (chunk) => say({ code: res.code, len: chunk.length }));
  res.on('error', (e) => say({ error: String(e) }));
});
req.on('error', (e) => {
  say({ error: String(e) });
  process.exit(1);
});
req.end();
