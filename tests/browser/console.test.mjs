// Drives the license server's vendor console in Debian's chromium (headless, through
// playwright-core). Started by crates/tollgate-license-server/tests/console.rs against a
// real server (real TLS, a self-signed certificate) holding a customer, a license, a
// report from node sp1 and two vendor users:
//
//   TOLLGATE_CONSOLE_URL       https://127.0.0.1:PORT/console/
//   TOLLGATE_ADMIN_USER / TOLLGATE_ADMIN_PASSWORD, TOLLGATE_VIEWER_USER / TOLLGATE_VIEWER_PASSWORD
//   TOLLGATE_CUSTOMER, TOLLGATE_LICENSE_KEY
//   TOLLGATE_TOKENS_OUT        where to write the token the page issued and its rotation
//   TOLLGATE_CHROMIUM          the browser (default /usr/bin/chromium)
//
// Exits 0 when every check passed, 1 with the failing step otherwise.

import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { chromium } from 'playwright-core';

const TIMEOUT_MS = 120_000;

function env(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (!value) throw new Error(`${name} is not set`);
  return value;
}

const url = env('TOLLGATE_CONSOLE_URL');
const admin = { user: env('TOLLGATE_ADMIN_USER'), password: env('TOLLGATE_ADMIN_PASSWORD') };
const viewer = { user: env('TOLLGATE_VIEWER_USER'), password: env('TOLLGATE_VIEWER_PASSWORD') };
const customer = env('TOLLGATE_CUSTOMER');
const licenseKey = env('TOLLGATE_LICENSE_KEY');
const tokensOut = env('TOLLGATE_TOKENS_OUT');

let step = 'start';
const timer = setTimeout(() => {
  console.error(`console test: timed out at step "${step}"`);
  process.exit(1);
}, TIMEOUT_MS);

const browser = await chromium.launch({
  executablePath: env('TOLLGATE_CHROMIUM', '/usr/bin/chromium'),
  args: ['--no-sandbox'],
});
try {
  const context = await browser.newContext({ ignoreHTTPSErrors: true });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => { if (m.type() === 'error') problems.push(m.text()); });
  page.on('pageerror', (e) => problems.push(String(e)));

  step = 'the page loads with its CSP';
  const response = await page.goto(url);
  assert.equal(response.status(), 200);
  const csp = response.headers()['content-security-policy'];
  assert.match(csp, /script-src 'self'/);
  assert.match(csp, /default-src 'none'/);
  await page.locator('#login').waitFor();

  step = 'a wrong password is refused on the page';
  await page.fill('#login-name', admin.user);
  await page.fill('#login-password', 'not the password');
  await page.click('#login button[type=submit]');
  await page.locator('#login-error').filter({ hasText: /wrong password/ }).waitFor();

  step = 'the admin logs in and sees the customers';
  await page.fill('#login-password', admin.password);
  await page.click('#login button[type=submit]');
  await page.locator('#who').filter({ hasText: `${admin.user} (admin)` }).waitFor();
  const row = page.locator(`#customers tr[data-name="${customer}"]`);
  await row.locator('.state').filter({ hasText: 'active' }).waitFor();

  step = 'suspend and resume a customer';
  await row.locator('button', { hasText: 'Suspend' }).click();
  await row.locator('.state').filter({ hasText: /^suspended / }).waitFor();
  await row.locator('button', { hasText: 'Resume' }).click();
  await row.locator('.state').filter({ hasText: 'active' }).waitFor();

  step = 'licenses';
  await page.click('nav button[data-tab=licenses]');
  await page.locator(`#licenses tr[data-key="${licenseKey}"] .serial`).waitFor();

  step = 'suspend and resume one license';
  const licenseRow = page.locator(`#licenses tr[data-key="${licenseKey}"]`);
  await licenseRow.locator('.state').filter({ hasText: 'active' }).waitFor();
  await licenseRow.locator('button', { hasText: 'Suspend' }).click();
  await licenseRow.locator('.state').filter({ hasText: /^suspended / }).waitFor();
  await licenseRow.locator('button', { hasText: 'Resume' }).click();
  await licenseRow.locator('.state').filter({ hasText: 'active' }).waitFor();

  step = 'renew a license from a spec: a new serial';
  const serialBefore = Number(await page.locator(`#licenses tr[data-key="${licenseKey}"] .serial`).textContent());
  await page.fill('#license-spec', `license_key = "${licenseKey}"\ncustomer = "${customer}"\nkind = "perpetual"\nserial = 1\n[limits]\ncalls = 300\n`);
  await page.click('#license-form button[type=submit]');
  await page.locator(`#licenses tr[data-key="${licenseKey}"] .serial`).filter({ hasText: String(serialBefore + 1) }).waitFor();

  step = 'issue a token: shown once';
  await page.click('nav button[data-tab=tokens]');
  await page.fill('#token-license', licenseKey);
  await page.fill('#token-allow', '192.0.2.7 10.0.0.0/8');
  await page.fill('#token-note', 'from the console');
  await page.fill('#token-expires', '2031-01-01');
  await page.click('#token-issue button[type=submit]');
  await page.locator('#token-value').filter({ hasText: /^tg_/ }).waitFor();
  const issuedRow = page.locator('#tokens tr', { hasText: 'from the console' });
  await issuedRow.locator('.expires').filter({ hasText: '2031-01-01T00:00:00Z' }).waitFor();
  const first = await page.locator('#token-value').textContent();
  const tableText = await page.locator('#tokens').textContent();
  assert.ok(!tableText.includes(first), 'the token is not listed');

  step = 'rotate the token: a new one shown once, the old one works for the grace period';
  await page.fill('#rotate-grace-hours', '2');
  await issuedRow.locator('button', { hasText: 'Rotate' }).click();
  await page.locator('#token-replaces').filter({ hasText: /keeps working until/ }).waitFor();
  const second = await page.locator('#token-value').textContent();
  assert.match(second, /^tg_/);
  assert.notEqual(second, first, 'a new secret');
  const oldRow = page.locator('#tokens tr', { hasText: 'from the console' }).filter({ hasText: 'replaced by' });
  await oldRow.locator('.state').filter({ hasText: /^active, replaced by \d+$/ }).waitFor();
  const newRow = page.locator('#tokens tr', { hasText: 'from the console' }).filter({ hasNotText: 'replaced by' });
  await newRow.locator('.expires').filter({ hasText: '2031-01-01T00:00:00Z' }).waitFor();
  assert.ok(!(await page.locator('#tokens').textContent()).includes(second), 'the new token is not listed');
  // The Rust side leases with both, to check that what the page showed works.
  writeFileSync(tokensOut, `${first}\n${second}\n`, { mode: 0o600 });

  step = 'usage: monthly peaks and the chart';
  await page.click('nav button[data-tab=usage]');
  const usage = page.locator(`#billing tr[data-license="${licenseKey}"]`).first();
  await usage.locator('.peak-calls').filter({ hasText: '120' }).waitFor();
  assert.equal(await page.locator('#chart svg rect').count() >= 1, true, 'a bar per row');
  const download = page.waitForEvent('download');
  await page.click('#csv');
  const csv = await (await download).createReadStream();
  let text = '';
  for await (const chunk of csv) text += chunk;
  assert.match(text, /^month,customer,license_key,/);
  assert.ok(text.includes(licenseKey), text);

  step = 'nodes: the silent one stands out';
  await page.click('nav button[data-tab=nodes]');
  await page.locator('#nodes tr.silent[data-node="sp1"] .state').filter({ hasText: /^silent \d+ min$/ }).waitFor();

  step = 'the audit log names the console user';
  await page.click('nav button[data-tab=audit]');
  await page.locator('#audit tr', { hasText: `user:${admin.user}` }).filter({ hasText: 'token.issue' }).waitFor();
  await page.locator('#audit tr', { hasText: 'customer.suspend' }).first().waitFor();
  await page.locator('#audit tr', { hasText: 'license.suspend' }).first().waitFor();
  await page.locator('#audit tr', { hasText: 'license.resume' }).first().waitFor();

  step = 'log out; a viewer sees no forms';
  await page.click('#logout');
  await page.locator('#login').waitFor();
  await page.fill('#login-name', viewer.user);
  await page.fill('#login-password', viewer.password);
  await page.click('#login button[type=submit]');
  await page.locator('#who').filter({ hasText: `${viewer.user} (viewer)` }).waitFor();
  assert.equal(await page.locator('#customer-add').isVisible(), false);
  assert.equal(await page.locator(`#customers tr[data-name="${customer}"] button`).isVisible(), false);

  step = 'no script error and no CSP violation';
  assert.deepEqual(problems.filter((p) => !p.includes('401')), []);
  console.log('console test: every check passed');
} catch (e) {
  console.error(`console test failed at step "${step}": ${e.stack || e}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  await browser.close();
}
