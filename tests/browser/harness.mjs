// Browser-test harness: the real `chat` binary ($CHAT_BIN) as child processes, headless
// Debian Chromium ($CHROMIUM_BIN) driven by playwright-core, and small helpers for the UI.
//
// Distributed mode: two gateways and one consumer against the services of
// scripts/services.sh, isolated like tests/it/harness.rs does it: a fresh PostgreSQL
// database, Kafka topic and Redis key prefix per cluster. Embedded mode: one `chat serve`
// on a temporary --data-dir, with the service variables removed from its environment.
import { spawn, execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

export const HERE = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(HERE, '../..');
export const OUT = path.join(ROOT, 'test-output', 'browser');
export const SECRET = 'browser-test-secret-browser-test-secret-01';
export const PASSWORD = 'correct horse battery';
/** Per-test time limit: a hang fails the test instead of blocking CI. */
export const TEST_TIMEOUT = 90_000;

fs.mkdirSync(path.join(OUT, 'logs'), { recursive: true });

export function chatBin() {
  const candidates = [process.env.CHAT_BIN,
    process.env.CARGO_TARGET_DIR && path.join(process.env.CARGO_TARGET_DIR, 'debug', 'chat'),
    path.join(os.homedir(), '.cache', 'chat', 'target', 'debug', 'chat')].filter(Boolean);
  const bin = candidates.find((p) => fs.existsSync(p));
  if (!bin) throw new Error('set CHAT_BIN to the built chat binary (cargo build --bins); tried: ' + candidates.join(', '));
  return bin;
}

export const uniq = (prefix) => `${prefix}${randomBytes(4).toString('hex')}`;
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** The service URLs: from the environment, else from `scripts/services.sh env`. */
export function services() {
  const env = { DATABASE_URL: process.env.DATABASE_URL, REDIS_URL: process.env.REDIS_URL, KAFKA_BROKERS: process.env.KAFKA_BROKERS };
  if (!env.DATABASE_URL || !env.REDIS_URL || !env.KAFKA_BROKERS) {
    const text = execFileSync('bash', [path.join(ROOT, 'scripts/services.sh'), 'env'], { encoding: 'utf8' });
    for (const line of text.split('\n')) {
      const m = /^export (\w+)=(.*)$/.exec(line.trim());
      if (m && !env[m[1]]) env[m[1]] = m[2].replace(/^['"]|['"]$/g, '');
    }
  }
  for (const k of ['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS']) {
    if (!env[k]) throw new Error(`${k} unknown: start the services (bash scripts/services.sh start)`);
  }
  return env;
}

// ------------------------------------------------------------------------------ processes
const children = new Set();
function killAll() { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } }
process.on('exit', killAll);
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { killAll(); process.exit(130); });

const logsWritten = new Set();

/** A `chat` child process; `url` is its http://ADDR once it listens. */
export class ChatProc {
  constructor(label, args, env) { this.label = label; this.args = args; this.env = env; }

  async start() {
    const logPath = path.join(OUT, 'logs', `${this.label}.log`);
    // A fresh file per run; a restarted process (same label) appends to it.
    const log = fs.openSync(logPath, logsWritten.has(logPath) ? 'a' : 'w');
    logsWritten.add(logPath);
    fs.writeSync(log, `\n==== ${new Date().toISOString()} ${chatBin()} ${this.args.join(' ')}\n`);
    const child = spawn(chatBin(), this.args, { env: this.env, stdio: ['ignore', 'pipe', log] });
    fs.closeSync(log);
    this.child = child;
    children.add(child);
    child.on('exit', () => children.delete(child));
    const lines = createInterface({ input: child.stdout });
    this.url = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`${this.label} did not listen within 60 s; see ${logPath}`)), 60_000);
      const onExit = (code) => { clearTimeout(timer); reject(new Error(`${this.label} exited (${code}) before listening; see ${logPath}`)); };
      child.once('exit', onExit);
      lines.on('line', (line) => {
        const m = /^chat listening on (http:\/\/\S+)/.exec(line);
        if (m) { clearTimeout(timer); child.off('exit', onExit); resolve(m[1]); }
      });
    });
    return this;
  }

  /** SIGTERM (graceful drain) or SIGKILL; resolves when the process is gone. */
  async stop(signal = 'SIGTERM') {
    const c = this.child;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    const gone = new Promise((r) => c.once('exit', r));
    c.kill(signal);
    const t = setTimeout(() => c.kill('SIGKILL'), 15_000);
    await gone;
    clearTimeout(t);
  }
}

// `BROWSER_STATIC_DIR` (developing the client): the processes serve static/ from there
// (`--static-dir`) instead of the copy built into the binary, so no rebuild is needed.
const staticDir = process.env.BROWSER_STATIC_DIR ? ['--static-dir', path.resolve(process.env.BROWSER_STATIC_DIR)] : [];

// Relaxed: every test registers its users from 127.0.0.1.
const limits = [...staticDir, '--send-rate-per-sec', '1000', '--send-rate-burst', '1000',
  '--login-rate-per-account', '100000', '--login-burst-per-account', '100000',
  '--login-rate-per-address', '100000', '--login-burst-per-address', '100000',
  '--register-rate-per-address', '100000', '--register-burst-per-address', '100000',
  '--hash-queue', '100000', '--room-create-per-minute', '1000', '--membership-changes-per-minute', '100000'];

/** Two gateways and a consumer with their own database, topic and Redis prefix. */
export async function startDistributed(name, { gateways = 2 } = {}) {
  const svc = services();
  const id = randomBytes(6).toString('hex');
  const dbName = `chat_b_${id}`;
  psql(svc.DATABASE_URL, `CREATE DATABASE ${dbName}`);
  const dbUrl = svc.DATABASE_URL.replace(/\/[^/]*$/, '/' + dbName);
  const env = Object.assign({}, process.env, { RUST_LOG: process.env.RUST_LOG || 'info' });
  for (const k of ['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS', 'JWT_SECRET', 'DATA_DIR', 'STATIC_DIR']) delete env[k];
  const base = ['--database-url', dbUrl, '--redis-url', svc.REDIS_URL, '--redis-prefix', `b${id}`,
    '--kafka-brokers', svc.KAFKA_BROKERS, '--kafka-topic', `chat_b_${id}`, '--kafka-partitions', '4',
    '--jwt-secret', SECRET, '--database-pool-size', '8', '--listen', '127.0.0.1:0', ...limits];
  const proc = (role, label, migrate) => new ChatProc(`${name}-${label}`, ['serve', '--role', role, ...base, ...(migrate ? [] : ['--no-migrate'])], env);
  // The first gateway migrates and creates the topic; the others start after it.
  const gws = [await proc('gateway', 'gw0', true).start()];
  const rest = [];
  for (let i = 1; i < gateways; i++) rest.push(proc('gateway', `gw${i}`, false).start());
  const consumerProc = proc('consumer', 'consumer', false);
  rest.push(consumerProc.start());
  const started = await Promise.all(rest);
  gws.push(...started.slice(0, gateways - 1));
  const extra = [];
  const cluster = {
    mode: 'distributed', dbName, dbUrl, adminUrl: svc.DATABASE_URL, gateways: gws, consumer: consumerProc,
    gw: (i) => gws[i % gws.length].url,
    sql: (q) => psql(dbUrl, q),
    /** One more gateway (not among `gw(i)`), e.g. to stop it. */
    addGateway: async (label) => { const p = await proc('gateway', label, false).start(); extra.push(p); return p; },
    /** A new consumer process (after `consumer.stop()`). */
    async restartConsumer() {
      cluster.consumer = await proc('consumer', 'consumer', false).start();
      return cluster.consumer;
    },
    async close() {
      await Promise.all([...gws, ...extra, cluster.consumer].map((p) => p.stop('SIGKILL')));
      try { psql(svc.DATABASE_URL, `DROP DATABASE IF EXISTS ${dbName} WITH (FORCE)`); } catch { /* best effort */ }
    },
  };
  return cluster;
}

/** One `chat serve` (embedded mode) on `dataDir`. */
export function embedded(name, dataDir) {
  const env = Object.assign({}, process.env, { RUST_LOG: process.env.RUST_LOG || 'info' });
  for (const k of ['DATABASE_URL', 'REDIS_URL', 'KAFKA_BROKERS', 'JWT_SECRET', 'DATA_DIR', 'STATIC_DIR']) delete env[k];
  return new ChatProc(name, ['serve', '--listen', '127.0.0.1:0', '--data-dir', dataDir, ...limits], env);
}

export function psql(url, sql) {
  return execFileSync('psql', [url, '-v', 'ON_ERROR_STOP=1', '-tAqc', sql], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }).trim();
}

/** Fails when the binary's built-in client differs from static/ (a stale build). */
export async function checkAssets(baseUrl) {
  const stale = [];
  // `/` and every file under static/ (the page's ES modules too), at its own path.
  const files = fs.readdirSync(path.join(ROOT, 'static'), { recursive: true, withFileTypes: true })
    .filter((e) => e.isFile())
    .map((e) => path.relative(path.join(ROOT, 'static'), path.join(e.parentPath ?? e.path, e.name)).split(path.sep).join('/'))
    .sort();
  for (const [route, file] of [['/', 'index.html'], ...files.map((f) => ['/' + f, f])]) {
    const r = await fetch(baseUrl + route, { headers: { 'accept-encoding': 'identity' } });
    if (!r.ok) throw new Error(`GET ${route}: ${r.status}`);
    const served = await r.text();
    const local = fs.readFileSync(path.join(ROOT, 'static', file), 'utf8');
    if (served !== local) stale.push(file);
  }
  if (stale.length) {
    throw new Error(`the binary serves a different ${stale.join(', ')} than static/: rebuild it (cargo build --bins) before the browser tests`);
  }
}

// ------------------------------------------------------------------------------ TCP proxy
/**
 * A TCP proxy in front of a gateway, to cut the page's WebSocket without touching the
 * server: `block()` closes the open WebSocket connections and refuses new ones (plain HTTP
 * still passes, so the page can reload); `mute()` keeps them open but drops what the server
 * sends (a send reaches the server, its ack never arrives); `pass()` restores. `target` can
 * be changed (a restarted server on another port).
 */
export class Proxy {
  constructor(target) { this.target = new URL(target); this.mode = 'pass'; this.ws = new Set(); this.all = new Set(); }

  async start() {
    this.server = net.createServer((client) => {
      this.all.add(client);
      client.on('close', () => this.all.delete(client));
      client.once('data', (first) => {
        const isWs = /^GET \/ws[ ?]/.test(first.toString('latin1', 0, 16));
        if (isWs && this.mode === 'block') { client.destroy(); return; }
        const up = net.connect(Number(this.target.port), this.target.hostname);
        const pair = { client, up };
        if (isWs) this.ws.add(pair);
        const close = () => { client.destroy(); up.destroy(); this.ws.delete(pair); };
        up.on('error', close); client.on('error', close); up.on('close', close); client.on('close', close);
        up.write(first);
        client.on('data', (d) => up.write(d));
        up.on('data', (d) => { if (!(isWs && this.mode === 'mute')) client.write(d); });
      });
      client.on('error', () => client.destroy());
    });
    await new Promise((r) => this.server.listen(0, '127.0.0.1', r));
    this.url = `http://127.0.0.1:${this.server.address().port}`;
    return this;
  }

  block() { this.mode = 'block'; for (const { client, up } of this.ws) { client.destroy(); up.destroy(); } this.ws.clear(); }
  mute() { this.mode = 'mute'; }
  pass() { this.mode = 'pass'; }
  /** Drops every connection (HTTP and WebSocket) without changing the mode. */
  cutAll() { for (const { client, up } of this.ws) { client.destroy(); up.destroy(); } this.ws.clear(); }
  async close() {
    const closed = new Promise((r) => this.server.close(r));
    for (const s of this.all) s.destroy();
    this.cutAll();
    await closed;
  }
}

// ------------------------------------------------------------------------------ browser
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN || '/usr/bin/chromium',
    headless: true,
    // Root in a container: no sandbox; small /dev/shm: no shm.
    args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'],
  });
}

export const DESKTOP = { width: 1280, height: 800 };
export const PHONE = { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true, deviceScaleFactor: 2 };

/** A browser context (one user) with its page at `url`; console errors are collected. */
export async function openPage(browser, url, opts = {}) {
  // Reduced motion: the client then slides no drawers, so what a test sees is settled.
  const ctx = await browser.newContext(Object.assign({ viewport: DESKTOP, reducedMotion: 'reduce' }, opts));
  ctx.setDefaultTimeout(15_000);
  // Everything the page's Content-Security-Policy refuses, in window.__cspViolations.
  await ctx.addInitScript(() => {
    window.__cspViolations = [];
    document.addEventListener('securitypolicyviolation', (e) => {
      window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
    });
  });
  const page = await ctx.newPage();
  page.errors = [];
  page.on('pageerror', (e) => page.errors.push(String(e)));
  page.log = [];
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') page.log.push(`console.${m.type()}: ${m.text()}`); });
  page.on('response', (r) => { if (r.status() >= 400) page.log.push(`HTTP ${r.status()} ${r.request().method()} ${r.url()}`); });
  await page.goto(url);
  return page;
}

/** Registers `name` through the login form and waits until the socket is online. */
export async function register(page, name, password = PASSWORD) {
  await page.getByTestId('login-username').fill(name);
  await page.getByTestId('login-password').fill(password);
  await page.getByTestId('register-submit').click();
  await online(page);
}

export async function login(page, name, password = PASSWORD) {
  await page.getByTestId('login-username').fill(name);
  await page.getByTestId('login-password').fill(password);
  await page.getByTestId('login-submit').click();
  await online(page);
}

export async function online(page) {
  await page.locator('[data-testid="conn-state"][data-state="online"]').waitFor();
}

const isPhone = (page) => (page.viewportSize()?.width ?? 1280) <= 760;

/** On a phone the room list is a drawer: open it first. */
export async function showRooms(page) {
  if (isPhone(page) && !(await page.evaluate(() => document.body.classList.contains('nav-open')))) {
    await page.getByTestId('open-rooms').click();
    await page.getByTestId('room-list').waitFor({ state: 'visible' });
  }
}

export const roomItem = (page, name) => page.locator(`[data-testid="room-item"][data-room-name="${name}"]`);

export async function createRoom(page, name) {
  await showRooms(page);
  await page.getByTestId('new-room').click();
  await page.getByTestId('create-room-name').fill(name);
  await page.getByTestId('create-room-submit').click();
  await page.locator('[data-testid="room-title"]', { hasText: name }).waitFor();
  await page.getByTestId('composer').waitFor();
}

/**
 * Opens a room from the list. The list refreshes when the server says our rooms changed
 * (`rooms_changed`), on reconnect and when the window gets the focus (it is not polled): a
 * public room someone else created is not announced, so a room not listed yet gets a focus
 * event (what a user switching back to the tab does).
 */
export async function openRoom(page, name) {
  await showRooms(page);
  if (!(await roomItem(page, name).count())) await page.evaluate(() => window.dispatchEvent(new Event('focus')));
  await roomItem(page, name).click({ timeout: 20_000 });
  await page.locator('[data-testid="room-title"]', { hasText: name }).waitFor();
}

export async function joinRoom(page, name) {
  await openRoom(page, name);
  await page.getByTestId('join-room').click();
  await page.getByTestId('composer').waitFor();
}

export async function send(page, text) {
  await page.getByTestId('composer').fill(text);
  await page.getByTestId('composer').press('Enter');
}

/** The open room's messages as the page shows them. */
export function messages(page) {
  return page.$$eval('[data-testid="message"]', (els) => els.map((e) => ({
    // A message of a blocked user shows a placeholder instead of its body (null here).
    body: e.querySelector('[data-testid="message-body"]')?.textContent ?? null,
    pending: e.dataset.pending === 'true',
    failed: e.dataset.failed === 'true',
    position: e.dataset.position === '' ? null : Number(e.dataset.position),
    id: e.dataset.messageId,
    sender: e.dataset.senderName,
  })));
}

/** Waits until `body` is shown delivered (not pending) in the open room; returns how many times it is shown. */
export async function waitDelivered(page, body, timeout = 15_000) {
  await page.waitForFunction((b) => [...document.querySelectorAll('[data-testid="message"][data-pending="false"] [data-testid="message-body"]')]
    .some((e) => e.textContent === b), body, { timeout });
  return (await messages(page)).filter((m) => m.body === body).length;
}

/** Polls `fn` until it returns a truthy value. */
export async function until(fn, { timeout = 15_000, every = 200, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    last = await fn();
    if (last) return last;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${JSON.stringify(last)})`);
    await sleep(every);
  }
}

export async function shot(page, name) {
  await page.screenshot({ path: path.join(OUT, `${name}.png`) });
}

/**
 * Sends `n` messages to `room` over a second WebSocket opened inside the page (with the
 * page's token), waiting for each ack. Returns the acked messages.
 */
export async function sendMany(page, room, bodies) {
  return page.evaluate(async ({ room, bodies }) => {
    const ws = new WebSocket((location.protocol === 'https:' ? 'wss://' : 'ws://') + location.host + '/ws');
    const frames = [];
    let wake = null;
    ws.onmessage = (e) => { frames.push(JSON.parse(e.data)); if (wake) wake(); };
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
    const next = async (pred) => {
      for (;;) {
        const i = frames.findIndex(pred);
        if (i >= 0) return frames.splice(i, 1)[0];
        await new Promise((r) => { wake = r; setTimeout(r, 200); });
      }
    };
    ws.send(JSON.stringify({ type: 'hello', token: localStorage.getItem('chat.token') }));
    await next((f) => f.type === 'welcome');
    const acked = [];
    for (const body of bodies) {
      const id = crypto.randomUUID();
      // Like the client: a retryable refusal is sent again, with the same client_msg_id.
      for (let attempt = 0; ; attempt++) {
        ws.send(JSON.stringify({ type: 'send', room, client_msg_id: id, body }));
        const f = await next((x) => (x.type === 'ack' && x.client_msg_id === id) || (x.type === 'error' && x.ref === id));
        if (f.type === 'ack') { acked.push(f.message); break; }
        if (!f.retryable || attempt >= 10) throw new Error('send refused: ' + JSON.stringify(f));
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
    }
    ws.close();
    return acked;
  }, { room, bodies });
}

export const currentRoomId = (page) => page.evaluate(() => location.hash.slice(1));

/**
 * On a failed test: a screenshot of each of its pages under test-output/browser/failures/,
 * and their HTTP errors, console errors and uncaught exceptions on stderr.
 */
export async function reportFailure(testName, pages) {
  const dir = path.join(OUT, 'failures');
  fs.mkdirSync(dir, { recursive: true });
  const slug = testName.replace(/[^a-z0-9]+/gi, '-').slice(0, 60);
  for (const [i, p] of pages.entries()) {
    if (p.isClosed()) continue;
    await p.screenshot({ path: path.join(dir, `${slug}-${i}.png`), timeout: 5000 }).catch(() => {});
    const toast = await p.evaluate(() => { const t = document.getElementById('toast'); return t && !t.hidden ? t.textContent : ''; }).catch(() => '');
    console.error(`--- page ${i} (${p.url()})${toast ? ' toast: ' + toast : ''}\n${[...p.log, ...p.errors].join('\n')}`);
  }
}
