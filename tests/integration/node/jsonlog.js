// jsonlog.js FILE...: checks pglane's log_format = json output.  Every line must be one JSON object with
// string fields ts (ISO 8601, UTC), level (debug|info|warning|error) and msg.  A line about a connection
// (it has "conn") must carry "peer"; a line of a routed session ("routed to ...", "closed in state active")
// must carry "app" and "timeline" too.
// Prints "ok: N lines, R routed, D disconnections" and exits 0, or one line per problem and exits 1.
'use strict';

const fs = require('fs');

const errors = [];
let nlines = 0, nrouted = 0, nclosed = 0;
for (const file of process.argv.slice(2)) {
  const text = fs.readFileSync(file, 'utf8');
  if (text.length > 0 && !text.endsWith('\n')) errors.push(`${file}: the last line is not terminated`);
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  lines.forEach((line, i) => {
    const where = `${file}:${i + 1}`;
    nlines++;
    let o;
    try {
      o = JSON.parse(line);
    } catch (e) {
      errors.push(`${where}: not JSON (${e.message}): ${line.slice(0, 160)}`);
      return;
    }
    if (o === null || typeof o !== 'object' || Array.isArray(o)) {
      errors.push(`${where}: not a JSON object`);
      return;
    }
    if (typeof o.ts !== 'string' || !/^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/.test(o.ts))
      errors.push(`${where}: ts missing or not ISO 8601 UTC: ${JSON.stringify(o.ts)}`);
    if (!['debug', 'info', 'warning', 'error'].includes(o.level))
      errors.push(`${where}: level missing or unknown: ${JSON.stringify(o.level)}`);
    if (typeof o.msg !== 'string' || o.msg === '') errors.push(`${where}: msg missing`);
    if ('conn' in o && (typeof o.peer !== 'string' || o.peer === ''))
      errors.push(`${where}: a connection line without peer`);
    const routed = typeof o.msg === 'string' && /^routed to /.test(o.msg);
    const closed = typeof o.msg === 'string' && /^closed in state active/.test(o.msg);
    nrouted += routed;
    nclosed += closed;
    if (routed || closed) {
      for (const k of ['conn', 'peer', 'app', 'timeline'])
        if (o[k] === undefined || o[k] === '') errors.push(`${where}: a session line without ${k}: ${line.slice(0, 160)}`);
    }
  });
}
if (errors.length > 0) {
  for (const e of errors.slice(0, 20)) console.log(e);
  if (errors.length > 20) console.log(`... and ${errors.length - 20} more`);
  process.exit(1);
}
console.log(`ok: ${nlines} lines, ${nrouted} routed, ${nclosed} disconnections`);
