// promcheck.js [FILE]: checks that FILE (default: stdin) is valid Prometheus text exposition format 0.0.4,
// as Prometheus' own text parser would accept it, plus the histogram rules a scraper relies on:
//   - every line is empty, a comment, "# HELP name text", "# TYPE name type" or a sample
//     "name[{label="value",...}] value [timestamp]"
//   - metric names match [a-zA-Z_:][a-zA-Z0-9_:]*, label names [a-zA-Z_][a-zA-Z0-9_]*, label values are
//     quoted with only \\, \" and \n escapes, no label repeats within a sample
//   - every sample's family has a "# TYPE" line before its first sample; one TYPE and one HELP per family;
//     the samples of a family are contiguous; no series (name and label set) appears twice
//   - values parse as floats (NaN, +Inf, -Inf allowed); counters are never negative
//   - histograms: per label set, buckets carry an le label, le increases, counts are cumulative
//     (non-decreasing), the last bucket is le="+Inf" and equals _count; _sum and _count are present
// Prints "ok: N families, M samples" and exits 0, or prints one line per problem ("LINE: message") and
// exits 1.
'use strict';

const fs = require('fs');

const NAME_RE = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL_RE = /^[a-zA-Z_][a-zA-Z0-9_]*$/;
const TYPES = new Set(['counter', 'gauge', 'histogram', 'summary', 'untyped']);

function parseValue(s) {
  if (s === 'NaN') return NaN;
  if (s === '+Inf' || s === 'Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  // Go's strconv.ParseFloat: decimal or exponent notation (hex floats are legal there but unused here).
  if (!/^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(s)) return undefined;
  return Number(s);
}

// Parses `{a="x",b="y"}` starting at s[i] === '{'; returns { labels, end } or throws.
function parseLabels(s, i) {
  const labels = [];
  i++; // '{'
  for (;;) {
    while (s[i] === ' ') i++;
    if (s[i] === '}') return { labels, end: i + 1 };
    const m = /^[a-zA-Z_][a-zA-Z0-9_]*/.exec(s.slice(i));
    if (!m) throw new Error(`bad label name at column ${i + 1}`);
    const name = m[0];
    i += name.length;
    while (s[i] === ' ') i++;
    if (s[i] !== '=') throw new Error(`expected '=' after label ${name}`);
    i++;
    while (s[i] === ' ') i++;
    if (s[i] !== '"') throw new Error(`label ${name}: value is not quoted`);
    i++;
    let v = '';
    for (;;) {
      if (i >= s.length) throw new Error(`label ${name}: unterminated value`);
      const ch = s[i];
      if (ch === '"') break;
      if (ch === '\\') {
        const e = s[i + 1];
        if (e === '\\') v += '\\';
        else if (e === '"') v += '"';
        else if (e === 'n') v += '\n';
        else throw new Error(`label ${name}: invalid escape \\${e}`);
        i += 2;
        continue;
      }
      v += ch;
      i++;
    }
    i++; // closing quote
    if (labels.some((l) => l[0] === name)) throw new Error(`label ${name} repeated`);
    labels.push([name, v]);
    while (s[i] === ' ') i++;
    if (s[i] === ',') {
      i++;
      continue;
    }
    if (s[i] === '}') return { labels, end: i + 1 };
    throw new Error(`expected ',' or '}' at column ${i + 1}`);
  }
}

function check(text) {
  const errors = [];
  const families = new Map(); // name -> { type, help, samples: [], closed }
  const seriesSeen = new Set();
  let current = null; // family whose samples are being read
  let nsamples = 0;

  const family = (name) => {
    let f = families.get(name);
    if (!f) {
      f = { name, type: null, help: false, samples: [], started: false, closed: false };
      families.set(name, f);
    }
    return f;
  };
  // The family a sample name belongs to: histogram/summary children map to their declared parent.
  const familyOf = (name) => {
    for (const suffix of ['_bucket', '_sum', '_count']) {
      if (name.endsWith(suffix)) {
        const base = name.slice(0, -suffix.length);
        const f = families.get(base);
        if (f && (f.type === 'histogram' || (f.type === 'summary' && suffix !== '_bucket'))) return base;
      }
    }
    return name;
  };
  const enter = (f, lineNo) => {
    if (current === f) return;
    if (current) current.closed = true;
    if (f.closed) errors.push(`${lineNo}: samples of ${f.name} are not contiguous`);
    current = f;
  };

  if (text.length > 0 && !text.endsWith('\n')) errors.push('the exposition does not end with a newline');
  const lines = text.split('\n');
  if (lines[lines.length - 1] === '') lines.pop();
  lines.forEach((raw, idx) => {
    const lineNo = idx + 1;
    const line = raw.replace(/\r$/, '');
    if (raw.endsWith('\r')) errors.push(`${lineNo}: carriage return`);
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const m = /^#\s+(HELP|TYPE)\s+(\S+)(?:\s+(.*))?$/.exec(line);
      if (!m) return; // an ordinary comment
      const [, kind, name, rest] = m;
      if (!NAME_RE.test(name)) errors.push(`${lineNo}: invalid metric name in ${kind}: ${name}`);
      const f = family(name);
      if (kind === 'HELP') {
        if (f.help) errors.push(`${lineNo}: second HELP for ${name}`);
        f.help = true;
      } else {
        const type = (rest || '').trim();
        if (!TYPES.has(type)) errors.push(`${lineNo}: unknown type "${type}" for ${name}`);
        if (f.type) errors.push(`${lineNo}: second TYPE for ${name}`);
        if (f.started) errors.push(`${lineNo}: TYPE for ${name} after its samples`);
        f.type = type;
      }
      enter(f, lineNo);
      return;
    }
    // A sample.
    const nm = /^[^{\s]+/.exec(line);
    const name = nm ? nm[0] : '';
    if (!NAME_RE.test(name)) {
      errors.push(`${lineNo}: invalid metric name "${name}"`);
      return;
    }
    let i = name.length;
    let labels = [];
    try {
      if (line[i] === '{') {
        const r = parseLabels(line, i);
        labels = r.labels;
        i = r.end;
      }
    } catch (e) {
      errors.push(`${lineNo}: ${e.message}`);
      return;
    }
    for (const [ln] of labels) if (!LABEL_RE.test(ln)) errors.push(`${lineNo}: invalid label name ${ln}`);
    const rest = line.slice(i);
    if (!/^[ \t]/.test(rest)) {
      errors.push(`${lineNo}: no blank between the series and its value`);
      return;
    }
    const parts = rest.trim().split(/[ \t]+/);
    if (parts.length < 1 || parts.length > 2) {
      errors.push(`${lineNo}: expected a value and an optional timestamp, got "${rest.trim()}"`);
      return;
    }
    const value = parseValue(parts[0]);
    if (value === undefined) errors.push(`${lineNo}: value "${parts[0]}" is not a number`);
    if (parts.length === 2 && !/^-?\d+$/.test(parts[1])) errors.push(`${lineNo}: bad timestamp "${parts[1]}"`);

    const fname = familyOf(name);
    const f = families.get(fname);
    if (!f || !f.type) {
      errors.push(`${lineNo}: ${name} has no preceding # TYPE line`);
      family(fname);
    }
    const fam = families.get(fname);
    enter(fam, lineNo);
    fam.started = true;
    const key = name + '{' + labels.map(([k, v]) => `${k}=${JSON.stringify(v)}`).sort().join(',') + '}';
    if (seriesSeen.has(key)) errors.push(`${lineNo}: series ${key} appears twice`);
    seriesSeen.add(key);
    if (fam.type === 'counter' && value !== undefined && (value < 0 || Number.isNaN(value)))
      errors.push(`${lineNo}: counter ${name} has value ${parts[0]}`);
    if (fam.type === 'histogram' && !(name === fname + '_bucket' || name === fname + '_sum' || name === fname + '_count'))
      errors.push(`${lineNo}: ${name} in histogram ${fname} is not _bucket, _sum or _count`);
    if (fam.type === 'histogram' && name === fname + '_bucket' && !labels.some(([k]) => k === 'le'))
      errors.push(`${lineNo}: histogram bucket without an le label`);
    fam.samples.push({ lineNo, name, labels, value });
    nsamples++;
  });

  for (const f of families.values()) {
    if (f.type !== 'histogram') continue;
    const groups = new Map(); // label set without le -> { buckets, sum, count }
    for (const s of f.samples) {
      const other = s.labels.filter(([k]) => k !== 'le');
      const key = other.map(([k, v]) => `${k}=${JSON.stringify(v)}`).sort().join(',');
      if (!groups.has(key)) groups.set(key, { buckets: [], sum: undefined, count: undefined });
      const g = groups.get(key);
      if (s.name === f.name + '_bucket') {
        const le = s.labels.find(([k]) => k === 'le');
        const bound = le ? parseValue(le[1]) : undefined;
        if (le && bound === undefined) errors.push(`${s.lineNo}: le="${le[1]}" is not a number`);
        g.buckets.push({ lineNo: s.lineNo, le: le ? le[1] : undefined, bound, value: s.value });
      } else if (s.name === f.name + '_sum') g.sum = s.value;
      else if (s.name === f.name + '_count') g.count = s.value;
    }
    for (const [key, g] of groups) {
      const where = `histogram ${f.name}{${key}}`;
      if (g.buckets.length === 0) {
        errors.push(`${where}: no buckets`);
        continue;
      }
      for (let k = 1; k < g.buckets.length; k++) {
        const a = g.buckets[k - 1], b = g.buckets[k];
        if (!(b.bound > a.bound)) errors.push(`${b.lineNo}: ${where}: le="${b.le}" does not increase after le="${a.le}"`);
        if (b.value < a.value) errors.push(`${b.lineNo}: ${where}: bucket le="${b.le}" (${b.value}) is less than le="${a.le}" (${a.value}): not cumulative`);
      }
      const last = g.buckets[g.buckets.length - 1];
      if (last.le !== '+Inf') errors.push(`${where}: the last bucket is le="${last.le}", not le="+Inf"`);
      if (g.count === undefined) errors.push(`${where}: no _count`);
      else if (last.le === '+Inf' && last.value !== g.count)
        errors.push(`${where}: le="+Inf" bucket (${last.value}) differs from _count (${g.count})`);
      if (g.sum === undefined) errors.push(`${where}: no _sum`);
    }
  }
  return { errors, nfamilies: [...families.values()].filter((f) => f.samples.length > 0).length, nsamples };
}

if (require.main === module) {
  const file = process.argv[2];
  const text = file && file !== '-' ? fs.readFileSync(file, 'utf8') : fs.readFileSync(0, 'utf8');
  const r = check(text);
  if (r.nsamples === 0) r.errors.push('no samples at all');
  if (r.errors.length > 0) {
    for (const e of r.errors) console.log(e);
    process.exit(1);
  }
  console.log(`ok: ${r.nfamilies} families, ${r.nsamples} samples`);
}

module.exports = { check };
