// The vendor console: a client of /api/v1/admin/… (bearer session in sessionStorage).
// Everything written to the page goes through textContent: nothing from the server is
// parsed as HTML. The server's CSP allows only this script, this style sheet and calls to
// the same origin.
'use strict';

const API = '../api/v1/admin/';
const SVG = 'http://www.w3.org/2000/svg';
const $ = (sel) => document.querySelector(sel);
let role = 'viewer';

function session() { return sessionStorage.getItem('tollgate-console-session'); }

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${session()}` };
  if (options.body !== undefined) headers['Content-Type'] = 'application/json';
  const response = await fetch(API + path, {
    method: options.method || 'GET',
    headers,
    body: options.body === undefined ? undefined : JSON.stringify(options.body),
  });
  if (response.status === 401) { logout(); throw new Error('session ended: log in again'); }
  const body = await response.json().catch(() => ({}));
  if (!response.ok) throw new Error(body.message || `${response.status}`);
  return body;
}

function status(text) { $('#status').textContent = text || ''; }

function cell(tr, text, cls) {
  const td = document.createElement('td');
  td.textContent = text === null || text === undefined ? '-' : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function button(td, label, action) {
  const b = document.createElement('button');
  b.textContent = label;
  b.className = 'admin-only';
  b.addEventListener('click', () => action().catch((e) => status(e.message)));
  td.appendChild(b);
}

function fill(table, rows, render) {
  const body = $(`${table} tbody`);
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement('tr');
    render(tr, row);
    body.appendChild(tr);
  }
}

async function showCustomers() {
  const { customers } = await api('customers');
  fill('#customers', customers, (tr, c) => {
    tr.dataset.name = c.name;
    cell(tr, c.name);
    cell(tr, c.created_at);
    cell(tr, c.suspended_at ? `suspended ${c.suspended_at}` : 'active', 'state');
    const td = cell(tr, '');
    const verb = c.suspended_at ? 'resume' : 'suspend';
    button(td, verb === 'suspend' ? 'Suspend' : 'Resume', async () => {
      await api(`customers/${encodeURIComponent(c.name)}/${verb}`, { method: 'POST', body: {} });
      await showCustomers();
    });
  });
}

function limits(l) {
  return Object.entries(l || {}).filter(([, v]) => v !== null).map(([k, v]) => `${k} ${v}`).join(', ') || 'unlimited';
}

async function showLicenses() {
  const { licenses } = await api('licenses');
  fill('#licenses', licenses, (tr, l) => {
    tr.dataset.key = l.license_key;
    cell(tr, l.license_key);
    cell(tr, l.customer);
    cell(tr, l.kind);
    cell(tr, l.serial, 'num serial');
    cell(tr, l.contract);
    cell(tr, l.valid_until || 'forever');
    cell(tr, l.signature_valid_until);
    cell(tr, limits(l.limits));
    cell(tr, l.suspended_at ? `suspended ${l.suspended_at}` : 'active', 'state');
    const td = cell(tr, '');
    const verb = l.suspended_at ? 'resume' : 'suspend';
    button(td, verb === 'suspend' ? 'Suspend' : 'Resume', async () => {
      await api(`licenses/${encodeURIComponent(l.license_key)}/${verb}`, { method: 'POST', body: {} });
      await showLicenses();
    });
  });
}

async function showTokens() {
  const { tokens } = await api('tokens');
  fill('#tokens', tokens, (tr, t) => {
    tr.dataset.id = t.id;
    cell(tr, t.id, 'num');
    cell(tr, t.license_key);
    cell(tr, t.allowed.join(' '));
    const state = { revoked: `revoked ${t.revoked_at}`, expired: 'expired' }[t.state] || 'active';
    cell(tr, t.replaced_by ? `${state}, replaced by ${t.replaced_by}` : state, 'state');
    cell(tr, t.expires_at || 'never', 'expires');
    cell(tr, t.last_used_at ? `${t.last_used_at} from ${t.last_used_from}` : 'never');
    cell(tr, t.note);
    const td = cell(tr, '');
    if (t.state === 'active' || t.state === 'expiring') {
      if (!t.replaced_by) {
        button(td, 'Rotate', async () => {
          const hours = Number($('#rotate-grace-hours').value || 0);
          const rotated = await api(`tokens/${t.id}/rotate`, { method: 'POST', body: { grace_s: Math.round(hours * 3600) } });
          $('#token-value').textContent = rotated.token;
          const old = rotated.replaces;
          $('#token-replaces').textContent = old.revoked_at
            ? `It replaces token ${old.id}, revoked now.`
            : `It replaces token ${old.id}, which keeps working until ${old.expires_at}.`;
          $('#token-new').hidden = false;
          await showTokens();
        });
      }
      button(td, 'Revoke', async () => {
        await api(`tokens/${t.id}/revoke`, { method: 'POST', body: {} });
        await showTokens();
      });
    }
  });
}

function chart(rows) {
  const box = $('#chart');
  box.replaceChildren();
  if (rows.length === 0) return;
  const svg = document.createElementNS(SVG, 'svg');
  const width = 480, height = 160, pad = 20;
  svg.setAttribute('viewBox', `0 0 ${width} ${height}`);
  const top = Math.max(1, ...rows.map((r) => Math.max(r.calls.peak, r.calls.limit || 0)));
  const step = (width - pad) / rows.length;
  rows.forEach((r, i) => {
    const h = ((height - 2 * pad) * r.calls.peak) / top;
    const bar = document.createElementNS(SVG, 'rect');
    bar.setAttribute('x', pad + i * step + 2);
    bar.setAttribute('y', height - pad - h);
    bar.setAttribute('width', Math.max(2, step - 4));
    bar.setAttribute('height', h);
    const title = document.createElementNS(SVG, 'title');
    title.textContent = `${r.month} ${r.license_key}: peak ${r.calls.peak} calls`;
    bar.appendChild(title);
    svg.appendChild(bar);
    if (r.calls.limit !== null) {
      const y = height - pad - ((height - 2 * pad) * r.calls.limit) / top;
      const line = document.createElementNS(SVG, 'line');
      line.setAttribute('class', 'limit');
      line.setAttribute('x1', pad + i * step);
      line.setAttribute('x2', pad + (i + 1) * step);
      line.setAttribute('y1', y);
      line.setAttribute('y2', y);
      svg.appendChild(line);
    }
    const label = document.createElementNS(SVG, 'text');
    label.setAttribute('x', pad + i * step + 2);
    label.setAttribute('y', height - 6);
    label.textContent = r.month;
    svg.appendChild(label);
  });
  box.appendChild(svg);
}

async function showUsage() {
  const { months } = await api('billing/monthly');
  fill('#billing', months, (tr, r) => {
    tr.dataset.month = r.month;
    tr.dataset.license = r.license_key;
    cell(tr, r.month);
    cell(tr, r.customer);
    cell(tr, r.license_key);
    cell(tr, r.nodes, 'num');
    cell(tr, r.calls.peak, 'num peak-calls');
    cell(tr, r.calls.limit, 'num');
    cell(tr, r.calls.over_limit_minutes, r.calls.over_limit_minutes > 0 ? 'num over' : 'num');
    cell(tr, r.registered_subscribers.peak, 'num');
    cell(tr, r.registered_subscribers.limit, 'num');
    cell(tr, r.registered_subscribers.over_limit_minutes, 'num');
    cell(tr, r.peak_emergency_calls, 'num');
  });
  chart(months);
}

async function downloadCsv(event) {
  event.preventDefault();
  const response = await fetch(`${API}billing/monthly?format=csv`, {
    headers: { Authorization: `Bearer ${session()}` },
  });
  if (!response.ok) { status(`CSV: ${response.status}`); return; }
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement('a');
  a.href = url;
  a.download = 'tollgate-billing.csv';
  a.click();
  URL.revokeObjectURL(url);
}

async function showNodes() {
  const { nodes } = await api('nodes');
  fill('#nodes', nodes, (tr, n) => {
    tr.dataset.node = n.node_id;
    if (n.silent) tr.className = 'silent';
    cell(tr, n.customer);
    cell(tr, n.license_key);
    cell(tr, n.node_id);
    cell(tr, n.silent ? `silent ${Math.floor(n.silent_for_ms / 60000)} min` : 'reporting', 'state');
    cell(tr, n.last_report_at);
    cell(tr, n.client_address);
    cell(tr, n.agent_version);
  });
}

async function showAudit() {
  const { audit } = await api('audit?limit=200');
  fill('#audit', audit, (tr, a) => {
    cell(tr, a.at);
    cell(tr, a.actor);
    cell(tr, a.action, 'action');
    cell(tr, a.license_key);
    cell(tr, JSON.stringify(a.detail));
  });
}

const TABS = { customers: showCustomers, licenses: showLicenses, tokens: showTokens, usage: showUsage, nodes: showNodes, audit: showAudit };

async function showTab(name) {
  for (const section of document.querySelectorAll('.tab')) section.hidden = section.id !== `tab-${name}`;
  for (const b of document.querySelectorAll('nav button')) b.classList.toggle('active', b.dataset.tab === name);
  status('');
  try { await TABS[name](); document.body.dataset.tab = name; } catch (e) { status(e.message); }
}

async function start() {
  const me = await api('whoami');
  role = me.role;
  document.body.classList.toggle('viewer', role !== 'admin');
  $('#who').textContent = `${me.name} (${me.role})`;
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#logout').hidden = false;
  await showTab('customers');
}

function logout() {
  const token = session();
  sessionStorage.removeItem('tollgate-console-session');
  if (token) fetch(`${API}logout`, { method: 'POST', headers: { Authorization: `Bearer ${token}` } }).catch(() => {});
  $('#app').hidden = true;
  $('#logout').hidden = true;
  $('#who').textContent = '';
  $('#login').hidden = false;
}

function onSubmit(selector, action) {
  $(selector).addEventListener('submit', (event) => {
    event.preventDefault();
    status('');
    action().catch((e) => status(e.message));
  });
}

document.addEventListener('DOMContentLoaded', () => {
  onSubmit('#login', async () => {
    $('#login-error').textContent = '';
    const response = await fetch(`${API}login`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ name: $('#login-name').value, password: $('#login-password').value }),
    });
    const body = await response.json().catch(() => ({}));
    if (!response.ok) { $('#login-error').textContent = body.message || `${response.status}`; return; }
    sessionStorage.setItem('tollgate-console-session', body.token);
    $('#login-password').value = '';
    await start();
  });
  onSubmit('#customer-add', async () => {
    await api('customers', { method: 'POST', body: { name: $('#customer-name').value } });
    $('#customer-name').value = '';
    await showCustomers();
  });
  onSubmit('#license-form', async () => {
    const spec = $('#license-spec').value;
    const key = (spec.match(/^\s*license_key\s*=\s*"([^"]+)"/m) || [])[1];
    const { licenses } = await api('licenses');
    if (key && licenses.some((l) => l.license_key === key)) {
      await api(`licenses/${encodeURIComponent(key)}`, { method: 'PUT', body: { spec } });
    } else {
      await api('licenses', { method: 'POST', body: { spec } });
    }
    await showLicenses();
  });
  onSubmit('#token-issue', async () => {
    const allow = $('#token-allow').value.split(/[\s,]+/).filter(Boolean);
    const note = $('#token-note').value || undefined;
    const day = $('#token-expires').value;
    const expires_at = day ? `${day}T00:00:00Z` : undefined;
    const issued = await api('tokens', { method: 'POST', body: { license: $('#token-license').value, allow, note, expires_at } });
    $('#token-value').textContent = issued.token;
    $('#token-replaces').textContent = issued.expires_at ? `It expires ${issued.expires_at}.` : '';
    $('#token-new').hidden = false;
    await showTokens();
  });
  for (const b of document.querySelectorAll('nav button')) b.addEventListener('click', () => showTab(b.dataset.tab));
  $('#logout').addEventListener('click', logout);
  $('#csv').addEventListener('click', (e) => downloadCsv(e).catch((err) => status(err.message)));
  if (session()) start().catch(() => logout());
});
