// The web page of one node of a real two-node mesh, in Debian's chromium (headless, through
// playwright-core). Started by tests/web_cluster.rs, which runs the agents and their load:
//
//   TOLLGATE_URL             node A's admin address, http://127.0.0.1:PORT (no users: reads open)
//   TOLLGATE_NODE_CALLS      the calls A itself carries
//   TOLLGATE_CLUSTER_CALLS   the calls of the whole cluster (A and B)
//   TOLLGATE_CALLS_LIMIT     the license's calls limit
//   TOLLGATE_SCREENSHOT_DIR  where cluster-desktop.png and cluster-phone.png go
//   TOLLGATE_CHROMIUM        the browser (default /usr/bin/chromium)
//
// Checks the cluster history chart beside the node's: shown only in a cluster, drawn from
// GET /api/v1/cluster/history (24 h) and from the hourly peaks' cluster fields (90 days),
// carrying the license's limit while the node's chart carries none (the license holds for
// the cluster), and the cluster section's gauges and node list.
//
// Exits 0 when every check passed, 1 with the failing step otherwise.

import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 150_000;
const EVENTUALLY_MS = 20_000;

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const base = env('TOLLGATE_URL').replace(/\/$/, '');
const origin = new URL(base).origin;
const nodeCalls = Number(env('TOLLGATE_NODE_CALLS'));
const clusterCalls = Number(env('TOLLGATE_CLUSTER_CALLS'));
const callsLimit = Number(env('TOLLGATE_CALLS_LIMIT'));
const shots = env('TOLLGATE_SCREENSHOT_DIR');
const executablePath = env('TOLLGATE_CHROMIUM', '/usr/bin/chromium');

let stepName = 'start';
function step(name) {
  stepName = name;
  console.log(`- ${name}`);
}

async function api(path) {
  const response = await fetch(`${base}${path}`);
  const text = await response.text();
  let body = null;
  try {
    body = JSON.parse(text);
  } catch {
    body = null;
  }
  return { status: response.status, body, text };
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

/** What a chart says about itself: its point count and its accessible summary. */
async function chart(page, id) {
  return page.evaluate((id) => {
    const fig = document.getElementById(id);
    const svg = fig.querySelector('svg');
    return {
      points: Number(fig.dataset.points),
      label: svg ? svg.getAttribute('aria-label') : '',
      lines: svg ? svg.querySelectorAll('path.line').length : 0,
      limitLines: svg ? svg.querySelectorAll('line.limit').length : 0,
      visible: !!(fig.offsetWidth || fig.offsetHeight),
    };
  }, id);
}

async function run(context) {
  const page = context.pages()[0] || (await context.newPage());
  page.setDefaultTimeout(30_000);
  const consoleErrors = [];
  const foreign = [];
  page.on('console', (msg) => {
    if (msg.type() === 'error') consoleErrors.push(msg.text());
  });
  page.on('pageerror', (e) => consoleErrors.push(`uncaught: ${e.message}`));
  await context.route('**/*', (route) => {
    const url = route.request().url();
    if (new URL(url).origin === origin) return route.continue();
    foreign.push(url);
    return route.abort();
  });

  step('the agent sees the mesh: the cluster history has the cluster\'s calls');
  await eventually('GET /api/v1/cluster/history', async () => {
    const r = await api('/api/v1/cluster/history');
    assert.equal(r.status, 200, r.text);
    assert.ok(r.body.length >= 1, 'a minute of cluster history');
    assert.equal(r.body[r.body.length - 1].peak_calls, clusterCalls, 'the current minute\'s cluster peak');
  });

  step('the page: a cluster chart beside the node\'s');
  const response = await page.goto(`${base}/`);
  assert.equal(response.status(), 200);
  await eventually('the cluster column shows', async () => {
    assert.equal(await page.getAttribute('#charts', 'data-cluster'), 'true');
    assert.equal(await page.isVisible('#charts .chart-col[data-scope="cluster"]'), true);
    assert.equal(await page.isVisible('#charts .chart-col[data-scope="node"]'), true);
  });

  step('24 hours: the cluster chart is /api/v1/cluster/history, with the license\'s limit');
  await eventually('the charts match the APIs', async () => {
    const clusterHistory = (await api('/api/v1/cluster/history')).body;
    const nodeHistory = (await api('/api/v1/usage/history')).body;
    const c = await chart(page, 'chart-cluster-calls');
    const n = await chart(page, 'chart-calls');
    assert.ok(c.visible && n.visible, 'both charts are laid out');
    assert.equal(c.points, clusterHistory.length, 'cluster chart: one point per minute of the API');
    assert.equal(n.points, nodeHistory.length, 'node chart: one point per minute of the API');
    assert.ok(c.lines >= 1, 'the cluster chart draws a line');
    assert.match(c.label, new RegExp(`latest ${clusterCalls}, highest ${clusterCalls} at`), c.label);
    assert.match(c.label, new RegExp(`limit ${callsLimit}\\.$`), 'the license\'s limit is on the cluster chart');
    assert.equal(c.limitLines, 1, 'one limit line on the cluster chart');
    assert.match(n.label, new RegExp(`latest ${nodeCalls}, highest ${nodeCalls} at`), n.label);
    assert.doesNotMatch(n.label, /limit/, 'no license limit on this node\'s chart');
    assert.equal(n.limitLines, 0, 'no limit line on the node chart');
    const r = await chart(page, 'chart-cluster-registered');
    assert.equal(r.points, clusterHistory.length);
    const regs = clusterHistory[clusterHistory.length - 1].peak_registered_subscribers;
    assert.match(r.label, new RegExp(`latest ${regs},`), r.label);
  });

  step('the cluster section: the aggregate against the license, both nodes listed');
  await eventually('cluster gauges and nodes', async () => {
    const calls = await page.getAttribute('#gauges-cluster .gauge[data-limit="calls"] .usage', 'data-value');
    assert.equal(Number(calls), clusterCalls);
    const nodes = await page.$$eval('#cluster-nodes tbody tr', (trs) => trs.length);
    assert.equal(nodes, 2);
  });
  await page.screenshot({ path: join(shots, 'cluster-desktop.png'), fullPage: true });

  step('90 days: the cluster chart is the hourly peaks\' cluster fields');
  await page.click('#range-quarter');
  await eventually('the 90-day cluster chart', async () => {
    const hours = (await api('/api/v1/usage/history?resolution=hour')).body;
    const clusterHours = hours.filter((h) => h.cluster_peak_calls !== undefined && h.cluster_peak_calls !== null);
    assert.ok(clusterHours.length >= 1, `an hour with cluster figures: ${JSON.stringify(hours)}`);
    assert.equal(await page.textContent('#history-range-title'), 'Last 90 days');
    const c = await chart(page, 'chart-cluster-calls');
    assert.equal(c.points, clusterHours.length);
    assert.match(c.label, new RegExp(`latest ${clusterHours[clusterHours.length - 1].cluster_peak_calls},`), c.label);
    assert.match(c.label, new RegExp(`limit ${callsLimit}\\.$`));
  });
  await page.click('#range-day');

  step('phone width: the cluster chart stacks, nothing overflows sideways');
  await page.setViewportSize({ width: 390, height: 844 });
  await eventually('the cluster chart at phone width', async () => {
    assert.equal(await page.isVisible('#chart-cluster-calls'), true);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 0, `the page is ${overflow}px wider than a phone`);
  });
  await page.screenshot({ path: join(shots, 'cluster-phone.png'), fullPage: true });

  step('no script errors, nothing fetched from elsewhere');
  assert.deepEqual(consoleErrors, []);
  assert.deepEqual(foreign, []);
}

async function main() {
  const timer = setTimeout(() => {
    console.error(`cluster page test: no result after ${TIMEOUT_MS / 1000} s (step: ${stepName})`);
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
    console.log('cluster page test: all checks passed');
  } catch (e) {
    console.error(`cluster page test FAILED at step "${stepName}":\n${e.stack || e}`);
    process.exitCode = 1;
  } finally {
    if (context) await context.close().catch(() => {});
    await rm(userDataDir, { recursive: true, force: true }).catch(() => {});
    clearTimeout(timer);
  }
}

await main();
