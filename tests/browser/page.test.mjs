// Drives the agent's web page in Debian's chromium (headless, through playwright-core).
// Started by tests/web_page.rs against a real agent with load, an admin and a viewer:
//
//   TOLLGATE_URL               the admin address, http://127.0.0.1:PORT
//   TOLLGATE_EVENTS_UDP        the agent's UDP event socket, 127.0.0.1:PORT
//   TOLLGATE_ADMIN_USER / TOLLGATE_ADMIN_PASSWORD, TOLLGATE_VIEWER_USER / TOLLGATE_VIEWER_PASSWORD
//   TOLLGATE_UPLOAD_LICENSE    a newer license file (higher serial, other limits) to upload
//   TOLLGATE_SCREENSHOT_DIR    where desktop.png, desktop-after-upload.png, phone.png,
//                              stale-desktop.png and stale-phone.png go
//   TOLLGATE_CHROMIUM          the browser (default /usr/bin/chromium)
//   TOLLGATE_AGENT_PID         the agent's pid: the last step kills it (SIGKILL) and checks
//                              that the page shows its figures as stale
//
// The browser runs in Asia/Kolkata (UTC+5:30), so "local" and UTC differ by a non-whole
// hour and a time shown in the wrong zone cannot pass for the right one.
//
// Exits 0 when every check passed, 1 with the failing step otherwise.

import assert from 'node:assert/strict';
import dgram from 'node:dgram';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 150_000;
const EVENTUALLY_MS = 10_000;

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const base = env('TOLLGATE_URL').replace(/\/$/, '');
const origin = new URL(base).origin;
const admin = { user: env('TOLLGATE_ADMIN_USER'), password: env('TOLLGATE_ADMIN_PASSWORD') };
const viewer = { user: env('TOLLGATE_VIEWER_USER'), password: env('TOLLGATE_VIEWER_PASSWORD') };
const uploadPath = env('TOLLGATE_UPLOAD_LICENSE');
const shots = env('TOLLGATE_SCREENSHOT_DIR');
const executablePath = env('TOLLGATE_CHROMIUM', '/usr/bin/chromium');
const [udpHost, udpPort] = env('TOLLGATE_EVENTS_UDP').split(/:(?=\d+$)/);
const agentPid = Number(env('TOLLGATE_AGENT_PID'));
const RFC3339_RE = /\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z\b/g;
/** A time as the page writes it: `2027-01-21 00:15 GMT+5:30`. */
const PAGE_DATE_RE = /\b\d{4}-\d{2}-\d{2} \d{2}:\d{2} (?:UTC|GMT[+-]\d{1,2}(?::\d{2})?)/g;

/** The usage fields the page shows, each with a data-value the script compares. */
const USAGE_FIELDS = {
  calls: '#gauges-node .gauge[data-limit="calls"] .usage',
  subscribers: '#gauges-node .gauge[data-limit="subscribers"] .usage',
  registered_subscribers: '#gauges-node .gauge[data-limit="registered_subscribers"] .usage',
  emergency_calls: '#gauges-node [data-field="emergency_calls"]',
  peak_calls: '#gauges-node [data-field="peak_calls"]',
  registered_contacts: '#gauges-node [data-field="registered_contacts"]',
  peak_registered_subscribers: '#gauges-node [data-field="peak_registered_subscribers"]',
};
const LIMIT_KEYS = ['calls', 'subscribers', 'registered_subscribers'];

// ---------------------------------------------------------------------------------------
// Helpers

let stepName = 'start';
function step(name) {
  stepName = name;
  console.log(`- ${name}`);
}

async function api(path, who, init = {}) {
  const headers = { ...(init.headers || {}) };
  if (who) headers.Authorization = `Basic ${Buffer.from(`${who.user}:${who.password}`).toString('base64')}`;
  const response = await fetch(`${base}${path}`, { ...init, headers });
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  return { status: response.status, headers: response.headers, body, text };
}

/** Retries `check` until it stops throwing, or throws its last error after `ms`. */
async function eventually(what, check, ms = EVENTUALLY_MS) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      return await check();
    } catch (e) {
      if (Date.now() > deadline) {
        e.message = `${what}: ${e.message}`;
        throw e;
      }
      await new Promise((r) => setTimeout(r, 250));
    }
  }
}

const digits = (text) => text.replace(/\D/g, '');

function sendUdp(text) {
  return new Promise((resolve, reject) => {
    const socket = dgram.createSocket(udpHost.includes(':') ? 'udp6' : 'udp4');
    socket.send(Buffer.from(text), Number(udpPort), udpHost.replace(/^\[|\]$/g, ''), (err) => {
      socket.close();
      if (err) reject(err);
      else resolve();
    });
  });
}

/** The page's figures vs a fresh GET /api/v1/usage: the data-value and the digits shown. */
async function assertUsageMatches(page) {
  await eventually('the page shows the figures of /api/v1/usage', async () => {
    const usage = (await api('/api/v1/usage')).body;
    const shown = await page.evaluate((fields) => Object.fromEntries(Object.entries(fields).map(([k, sel]) => {
      const el = document.querySelector(sel);
      return [k, el ? { value: el.dataset.value, text: el.textContent } : null];
    })), USAGE_FIELDS);
    for (const field of Object.keys(USAGE_FIELDS)) {
      assert.ok(shown[field], `${field} is on the page`);
      assert.equal(Number(shown[field].value), usage[field], `${field} data-value`);
      assert.equal(digits(shown[field].text), String(usage[field]), `${field} as shown ("${shown[field].text}")`);
    }
    return usage;
  });
}

/** The page's license details, state and gauge limits vs GET /api/v1/license. */
async function assertLicenseMatches(page, who) {
  return eventually('the page shows the license of /api/v1/license', async () => {
    const report = (await api('/api/v1/license', who)).body;
    const doc = report.license;
    const ev = report.evaluation;
    const shown = await page.evaluate(() => {
      const text = (sel) => document.querySelector(sel)?.textContent.trim() ?? null;
      return {
        key: text('#license-details dd[data-field="license_key"]'),
        customer: text('#license-details dd[data-field="customer"]'),
        serial: text('#license-details dd[data-field="serial"]'),
        features: [...document.querySelectorAll('#license-details dd[data-field="features"] .chip')].map((c) => c.textContent),
        limits: Object.fromEntries([...document.querySelectorAll('#license-details dd[data-field="limits"] [data-limit]')]
          .map((el) => [el.dataset.limit, el.dataset.value])),
        gaugeLimits: Object.fromEntries([...document.querySelectorAll('#gauges-node .gauge')]
          .map((g) => [g.dataset.limit, g.querySelector('.limit-value')?.dataset.value ?? null])),
        gaugeStatus: Object.fromEntries([...document.querySelectorAll('#gauges-node .gauge')]
          .map((g) => [g.dataset.limit, g.dataset.status])),
        state: text('#state-code'),
        explanation: [...document.querySelectorAll('#explanation li')].map((li) => li.textContent),
        validUntil: text('#license-details dd[data-field="valid_until"]'),
        lease: text('#license-details dd[data-field="signature_valid_until"]'),
      };
    });
    assert.equal(shown.key, doc.license_key, 'license key');
    assert.equal(shown.customer, doc.customer, 'customer');
    assert.equal(digits(shown.serial), String(doc.serial), 'serial');
    assert.deepEqual(shown.features, doc.features, 'features');
    for (const k of LIMIT_KEYS) {
      assert.equal(shown.limits[k], String(doc.limits[k]), `${k} limit in the details`);
      assert.equal(shown.gaugeLimits[k], String(doc.limits[k]), `${k} limit on the gauge`);
      assert.equal(shown.gaugeStatus[k], ev.limits[k].status, `${k} gauge status`);
    }
    assert.equal(shown.state, ev.status, 'state code');
    // The agent writes instants in UTC (RFC 3339); the page rewrites them into its zone.
    assert.deepEqual(shown.explanation.map((l) => l.replace(PAGE_DATE_RE, 'T')),
      report.explanation.split('\n').map((l) => l.replace(RFC3339_RE, 'T')), 'explanation');
    for (const line of shown.explanation) assert.doesNotMatch(line, RFC3339_RE, 'no UTC instant left as is');
    assert.match(shown.validUntil, new RegExp(`\\(${ev.days_to_expiry} days left\\)`), 'valid until');
    assert.match(shown.lease, new RegExp(`\\(${ev.days_to_lease_end} days left\\)`), 'signature valid until');
    return report;
  });
}

async function signIn(page, who, role) {
  if (await page.isVisible('#signout')) await page.click('#signout');
  await page.click('#signin-toggle');
  await page.fill('#signin-user', who.user);
  await page.fill('#signin-password', who.password);
  await page.click('#signin-submit');
  await page.waitForFunction((expected) => document.getElementById('who').textContent === expected,
    `Signed in as ${who.user} (${role})`);
}

/** The page's result line once it reports `http`: {outcome, text}. */
async function actionResult(page, http) {
  const el = await page.waitForSelector(`#action-result[data-http="${http}"]`);
  return { outcome: await el.getAttribute('data-outcome'), text: (await el.textContent()).trim() };
}

// ---------------------------------------------------------------------------------------
// The scenario

async function run(context) {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30_000);
  const consoleErrors = [];
  const foreign = [];
  let usageRequests = 0;
  // Failed API answers are logged by the browser as errors; those are the page working.
  const expected = /Failed to load resource: the server responded with a status of (401|403|404|409|422)/;
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !expected.test(msg.text())) consoleErrors.push(msg.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(`uncaught: ${e.message}`));
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/api/v1/usage') usageRequests += 1;
  });
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (new URL(url).origin === origin) return route.continue();
    foreign.push(url);
    return route.abort();
  });

  step('the page and its assets load with their content types and the CSP');
  const assets = new Map();
  page.on('response', (r) => assets.set(new URL(r.url()).pathname, r.headers()));
  const response = await page.goto(`${base}/`);
  assert.equal(response.status(), 200);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline/);
  await page.waitForSelector('#gauges-node .gauge[data-limit="calls"] .usage[data-value]');
  for (const [path, type] of [['/', 'text/html'], ['/assets/app.js', 'text/javascript'], ['/assets/style.css', 'text/css']]) {
    assert.ok(assets.has(path), `${path} was requested`);
    assert.ok(assets.get(path)['content-type'].startsWith(type), `${path}: ${assets.get(path)['content-type']}`);
  }

  step('signed out: the figures match /api/v1/usage; license details need a sign-in');
  await assertUsageMatches(page);
  assert.match(await page.textContent('#license-note'), /Sign in/);
  assert.equal(await page.isDisabled('#reload'), true);
  assert.equal(await page.isDisabled('#upload-submit'), true);

  step('viewer: everything shown, Reload and Upload disabled with the reason');
  await signIn(page, viewer, 'viewer');
  const before = await assertLicenseMatches(page, viewer);
  assert.notEqual(before.evaluation.status, 'OK', 'the test load crosses a threshold');
  assert.equal(await page.isDisabled('#reload'), true, 'Reload disabled for a viewer');
  assert.equal(await page.isDisabled('#upload-submit'), true, 'Upload disabled for a viewer');
  assert.match(await page.textContent('#actions-reason'), /needs the admin role/);
  await assertUsageMatches(page);

  step('viewer: a forced reload is refused with the API\'s 403 and message');
  const refused = await api('/api/v1/license/reload', viewer, { method: 'POST' });
  assert.equal(refused.status, 403);
  await page.evaluate(() => {
    const button = document.getElementById('reload');
    button.disabled = false;
    button.click();
  });
  const forbidden = await actionResult(page, 403);
  assert.equal(forbidden.outcome, 'error');
  assert.ok(forbidden.text.includes('403') && forbidden.text.includes(refused.body.message), forbidden.text);

  step('admin: Reload succeeds and says so');
  await signIn(page, admin, 'admin');
  assert.equal(await page.isDisabled('#reload'), false, 'Reload enabled for an admin');
  assert.equal((await page.textContent('#actions-reason')).trim(), '');
  await assertLicenseMatches(page, admin);
  await page.screenshot({ path: join(shots, 'desktop.png'), fullPage: true });
  await page.click('#reload');
  const reloaded = await actionResult(page, 200);
  assert.equal(reloaded.outcome, 'ok');
  assert.match(reloaded.text, /Reload License: 200 OK/);

  step('live refresh: a new call shows up without reloading the page');
  const { calls } = (await api('/api/v1/usage')).body;
  await sendUdp('call-start web-live-1@test tag=live\n');
  await eventually('the new call is counted by the agent', async () => {
    assert.equal((await api('/api/v1/usage')).body.calls, calls + 1);
  });
  await eventually('the page shows the new call', async () => {
    assert.equal(await page.getAttribute(USAGE_FIELDS.calls, 'data-value'), String(calls + 1));
  });
  await assertUsageMatches(page);

  step('denied admissions by code: an admit over the enforced limit shows on the page');
  await sendUdp('admit web-denied-1@test\nadmit web-denied-2@test\n');
  await eventually('the agent counted the denials', async () => {
    assert.equal((await api('/api/v1/usage')).body.admissions_denied.OVER_LIMIT, 2);
  });
  await eventually('the page shows them', async () => {
    assert.equal(await page.getAttribute('#denied [data-code="OVER_LIMIT"]', 'data-value'), '2');
    assert.match(await page.textContent('#denied'), /denied since the agent started: 2 \(OVER_LIMIT 2\)/);
  });

  step('polling pauses while the tab is hidden and resumes when it is shown');
  const setVisibility = (hidden) => page.evaluate((h) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
  await setVisibility(true);
  await page.waitForTimeout(500); // a poll already in flight may still land
  const whileHidden = usageRequests;
  await page.waitForTimeout(4500);
  assert.equal(usageRequests, whileHidden, 'no polling while hidden');
  assert.match(await page.textContent('#refresh'), /Paused/);
  await setVisibility(false);
  await eventually('polling resumes', async () => assert.ok(usageRequests > whileHidden), 3000);

  step('admin: an upload that is not a license is refused with the API\'s 422 and message');
  await page.fill('#upload-text', 'not a license');
  await page.click('#upload-submit');
  const invalid = await actionResult(page, 422);
  assert.equal(invalid.outcome, 'error');
  assert.match(invalid.text, /422 INVALID: \S/);

  step('admin: uploading a newer license file shows its details');
  const text = await readFile(uploadPath, 'utf8');
  const serial = Number(/^serial = (\d+)$/m.exec(text)[1]);
  await page.setInputFiles('#upload-file', uploadPath);
  await page.waitForFunction(() => document.getElementById('upload-text').value.includes('BEGIN TOLLGATE LICENSE'));
  await page.click('#upload-submit');
  const uploaded = await actionResult(page, 200);
  assert.equal(uploaded.outcome, 'ok');
  assert.match(uploaded.text, new RegExp(`Upload License: 200 OK: .*serial ${serial}`));
  const after = await assertLicenseMatches(page, admin);
  assert.equal(after.license.serial, serial, 'the agent has the uploaded serial');
  assert.notDeepEqual(after.license.limits, before.license.limits, 'the new limits are shown');
  await assertUsageMatches(page);
  await page.screenshot({ path: join(shots, 'desktop-after-upload.png'), fullPage: true });

  step('one time zone for every time on the page, local or UTC');
  const times = () => page.evaluate(() => ({
    validUntil: document.querySelector('#license-details dd[data-field="valid_until"]').textContent,
    issued: document.querySelector('#license-details dd[data-field="issued_at"]').textContent,
    explanation: document.getElementById('explanation').textContent,
    span: document.getElementById('history-span').textContent,
    refresh: document.getElementById('refresh').textContent,
    ticks: [...document.querySelectorAll('#chart-calls .axis text')].map((t) => t.textContent),
  }));
  const local = await times();
  assert.match(local.validUntil, /GMT\+5:30/, 'local zone in the details');
  assert.match(local.explanation, /GMT\+5:30/, 'the same zone in the state banner');
  assert.doesNotMatch(local.explanation + local.validUntil, /UTC/);
  assert.match(local.span, /local time/);
  const until = after.license.valid_until_ms;
  await page.click('#zone');
  await eventually('every time switches to UTC', async () => {
    const utc = await times();
    assert.match(utc.validUntil, / UTC/, 'details in UTC');
    assert.match(utc.explanation, / UTC/, 'the state banner in UTC');
    assert.doesNotMatch(utc.validUntil + utc.issued + utc.explanation + utc.refresh, /GMT\+5:30/);
    assert.match(utc.span, /UTC/);
    assert.ok(utc.validUntil.startsWith(new Date(until).toISOString().slice(0, 16).replace('T', ' ')), utc.validUntil);
  });
  assert.equal(await page.getAttribute('#zone', 'aria-pressed'), 'true');
  await page.reload();
  await page.waitForSelector('#gauges-node .gauge[data-limit="calls"] .usage[data-value]');
  assert.equal(await page.getAttribute('#zone', 'data-zone'), 'UTC', 'the choice is remembered');
  await page.click('#zone');
  await eventually('back to local time', async () => assert.match((await times()).validUntil, /GMT\+5:30/));

  step('the chart caption names the first sample');
  const first = Number(await page.getAttribute('#history-span', 'data-first'));
  const history = (await api('/api/v1/usage/history')).body;
  assert.equal(first, history[0].minute_start_ms, 'caption from the first sample');
  const firstShown = new Intl.DateTimeFormat('en-US', { hour: '2-digit', minute: '2-digit', hourCycle: 'h23', timeZone: 'Asia/Kolkata' })
    .format(first);
  assert.match(await page.textContent('#history-span'), new RegExp(`since ${firstShown} \\(the first figure\\)`));
  assert.equal(await page.isVisible('#charts .chart-col[data-scope="cluster"]'), false, 'no cluster chart without a mesh');

  step('90 days of hourly peaks, persisted by the agent');
  await page.click('#range-quarter');
  await eventually('the 90-day chart shows the agent\'s hours', async () => {
    const hours = (await api('/api/v1/usage/history?resolution=hour')).body;
    assert.ok(hours.length >= 1, 'the agent has an hour');
    assert.equal(await page.textContent('#history-range-title'), 'Last 90 days');
    assert.equal(await page.getAttribute('#chart-calls', 'data-points'), String(hours.length));
    assert.match(await page.textContent('#history-span'), /since \d{4}-\d{2}-\d{2} \d{2}:\d{2} GMT\+5:30 \(the first figure\)/);
    const rows = await page.$$eval('#history-table tbody tr', (trs) => trs.length);
    assert.equal(rows, hours.length, 'the table lists the hours');
  });
  assert.equal(await page.getAttribute('#range-quarter', 'aria-pressed'), 'true');
  await page.click('#range-day');
  await eventually('back to 24 hours', async () => assert.equal(await page.textContent('#history-range-title'), 'Last 24 hours'));

  step('phone width: nothing overflows sideways');
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(500);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  await page.screenshot({ path: join(shots, 'phone.png'), fullPage: true });

  step('no script errors, no CSP violations, nothing fetched from elsewhere');
  assert.deepEqual(consoleErrors, []);
  assert.deepEqual(foreign, []);

  step('kill -9 of the agent: the page shows its figures as stale');
  await page.setViewportSize({ width: 1440, height: 900 });
  const lastGood = Date.now();
  process.kill(agentPid, 'SIGKILL');
  // Two refresh periods (2 s each) is the promise; the deadline is generous for a loaded
  // machine and nothing here measures time.
  await eventually('the stale state shows', async () => {
    assert.equal(await page.getAttribute('body', 'data-reachable'), 'false');
    assert.equal(await page.isVisible('#stale'), true, 'the banner is visible');
  }, 20_000);
  const lastOk = Number(await page.getAttribute('#stale-since', 'data-last-ok'));
  assert.ok(lastOk > 0 && lastOk <= lastGood + 2000, `last good answer ${lastOk}`);
  const banner = await page.textContent('#stale');
  assert.match(banner, /not answering/);
  assert.match(banner, /the last good answer/);
  assert.match(banner, /\d{2}:\d{2}:\d{2} GMT\+5:30/, 'the time of the last good answer, in the page\'s zone');
  const look = await page.evaluate(() => ({
    filter: getComputedStyle(document.getElementById('usage')).filter,
    opacity: Number(getComputedStyle(document.getElementById('usage')).opacity),
    bannerTop: document.getElementById('stale').getBoundingClientRect().top,
  }));
  assert.match(look.filter, /grayscale/, 'figures are greyed');
  assert.ok(look.opacity < 1, 'figures are dimmed');
  assert.ok(look.bannerTop >= 0 && look.bannerTop < 200, 'the banner is at the top');
  await page.screenshot({ path: join(shots, 'stale-desktop.png'), fullPage: false });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(300);
  assert.equal(await page.isVisible('#stale'), true, 'the banner on a phone');
  await page.screenshot({ path: join(shots, 'stale-phone.png'), fullPage: false });
  assert.deepEqual(foreign, []);
}

async function main() {
  const timer = setTimeout(() => {
    console.error(`page test: no result after ${TIMEOUT_MS / 1000} s (step: ${stepName})`);
    process.exit(1);
  }, TIMEOUT_MS);
  const userDataDir = await mkdtemp(join(tmpdir(), 'tollgate-chromium-'));
  let context;
  try {
    context = await chromium.launchPersistentContext(userDataDir, {
      executablePath,
      headless: true,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--no-first-run',
      ],
      viewport: { width: 1440, height: 900 },
      colorScheme: 'light',
      locale: 'en-US',
      timezoneId: 'Asia/Kolkata',
    });
    await run(context);
    console.log('page test: all checks passed');
  } catch (e) {
    console.error(`page test FAILED at step "${stepName}":\n${e.stack || e}`);
    process.exitCode = 1;
  } finally {
    if (context) await context.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
    clearTimeout(timer);
  }
}

await main();
