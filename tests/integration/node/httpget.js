// httpget.js URL [OUTFILE]: one HTTP GET with node's http module (curl is not among the test dependencies).
// Prints "STATUS CONTENT-TYPE" on one line and writes the body to OUTFILE (default: after that line on
// stdout).  Exits 0 on any HTTP response, 1 (printing "ERROR message") when there is none within 10 s.
'use strict';

const fs = require('fs');
const http = require('http');

const [url, outfile] = process.argv.slice(2);
const req = http.get(url, { timeout: 10000 }, (res) => {
  const chunks = [];
  res.on('data', (d) => chunks.push(d));
  res.on('end', () => {
    const body = Buffer.concat(chunks);
    console.log(`${res.statusCode} ${res.headers['content-type'] || '-'}`);
    if (outfile) fs.writeFileSync(outfile, body);
    else process.stdout.write(body);
  });
});
req.on('timeout', () => req.destroy(new Error('timeout after 10 s')));
req.on('error', (e) => {
  console.log(`ERROR ${e.message}`);
  process.exit(1);
});
