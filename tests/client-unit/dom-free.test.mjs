// The core stays DOM-free: no page globals (it gets its socket factory, timers, clock,
// storage and fetch as arguments), so it runs under Node and in the page alike.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';

const CORE = new URL('../../static/js/core/', import.meta.url);
const FORBIDDEN = /\b(document|window|self|globalThis|WebSocket|localStorage|sessionStorage|location|navigator|requestAnimationFrame|crypto|fetch|setTimeout|setInterval|clearTimeout|clearInterval|Date\.now|Math\.random)\b/;

test('static/js/core uses no page globals (only what it is given)', () => {
  const files = fs.readdirSync(CORE).filter((f) => f.endsWith('.js'));
  assert.ok(files.includes('sync.js'), files.join(' '));
  for (const f of files) {
    const code = fs.readFileSync(new URL(f, CORE), 'utf8')
      .replace(/\/\*[\s\S]*?\*\//g, (c) => c.replace(/[^\n]/g, '')) // block comments (lines kept)
      .replace(/(^|[^:'"`])\/\/.*$/gm, '$1') // line comments
      .replace(/'(?:[^'\\\n]|\\.)*'|`(?:[^`\\]|\\.)*`|"(?:[^"\\\n]|\\.)*"/g, "''"); // strings
    code.split('\n').forEach((line, i) => {
      // A dependency used through its parameter or property (`d.timers.setTimeout`,
      // `this.fetch`, `{ fetch }` destructured) is fine; a bare global is not.
      const bare = line.replace(/(\.|\{\s*|,\s*)(fetch|setTimeout|setInterval|clearTimeout|clearInterval)\b/g, '$1_');
      const m = bare.match(FORBIDDEN);
      assert.equal(m, null, `${path.join('static/js/core', f)}:${i + 1} uses the global ${m && m[0]}: ${line.trim()}`);
    });
  }
});
