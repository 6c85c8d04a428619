// The markdown subset and mentions (core/protocol.js): a token tree the view renders with
// createElement/textContent only. Hostile input stays text; the work stays linear.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseMarkdown as md, mentionNames, mentionQuery, safeHref, MAX_MARKDOWN_CHARS, validEmoji } from '../../static/js/core/protocol.js';

const text = (t) => ({ t: 'text', text: t });
/** The text a token list shows (what textContent of the rendering is, markers gone). */
const shown = (list) => list.map((x) => (x.children ? shown(x.children) : x.t === 'mention' ? '@' + x.name : x.text)).join('');
/** Every href in a token tree. */
const hrefs = (list) => list.flatMap((x) => [...(x.href ? [x.href] : []), ...(x.children ? hrefs(x.children) : [])]);

test('bold, italic (* and _), inline code, code blocks', () => {
  assert.deepEqual(md('plain'), [text('plain')]);
  assert.deepEqual(md('a **b** c'), [text('a '), { t: 'bold', children: [text('b')] }, text(' c')]);
  assert.deepEqual(md('*i* and _j_'), [{ t: 'italic', children: [text('i')] }, text(' and '), { t: 'italic', children: [text('j')] }]);
  assert.deepEqual(md('**bold *both* bold**'), [{ t: 'bold', children: [text('bold '), { t: 'italic', children: [text('both')] }, text(' bold')] }]);
  assert.deepEqual(md('use `a **b** c` here'), [text('use '), { t: 'code', text: 'a **b** c' }, text(' here')]);
  assert.deepEqual(md('```js\nlet x = "**";\n```\nafter'), [{ t: 'codeblock', text: 'let x = "**";', lang: 'js' }, text('after')]);
  assert.deepEqual(md('before\n```\n@bob https://x.org\n```'), [text('before\n'), { t: 'codeblock', text: '@bob https://x.org', lang: '' }]);
});

test('markers that do not pair stay text: unterminated, empty, spaced, inside words', () => {
  for (const s of ['**open', '*open', '_open', '`open', '```open', '****', '** not bold**', '* not *', 'snake_case_name', '2 * 3 * 4', '__', '_ _', '[x](']) {
    assert.equal(shown(md(s)), s, s);
    assert.ok(md(s).every((x) => x.t === 'text'), s);
  }
});

test('links: http and https only, bare or [text](url); trailing punctuation stays outside', () => {
  assert.deepEqual(md('see https://example.org/a?b=1.'), [text('see '), { t: 'link', href: 'https://example.org/a?b=1', children: [text('https://example.org/a?b=1')] }, text('.')]);
  assert.deepEqual(md('(http://x.org/wiki/A_(b))'), [text('('), { t: 'link', href: 'http://x.org/wiki/A_(b)', children: [text('http://x.org/wiki/A_(b)')] }, text(')')]);
  assert.deepEqual(md('[the **docs**](https://d.org/x)'), [{ t: 'link', href: 'https://d.org/x', children: [text('the '), { t: 'bold', children: [text('docs')] }] }]);
  assert.deepEqual(hrefs(md('HTTPS://EXAMPLE.org')), ['https://example.org/']);
});

test('hostile links stay text: javascript:, data:, vbscript:, obfuscated schemes, quotes', () => {
  const hostile = [
    'javascript:alert(1)', '[x](javascript:alert(1))', '[x](JaVaScRiPt:alert(1))', '[x]( javascript:alert(1))',
    '[x](data:text/html,<script>alert(1)</script>)', '[x](vbscript:msgbox)', '[x](//evil.org)', '[x](java\tscript:alert(1))',
    '[x](https://ok.org" onmouseover="alert(1))', 'https://', 'http:///', '[https://a.org](javascript:alert(1))',
    'xhttps://a.org', '<a href="javascript:alert(1)">x</a>',
  ];
  for (const s of hostile) {
    for (const h of hrefs(md(s))) assert.match(h, /^https?:\/\/[^\s"<>]+$/, `${s} -> ${h}`);
  }
  assert.deepEqual(hrefs(md('[x](javascript:alert(1))')), []);
  assert.deepEqual(hrefs(md('[https://a.org](javascript:alert(1))')), ['https://a.org/'], 'only the http(s) text itself');
  assert.deepEqual(hrefs(md('https://ok.org" onmouseover="alert(1)')), ['https://ok.org/']);
  assert.equal(safeHref('javascript:alert(1)'), null);
  assert.equal(safeHref('https://a.org/x y'), 'https://a.org/x%20y');
  assert.equal(shown(md('<img src=x onerror=alert(1)>')), '<img src=x onerror=alert(1)>');
});

test('nesting is bounded and a link holds no link', () => {
  const deep = '**a *b **c *d **e** d* c** b* a**';
  const depth = (list) => Math.max(0, ...list.map((x) => (x.children ? 1 + depth(x.children) : 0)));
  assert.ok(depth(md(deep)) <= 3, JSON.stringify(md(deep)));
  assert.equal(shown(md('*a* **b**')), 'a b');
  assert.deepEqual(hrefs(md('[see https://b.org](https://a.org)')), ['https://a.org/']);
});

test('huge and adversarial input: bounded output, linear work', () => {
  const huge = '**x'.repeat(MAX_MARKDOWN_CHARS);
  assert.deepEqual(md(huge), [text(huge)], 'too long: one text token');
  const start = process.hrtime.bigint();
  for (const s of ['**x '.repeat(4000), '*x '.repeat(6000), '_x '.repeat(6000), '[a]('.repeat(4000), '`'.repeat(19999), '@abc'.repeat(4999), 'http://a'.repeat(2499), '**_*'.repeat(4999), '```'.repeat(6666)]) {
    const out = md(s);
    assert.equal(typeof shown(out), 'string');
    assert.ok(JSON.stringify(out).length < s.length * 40, 'output bounded by the input');
  }
  // Not a timing assertion on speed, only a guard against quadratic blow-up (minutes).
  assert.ok(process.hrtime.bigint() - start < 20_000_000_000n);
  assert.deepEqual(md(undefined), []);
  assert.deepEqual(md(42), []);
});

test('mentions: @name of 3-32 [A-Za-z0-9._-], not in code, not inside a word or an e-mail address', () => {
  assert.deepEqual(md('hi @bob.'), [text('hi '), { t: 'mention', name: 'bob' }, text('.')]);
  assert.deepEqual(mentionNames(md('@alice and @Bob_2, @alice again, mail x@host.org, `@code`, @ab, **@carol**')), ['alice', 'Bob_2', 'carol']);
  assert.deepEqual(mentionNames(md('@' + 'a'.repeat(40))), ['a'.repeat(32)]);
  assert.deepEqual(mentionQuery('hello @bo', 9), { start: 6, query: 'bo' });
  assert.deepEqual(mentionQuery('@', 1), { start: 0, query: '' });
  assert.equal(mentionQuery('mail x@bo', 9), null);
  assert.equal(mentionQuery('hello @bo x', 11), null);
  assert.equal(mentionQuery('x', 5), null);
});

test('validEmoji: 1-32 bytes, no whitespace or control characters', () => {
  for (const e of ['👍', '❤️', '👨‍👩‍👧', ':+1:', 'ok']) assert.equal(validEmoji(e), true, e);
  for (const e of ['', ' ', 'a b', '\u0007', 'x'.repeat(33), '\n', 5, null]) assert.equal(validEmoji(e), false, String(e));
});
