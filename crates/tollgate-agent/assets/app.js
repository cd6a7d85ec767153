// tollgate web page: reads the agent's admin API and shows usage against the license.
//
// Everything comes from the agent that serves this page (no other network):
//   GET  /api/v1/usage           this node's figures, every POLL_MS
//   GET  /api/v1/license         the license and its evaluation (viewer), every POLL_MS
//   GET  /api/v1/usage/history   per-minute peaks of the last 24 h, every HISTORY_POLL_MS
//   GET  /api/v1/usage/history?resolution=hour  hourly peaks of 90 days (node and cluster),
//                                every HOURLY_POLL_MS while the 90-day range is shown
//   GET  /api/v1/cluster/history the cluster's per-minute peaks of 24 h, in a cluster
//   GET  /api/v1/cluster         cluster figures once the mesh adds them (404: section hidden)
//   POST /api/v1/license/reload  Reload License (admin)
//   PUT  /api/v1/license         Upload License, the armored text as the body (admin)
// Credentials are HTTP basic, kept in this tab only (sessionStorage). Polling pauses while
// the tab is hidden. The DOM is built with textContent only: license fields are never
// parsed as HTML.
//
// Stale data: a read that fails or takes longer than POLL_MS marks the agent unreachable,
// so within two refresh periods of the agent going away the page greys every figure
// (`body[data-reachable="false"]`) and shows the banner `#stale` with the time of the last
// good answer. Times: every instant on the page goes through `fmtDate` / `fmtTime` in one
// zone, the browser's or UTC (`#zone`, remembered in localStorage); timestamps inside the
// agent's explanations are rewritten into that zone too.
'use strict';

const POLL_MS = 2000;
const HISTORY_POLL_MS = 10000;
const CLUSTER_RETRY_MS = 60000;
const HOURLY_POLL_MS = 60000;
const RANGE_KEY = 'tollgate.range';
const MINUTE_MS = 60000;
const HOUR_MS = 60 * MINUTE_MS;
const DAY_MS = 24 * HOUR_MS;
/** Minutes without a sample are bridged (usage held) up to this long, then the line breaks. */
const GAP_BRIDGE_MS = 15 * MINUTE_MS;
const SESSION_KEY = 'tollgate.session';
const ZONE_KEY = 'tollgate.zone';
/** RFC 3339 UTC instants in the agent's explanations (`2027-01-20T18:45:00Z`). */
const RFC3339_RE = /\b\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d+)?Z\b/g;

/** The three limits: usage field, limit key, label, and what each bar's foot line adds. */
const LIMITS = [
  { key: 'calls', name: 'Concurrent calls', unit: 'concurrent calls' },
  { key: 'subscribers', name: 'Provisioned subscribers', unit: 'provisioned subscribers' },
  { key: 'registered_subscribers', name: 'Registered subscribers', unit: 'registered subscribers' },
];

const SUMMARIES = {
  OK: 'Within the license',
  WARNING: 'A limit is at or above its warning threshold',
  OVER_LIMIT: 'Over a license limit',
  LEASE_EXPIRED: 'The signature lease has ended: renew the license',
  EXPIRED: 'The license has expired',
  NOT_YET_VALID: 'The license is not valid yet',
  HOST_MISMATCH: 'The license is for other hosts',
  ROLLBACK: 'The license is older than one already seen',
  INVALID: 'The license was refused',
  NO_LICENSE: 'No license is installed',
};

const state = {
  session: loadSession(), // {user, token, role} or null
  open: null, // true: no users configured (reads open, admin actions impossible)
  usage: null,
  usageError: '',
  license: null, // GET /api/v1/license body
  licenseError: '',
  history: null,
  historyAt: 0,
  clusterHistory: null, // the cluster's minutes (24 h)
  hourly: null, // hourly peaks (90 days), node and cluster
  hourlyAt: 0,
  range: loadRange(), // 'day' (24 h per minute) or 'quarter' (90 days per hour)
  cluster: null,
  clusterError: '',
  clusterRetryAt: 0,
  reachable: null,
  unreachableSince: 0,
  lastOk: 0,
  busy: false,
  timer: 0,
  polling: false,
  pollAgain: false,
  generation: 0,
  rendered: { license: '', history: '' },
  zone: loadZone(), // 'local' or 'UTC'
};

const $ = (id) => document.getElementById(id);
const numberFormat = new Intl.NumberFormat();
const compactFormat = new Intl.NumberFormat(undefined, { notation: 'compact', maximumFractionDigits: 1 });
const fmt = (n) => numberFormat.format(n);

// ---------------------------------------------------------------------------------------
// DOM helpers

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function svg(tag, attrs, ...children) {
  const el = document.createElementNS('http://www.w3.org/2000/svg', tag);
  setAttrs(el, attrs);
  appendAll(el, children);
  return el;
}

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === 'text') el.textContent = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function appendAll(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
}

function setResult(el, outcome, text, http) {
  el.dataset.outcome = outcome;
  if (http) el.dataset.http = String(http);
  else delete el.dataset.http;
  el.textContent = text;
}

// ---------------------------------------------------------------------------------------
// Time and numbers

function loadRange() {
  try {
    return localStorage.getItem(RANGE_KEY) === 'quarter' ? 'quarter' : 'day';
  } catch (e) {
    return 'day';
  }
}

function setRange(range) {
  state.range = range === 'quarter' ? 'quarter' : 'day';
  try {
    localStorage.setItem(RANGE_KEY, state.range);
  } catch (e) {
    // The choice lasts for this page only.
  }
  state.rendered.history = '';
  renderHistory(true);
  if (state.range === 'quarter' && !state.hourly) {
    state.hourlyAt = 0;
    poll();
  }
}

function loadZone() {
  try {
    return localStorage.getItem(ZONE_KEY) === 'UTC' ? 'UTC' : 'local';
  } catch (e) {
    return 'local';
  }
}

/** The formatters of the chosen zone (rebuilt when the zone changes). */
let formats = makeFormats('local');
function makeFormats(zone) {
  const tz = zone === 'UTC' ? { timeZone: 'UTC' } : {};
  return {
    date: new Intl.DateTimeFormat(undefined, {
      year: 'numeric', month: '2-digit', day: '2-digit', hour: '2-digit', minute: '2-digit',
      hourCycle: 'h23', timeZoneName: 'short', ...tz,
    }),
    time: new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23', ...tz }),
    clock: new Intl.DateTimeFormat(undefined, {
      hour: '2-digit', minute: '2-digit', second: '2-digit', hourCycle: 'h23', timeZoneName: 'short', ...tz,
    }),
  };
}

/** `2026-12-23 14:44 CET` (or `… UTC`): ISO order in the page's zone. */
function fmtDate(ms) {
  const p = Object.fromEntries(formats.date.formatToParts(new Date(ms)).map((x) => [x.type, x.value]));
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute} ${p.timeZoneName || ''}`.trim();
}

/** `14:44` in the page's zone. */
function fmtTime(ms) {
  return formats.time.format(ms);
}

/** `14:44:05 CET`: a clock time with its zone, for "last good answer" and refresh lines. */
function fmtClock(ms) {
  return formats.clock.format(ms);
}

/** The zone's offset from UTC at `ms`, in ms (0 in UTC): aligns chart ticks to the hour. */
function zoneOffsetMs(ms) {
  return state.zone === 'UTC' ? 0 : -new Date(ms).getTimezoneOffset() * MINUTE_MS;
}

/** Rewrites the agent's RFC 3339 UTC instants in `text` into the page's zone. */
function inZone(text) {
  return String(text).replace(RFC3339_RE, (iso) => {
    const ms = Date.parse(iso);
    return Number.isFinite(ms) ? fmtDate(ms) : iso;
  });
}

function setZone(zone) {
  state.zone = zone === 'UTC' ? 'UTC' : 'local';
  formats = makeFormats(state.zone);
  try {
    localStorage.setItem(ZONE_KEY, state.zone);
  } catch (e) {
    // Storage refused: the choice lasts for this page only.
  }
  state.rendered.license = '';
  state.rendered.history = '';
  render();
}

function fmtDays(days) {
  if (days === null || days === undefined) return '';
  if (days < 0) return `${fmt(-days)} day${days === -1 ? '' : 's'} ago`;
  if (days === 0) return 'less than a day left';
  return `${fmt(days)} day${days === 1 ? '' : 's'} left`;
}

function fmtAgo(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return `${s} s ago`;
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  return `${Math.round(s / 3600)} h ago`;
}

function fmtPct(p) {
  if (p === null || p === undefined || !Number.isFinite(p)) return '';
  return p >= 10 || p === Math.trunc(p) ? `${Math.round(p)}%` : `${p.toFixed(1)}%`;
}

/** The same rule as the agent (`LimitStatus::new`): over when above the limit, warning at
 * or above the threshold (for non-zero usage). */
function limitStatus(usage, limit, warnPct) {
  if (limit === null || limit === undefined) return 'NONE';
  if (usage > limit) return 'OVER_LIMIT';
  if (usage > 0 && usage * 100 >= limit * warnPct) return 'WARNING';
  return 'OK';
}

// ---------------------------------------------------------------------------------------
// The API

function basicToken(user, password) {
  const bytes = new TextEncoder().encode(`${user}:${password}`);
  let binary = '';
  for (const b of bytes) binary += String.fromCharCode(b);
  return btoa(binary);
}

/** One request: {status, ok, body (parsed JSON or null), text}. Status 0: unreachable.
 * `credentials: 'omit'` keeps the browser's own basic-auth prompt away on a 401. */
async function api(method, path, { token, body } = {}) {
  const headers = { Accept: 'application/json' };
  if (token) headers.Authorization = `Basic ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'text/plain; charset=utf-8';
  let response;
  let text = '';
  // Reads give up after one refresh period (a hung agent is as stale as a dead one);
  // admin actions get longer (a reload may wait on the license server).
  const controller = new AbortController();
  const timer = setTimeout(() => controller.abort(), method === 'GET' ? POLL_MS : 30 * POLL_MS);
  try {
    response = await fetch(path, {
      method, headers, body, credentials: 'omit', cache: 'no-store', signal: controller.signal,
    });
    text = await response.text();
  } catch (e) {
    return { status: 0, ok: false, body: null, text: '' };
  } finally {
    clearTimeout(timer);
  }
  let json = null;
  try {
    json = text ? JSON.parse(text) : null;
  } catch (e) {
    json = null;
  }
  return { status: response.status, ok: response.ok, body: json, text };
}

/** `403 FORBIDDEN: this action needs the admin role`, from an error body. */
function describeFailure(r) {
  if (r.status === 0) return 'the agent is unreachable';
  const code = r.body && r.body.error ? ` ${r.body.error}` : '';
  const message = r.body && r.body.message ? r.body.message : r.text.trim() || 'no details';
  return `${r.status}${code}: ${message}`;
}

function token() {
  return state.session ? state.session.token : undefined;
}

function loadSession() {
  try {
    const s = JSON.parse(sessionStorage.getItem(SESSION_KEY) || 'null');
    return s && s.user && s.token && s.role ? s : null;
  } catch (e) {
    return null;
  }
}

function saveSession(s) {
  state.session = s;
  state.generation += 1;
  try {
    if (s) sessionStorage.setItem(SESSION_KEY, JSON.stringify(s));
    else sessionStorage.removeItem(SESSION_KEY);
  } catch (e) {
    // Storage refused (private mode): the session lives in memory only.
  }
}

/** The role of valid credentials (`GET /api/v1/whoami`), or null when they are refused. */
async function detectRole(t) {
  const who = await api('GET', '/api/v1/whoami', { token: t });
  if (who.ok && who.body && (who.body.role === 'admin' || who.body.role === 'viewer')) {
    return who.body.role;
  }
  return null;
}

// ---------------------------------------------------------------------------------------
// Polling

/** One round of reads. Sign-in and sign-out bump `state.generation`: answers fetched with
 * the credentials of before are dropped and the round is read again. */
async function poll() {
  if (state.polling) {
    state.pollAgain = true;
    return;
  }
  state.polling = true;
  clearTimeout(state.timer);
  try {
    do {
      state.pollAgain = false;
      const generation = state.generation;
      const answers = await read(token());
      if (generation === state.generation) apply(answers);
      else state.pollAgain = true;
    } while (state.pollAgain);
  } finally {
    state.polling = false;
  }
  render();
  schedule();
}

async function read(t) {
  const now = Date.now();
  const wantHistory = now - state.historyAt >= HISTORY_POLL_MS;
  const wantCluster = now >= state.clusterRetryAt;
  const wantHourly = state.range === 'quarter' && now - state.hourlyAt >= HOURLY_POLL_MS;
  const [usage, license, history, cluster, clusterHistory, hourly, resets] = await Promise.all([
    api('GET', '/api/v1/usage', { token: t }),
    api('GET', '/api/v1/license', { token: t }),
    wantHistory ? api('GET', '/api/v1/usage/history', { token: t }) : null,
    wantCluster ? api('GET', '/api/v1/cluster', { token: t }) : null,
    wantHistory && state.cluster ? api('GET', '/api/v1/cluster/history', { token: t }) : null,
    wantHourly ? api('GET', '/api/v1/usage/history?resolution=hour', { token: t }) : null,
    api('GET', '/api/v1/state/resets', { token: t }),
  ]);
  return { t, now, usage, license, history, cluster, clusterHistory, hourly, resets };
}

function apply({ t, now, usage, license, history, cluster, clusterHistory, hourly, resets }) {
  // State resets pending acknowledgement (GET /api/v1/state/resets).
  if (resets && resets.ok) state.resets = resets.body.pending || [];
  state.reachable = usage.status !== 0;
  if (!state.reachable) {
    state.unreachableSince = state.unreachableSince || now;
    return;
  }
  state.unreachableSince = 0;
  state.lastOk = now;
  if (usage.ok) {
    state.usage = usage.body;
    state.usageError = '';
  } else {
    state.usageError = describeFailure(usage);
  }
  applyLicense(license, t);
  if (history && history.ok && Array.isArray(history.body)) {
    state.history = history.body;
    state.historyAt = now;
  }
  if (clusterHistory && clusterHistory.ok && Array.isArray(clusterHistory.body)) {
    state.clusterHistory = clusterHistory.body;
  }
  if (hourly && hourly.ok && Array.isArray(hourly.body)) {
    state.hourly = hourly.body;
    state.hourlyAt = now;
  }
  if (cluster) applyCluster(cluster, now);
}

function applyLicense(r, t) {
  if (r.status === 0) return;
  if (r.ok) {
    state.license = r.body;
    state.licenseError = '';
    // Readable without credentials: no users are configured.
    if (!t) state.open = true;
    return;
  }
  state.license = null;
  if (r.status === 401 && t) {
    // The agent no longer accepts these credentials (password changed, user removed).
    saveSession(null);
    setResult($('signin-result'), 'error', `Signed out: ${describeFailure(r)}`, r.status);
    showSignIn(true);
  }
  if (r.status === 401) state.open = false;
  state.licenseError = describeFailure(r);
}

/** `/api/v1/cluster` arrives with the mesh; until then it is 404 and the section hidden. */
function applyCluster(r, now) {
  if (r.status === 404) {
    state.cluster = null;
    state.clusterError = '';
    state.clusterRetryAt = now + CLUSTER_RETRY_MS;
  } else if (r.ok && r.body) {
    state.cluster = r.body;
    state.clusterError = '';
  } else if (r.status !== 0) {
    state.clusterError = describeFailure(r);
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (document.visibilityState === 'hidden') return;
  state.timer = setTimeout(poll, POLL_MS);
}

document.addEventListener('visibilitychange', () => {
  if (document.visibilityState === 'hidden') {
    clearTimeout(state.timer);
    renderRefresh();
  } else {
    poll();
  }
});

// ---------------------------------------------------------------------------------------
// Rendering

function render() {
  renderResets();
  renderZone();
  renderAccount();
  renderState();
  renderGauges($('gauges-node'), state.usage, state.usageError, !state.cluster);
  renderIngest();
  renderDenied();
  renderCluster();
  renderLicense();
  renderActions();
  renderHistory();
  renderRefresh();
}

// A banner while state resets wait for an admin's acknowledgement
// (POST /api/v1/state/resets/acknowledge, see docs/operations.md).
function renderResets() {
  const pending = state.resets || [];
  $('resets').hidden = pending.length === 0;
  $('resets-text').textContent = pending
    .map((r) => `${r.reason} at ${fmtClock(r.at_ms)}: ${r.detail}.`)
    .join(' ') + (pending.length ? ' Counts may be low until senders refresh; an admin acknowledges this with POST /api/v1/state/resets/acknowledge.' : '');
}

function evaluation() {
  return state.license && state.license.evaluation ? state.license.evaluation : null;
}

function renderAccount() {
  const who = $('who');
  const toggle = $('signin-toggle');
  const out = $('signout');
  if (state.session) {
    who.textContent = `Signed in as ${state.session.user} (${state.session.role})`;
    toggle.hidden = true;
    out.hidden = false;
  } else if (state.open) {
    who.textContent = 'Reads are open: no users are configured';
    toggle.hidden = true;
    out.hidden = true;
  } else {
    who.textContent = 'Not signed in';
    toggle.hidden = false;
    out.hidden = true;
  }
  const node = (state.usage && state.usage.node_id) || (state.license && state.license.node_id) || '';
  $('node-id').textContent = node;
  const ev = evaluation();
  document.title = ['tollgate', node, ev ? ev.status : ''].filter(Boolean).join(' · ');
}

function renderState() {
  const section = $('state');
  const code = $('state-code');
  const ev = evaluation();
  const list = $('explanation');
  if (!ev) {
    section.dataset.status = '';
    section.dataset.level = '';
    code.textContent = '—';
    code.dataset.status = '';
    $('state-summary').textContent = state.license === null && state.open === false
      ? 'Sign in to see the license state'
      : state.licenseError || 'Loading…';
    list.replaceChildren();
    $('state-mode').textContent = '';
    return;
  }
  section.dataset.status = ev.status;
  section.dataset.level = ev.status === 'OK' || ev.status === 'WARNING' ? 'fine' : 'bad';
  code.textContent = ev.status;
  code.dataset.status = ev.status;
  $('state-summary').textContent = SUMMARIES[ev.status] || ev.status;
  const lines = (state.license.explanation || '').split('\n').filter(Boolean);
  list.replaceChildren(...lines.map((line) => h('li', { text: inZone(line) })));
  $('state-mode').textContent = modeLine(ev);
}

function modeLine(ev) {
  const a = ev.admission || {};
  const emergency = a.emergency_exempt ? ' Emergency calls are always admitted.' : '';
  if (a.deny) return `New calls are being denied (${a.deny}).${emergency}`;
  if (ev.mode === 'enforce') {
    const max = a.calls_admit_max;
    const beyond = max !== null && max !== undefined
      ? `beyond ${fmt(max)} concurrent calls (the limit plus ${ev.policy.grace_pct}% grace)`
      : 'when the license does not allow them';
    return `Mode enforce: new calls are denied ${beyond}.${emergency}`;
  }
  return 'Mode warn: new calls are admitted even over a limit; crossings are reported and logged.';
}

/** Builds the three gauges of a container once; later renders only update them. */
function gauge(container, key) {
  let g = container.querySelector(`.gauge[data-limit="${key}"]`);
  if (g) return g;
  const spec = LIMITS.find((l) => l.key === key);
  const nameId = `${container.id}-${key}-name`;
  g = h('div', { class: 'gauge', 'data-limit': key },
    h('div', { class: 'gauge-head' },
      h('span', { class: 'gauge-name', id: nameId, text: spec.name }),
      h('span', { class: 'badge' })),
    h('div', { class: 'gauge-figures' },
      h('span', { class: 'usage' }), ' ', h('span', { class: 'of' })),
    h('div', { class: 'bar', role: 'meter', 'aria-labelledby': nameId, 'aria-valuemin': 0 },
      h('div', { class: 'fill' }),
      h('div', { class: 'mark warn' }, h('span', { text: 'warn' })),
      h('div', { class: 'mark limit' }, h('span', { text: 'limit' }))),
    h('div', { class: 'gauge-foot' }));
  container.append(g);
  return g;
}

/** Usage figures (this node's or the cluster's) against the license's limits. With
 * `againstLicense` false (this node's share when a cluster holds the license), the figures
 * stand alone: no limit, no status, no headroom (those are the cluster's). */
function renderGauges(container, usage, error, againstLicense = true) {
  const ev = evaluation();
  const doc = againstLicense ? state.license && state.license.license : null;
  container.dataset.againstLicense = String(againstLicense);
  const warnPct = ev ? ev.policy.warn_at_pct : 90;
  for (const spec of LIMITS) {
    const g = gauge(container, spec.key);
    const value = usage ? usage[spec.key] : null;
    const known = value !== null && value !== undefined;
    const limit = doc ? doc.limits[spec.key] : undefined; // undefined: not known, null: unlimited
    const evLimit = ev && ev.limits ? ev.limits[spec.key] : null;
    const warnAt = evLimit && evLimit.warn_at !== null ? evLimit.warn_at
      : (limit !== null && limit !== undefined ? Math.max(1, Math.ceil(limit * warnPct / 100)) : null);
    const status = known && limit !== undefined ? limitStatus(value, limit, warnPct) : 'NONE';
    g.dataset.status = status;

    const badge = g.querySelector('.badge');
    badge.textContent = status === 'NONE' ? '' : status;
    badge.dataset.status = status;
    badge.hidden = status === 'NONE';

    const u = g.querySelector('.usage');
    u.textContent = known ? fmt(value) : '—';
    if (known) u.dataset.value = String(value);
    else delete u.dataset.value;

    const of = g.querySelector('.of');
    of.replaceChildren();
    if (!againstLicense) {
      of.textContent = error || 'on this node (the license holds for the cluster)';
    } else if (limit === undefined) {
      of.textContent = error || (state.open === false && !state.license ? 'sign in to see the limit' : '');
    } else if (limit === null) {
      of.textContent = 'unlimited';
    } else {
      of.append('of ', h('span', { class: 'limit-value', 'data-value': limit, text: fmt(limit) }));
      if (known && limit > 0) of.append(` · ${fmtPct(value * 100 / limit)}`);
    }

    const bar = g.querySelector('.bar');
    const hasBar = known && limit !== undefined && limit !== null;
    bar.hidden = !hasBar;
    if (hasBar) drawBar(bar, value, limit, warnAt, warnPct);

    g.querySelector('.gauge-foot').replaceChildren(...gaugeFoot(spec.key, usage, limit, warnAt, warnPct));
  }
}

function drawBar(bar, value, limit, warnAt, warnPct) {
  const scale = Math.max(limit, value, 1);
  const pos = (v) => `${Math.min(100, (v * 100) / scale)}%`;
  bar.querySelector('.fill').style.width = pos(value);
  bar.setAttribute('aria-valuemax', String(scale));
  bar.setAttribute('aria-valuenow', String(value));
  bar.setAttribute('aria-valuetext', `${fmt(value)} of ${fmt(limit)}${limit > 0 ? ` (${fmtPct((value * 100) / limit)})` : ''}`);
  const warn = bar.querySelector('.mark.warn');
  const lim = bar.querySelector('.mark.limit');
  warn.hidden = warnAt === null;
  if (warnAt !== null) {
    warn.style.left = pos(warnAt);
    warn.title = `warning at ${fmt(warnAt)} (${warnPct}%)`;
  }
  lim.style.left = pos(limit);
  lim.title = `limit ${fmt(limit)}`;
  // The limit is the bar's end until usage passes it; label it only when it moves inside,
  // and drop the warning label when the two would collide.
  const over = value > limit;
  lim.querySelector('span').hidden = !over;
  const gapPx = (((limit - (warnAt || 0)) / scale) * bar.clientWidth);
  warn.querySelector('span').hidden = over ? gapPx < 44 : gapPx < 40;
}

function gaugeFoot(key, usage, limit, warnAt, warnPct) {
  const parts = [];
  const field = (name, text) => (usage && usage[name] !== undefined && usage[name] !== null
    ? h('span', { 'data-field': name, 'data-value': usage[name], text })
    : null);
  if (limit !== null && limit !== undefined && warnAt !== null) {
    parts.push(`warning at ${fmt(warnAt)} (${warnPct}%)`);
    const value = usage ? usage[key] : null;
    if (value !== null && value !== undefined) {
      parts.push(value > limit ? `over by ${fmt(value - limit)}` : `headroom ${fmt(limit - value)}`);
    }
  }
  if (usage) {
    if (key === 'calls') {
      parts.push(field('emergency_calls', `${fmt(usage.emergency_calls)} emergency`));
      parts.push(field('peak_calls', `peak ${fmt(usage.peak_calls)} since start`));
    } else if (key === 'subscribers') {
      const at = usage.subscribers_reported_at_ms;
      const now = usage.timestamp_ms || Date.now();
      if (usage.subscribers_reported_at_ms !== undefined) {
        parts.push(at ? `reported ${fmtAgo(now - at)}` : 'not reported yet');
      }
    } else {
      parts.push(field('registered_contacts', `${fmt(usage.registered_contacts)} contacts`));
      parts.push(field('peak_registered_subscribers', `peak ${fmt(usage.peak_registered_subscribers)} since start`));
    }
  }
  const out = [];
  for (const p of parts.filter(Boolean)) {
    if (out.length) out.push(' · ');
    out.push(p);
  }
  return out;
}

function fmtUptime(s) {
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (s < 60) return `${s} s`;
  return d ? `${d} d ${hh} h` : hh ? `${hh} h ${mm} min` : `${mm} min`;
}

function renderIngest() {
  const u = state.usage;
  const el = $('ingest');
  if (!u || !u.ingest) {
    el.textContent = '';
    return;
  }
  const i = u.ingest;
  el.textContent = `Up ${fmtUptime(u.uptime_s)}: ${fmt(i.events)} events in ${fmt(i.datagrams)} datagrams; `
    + `${fmt(i.malformed)} malformed, ${fmt(i.duplicate_datagrams)} duplicate, ${fmt(i.lost_datagrams)} lost, `
    + `${fmt(i.kernel_drops)} dropped by the kernel.`;
}

/** Denied admissions since start, by code (`usage.admissions_denied`). */
function renderDenied() {
  const el = $('denied');
  const u = state.usage;
  if (!u || !u.admissions_denied) {
    el.replaceChildren();
    return;
  }
  const entries = Object.entries(u.admissions_denied).sort((a, b) => b[1] - a[1]);
  const total = entries.reduce((n, [, c]) => n + c, 0);
  el.dataset.total = String(total);
  if (!total) {
    el.replaceChildren('No new calls denied since the agent started.');
    return;
  }
  el.replaceChildren(`New calls denied since the agent started: ${fmt(total)} (`,
    ...entries.flatMap(([code, count], i) => [i ? ', ' : '',
      h('span', { class: 'denied-code', 'data-code': code, 'data-value': count },
        h('span', { class: 'badge', 'data-status': code, text: code }), ` ${fmt(count)}`)]),
    ').');
}

function renderZone() {
  const button = $('zone');
  const local = Intl.DateTimeFormat().resolvedOptions().timeZone || 'local';
  button.dataset.zone = state.zone;
  button.textContent = state.zone === 'UTC' ? 'Times in UTC' : `Times in ${local}`;
  button.setAttribute('aria-pressed', String(state.zone === 'UTC'));
  button.title = state.zone === 'UTC' ? 'Show every time in this browser\'s time zone' : 'Show every time in UTC';
}

function renderCluster() {
  const section = $('cluster');
  const c = state.cluster;
  section.hidden = !c && !state.clusterError;
  if (section.hidden) return;
  const note = $('cluster-note');
  note.hidden = !state.clusterError;
  note.textContent = state.clusterError ? `Cluster figures unavailable: ${state.clusterError}` : '';
  renderGauges($('gauges-cluster'), c ? c.usage || c.aggregate || null : null, '', true);
  const nodes = c && Array.isArray(c.nodes) ? c.nodes : [];
  const now = (state.usage && state.usage.timestamp_ms) || Date.now();
  $('cluster-nodes').querySelector('tbody').replaceChildren(...nodes.map((n) => {
    const seen = n.last_seen_ms || n.updated_at_ms;
    const st = n.state || n.status || '';
    return h('tr', null,
      h('td', { text: n.node_id || n.id || '' }),
      h('td', null, h('span', { class: 'badge', 'data-status': st, text: st })),
      h('td', { class: 'num', text: n.calls !== undefined ? fmt(n.calls) : '' }),
      h('td', { class: 'num', text: n.registered_subscribers !== undefined ? fmt(n.registered_subscribers) : '' }),
      h('td', { text: seen ? fmtAgo(now - seen) : '' }));
  }));
}

function renderLicense() {
  const dl = $('license-details');
  const note = $('license-note');
  const report = state.license;
  const key = JSON.stringify(report ? [report.license, evaluationKey(report.evaluation), state.zone] : [state.licenseError, state.open]);
  if (key === state.rendered.license) return;
  state.rendered.license = key;
  if (!report) {
    dl.replaceChildren();
    note.hidden = false;
    note.replaceChildren();
    if (state.open === false) {
      note.append('Sign in (viewer or admin) to see the license details. ',
        h('button', { type: 'button', 'data-action': 'signin', text: 'Sign in' }));
    } else {
      note.textContent = state.licenseError || 'Loading…';
    }
    return;
  }
  const doc = report.license;
  const ev = report.evaluation;
  note.hidden = !!doc;
  note.textContent = doc ? '' : 'No license is in force. An admin can upload one below.';
  const rows = [];
  const row = (label, field, ...value) => rows.push(h('dt', { text: label }), h('dd', { 'data-field': field }, ...value));
  if (ev) {
    const from = ev.license_status === ev.status ? null
      : h('div', { class: 'sub', text: `from usage; the license itself is ${ev.license_status}` });
    row('State', 'status', h('span', { class: 'badge', 'data-status': ev.status, text: ev.status }), from,
      ev.reason ? h('div', { class: 'sub', text: inZone(ev.reason) }) : null);
  }
  if (doc) {
    row('License key', 'license_key', h('span', { class: 'mono', text: doc.license_key }));
    row('Customer', 'customer', doc.customer);
    row('Kind', 'kind', doc.kind, h('div', { class: 'sub', text: kindNote(doc.kind) }));
    row('Serial', 'serial', fmt(doc.serial));
    row('Limits', 'limits', ...LIMITS.map((l) => h('div', { 'data-limit': l.key, 'data-value': doc.limits[l.key] ?? 'unlimited' },
      doc.limits[l.key] === null ? `unlimited ${l.unit}` : `${fmt(doc.limits[l.key])} ${l.unit}`)));
    row('Features', 'features', doc.features.length
      ? h('span', { class: 'chips' }, ...doc.features.map((f) => h('span', { class: 'chip', text: f })))
      : 'none');
    row('Valid from', 'valid_from', fmtDate(doc.valid_from_ms));
    row('Valid until', 'valid_until', doc.valid_until_ms
      ? [fmtDate(doc.valid_until_ms), h('span', { class: 'sub', text: ev ? ` (${fmtDays(ev.days_to_expiry)})` : '' })]
      : 'never (perpetual)');
    row('Signature valid until', 'signature_valid_until', doc.signature_valid_until_ms
      ? [fmtDate(doc.signature_valid_until_ms), h('span', { class: 'sub', text: ev ? ` (${fmtDays(ev.days_to_lease_end)})` : '' })]
      : 'no lease (never renewed)');
    const p = doc.policy;
    row('Policy', 'policy', `${p.mode}, warning at ${p.warn_at_pct}%`,
      h('div', { class: 'sub', text: `${p.mode === 'enforce' ? `denies new calls beyond the limit + ${p.grace_pct}% grace` : 'reports only, never denies calls'}; emergency calls ${p.emergency_exempt ? 'always admitted' : 'count and can be denied'}` }));
    row('Hosts', 'host_ids', doc.host_ids.length ? doc.host_ids.join(', ') : 'any host');
    row('Signing key', 'key_id', h('span', { class: 'mono', text: doc.key_id }));
    row('Issued', 'issued_at', fmtDate(doc.issued_at_ms));
  }
  dl.replaceChildren(...rows);
}

function evaluationKey(ev) {
  return ev ? [ev.status, ev.license_status, ev.reason, ev.days_to_expiry, ev.days_to_lease_end] : null;
}

function kindNote(kind) {
  if (kind === 'perpetual') return 'never expires';
  if (kind === 'subscription') return 'renewed from the license server before it expires';
  return 'expires; new calls stop then';
}

function renderActions() {
  const reason = $('actions-reason');
  let why = '';
  if (state.open) why = 'Reload and Upload: no admin users are configured (add [[admin.users]] to the agent\'s config).';
  else if (!state.session) why = 'Reload and Upload: sign in with the admin role.';
  else if (state.session.role !== 'admin') why = `Reload and Upload: needs the admin role (signed in as ${state.session.user}, a viewer).`;
  reason.textContent = why;
  const disabled = !!why || state.busy;
  for (const id of ['reload', 'upload-file', 'upload-text', 'upload-submit']) $(id).disabled = disabled;
}

function renderRefresh() {
  const el = $('refresh');
  if (document.visibilityState === 'hidden') {
    el.textContent = 'Paused while this tab is hidden.';
  } else if (state.reachable === false) {
    el.textContent = `Cannot reach the agent since ${fmtClock(state.unreachableSince)}; retrying every ${POLL_MS / 1000} s.`;
  } else if (state.lastOk) {
    el.textContent = `Live: updated ${fmtClock(state.lastOk)}, every ${POLL_MS / 1000} s.`;
  }
  const stale = state.reachable === false;
  document.body.dataset.reachable = String(!stale);
  const banner = $('stale');
  banner.hidden = !stale;
  if (stale) {
    $('stale-since').textContent = state.lastOk
      ? `The figures below are from ${fmtClock(state.lastOk)} (the last good answer, ${fmtAgo(Date.now() - state.lastOk)}) and may be wrong now.`
      : 'No answer from the agent yet: there are no figures to show.';
    if (state.lastOk) $('stale-since').dataset.lastOk = String(state.lastOk);
  }
}

// ---------------------------------------------------------------------------------------
// The history charts (inline SVG)

/** The series a chart draws, as `{t, v}` points (`t` the start of the minute or hour):
 * this node's or the cluster's, per minute (24 h) or per hour (90 days). */
function chartPoints(scope, series, quarter) {
  if (quarter) {
    const field = scope === 'cluster'
      ? (series === 'calls' ? 'cluster_peak_calls' : 'cluster_peak_registered_subscribers')
      : (series === 'calls' ? 'peak_calls' : 'peak_registered_subscribers');
    return (state.hourly || []).filter((p) => p[field] !== undefined && p[field] !== null)
      .map((p) => ({ t: p.hour_start_ms, v: p[field] }));
  }
  const field = series === 'calls' ? 'peak_calls' : 'peak_registered_subscribers';
  const points = scope === 'cluster' ? state.clusterHistory || [] : state.history || [];
  return points.map((p) => ({ t: p.minute_start_ms, v: p[field] }));
}

function renderHistory(force) {
  const quarter = state.range === 'quarter';
  const clustered = !!state.cluster;
  const doc = state.license && state.license.license;
  const ev = evaluation();
  const key = JSON.stringify([state.historyAt, state.hourlyAt, state.range, clustered, state.zone,
    doc && doc.limits, ev && ev.policy.warn_at_pct, $('history').clientWidth]);
  if (!force && key === state.rendered.history) return;
  state.rendered.history = key;
  for (const b of document.querySelectorAll('#history .range button')) {
    b.setAttribute('aria-pressed', String(b.dataset.range === state.range));
  }
  $('history-range-title').textContent = quarter ? 'Last 90 days' : 'Last 24 hours';
  $('history-scope').textContent = quarter ? 'hourly peaks' : 'per-minute peaks';
  $('charts').dataset.cluster = String(clustered);
  document.querySelector('#charts .chart-col[data-scope="cluster"]').hidden = !clustered;
  const stepMs = quarter ? HOUR_MS : MINUTE_MS;
  const spanMs = quarter ? 90 * DAY_MS : DAY_MS;
  const points = chartPoints('node', 'calls', quarter);
  // The agent's clock, not the browser's: the two may disagree.
  const now = (state.usage && state.usage.timestamp_ms) || Date.now();
  const to = Math.max(now, ...points.slice(-1).map((p) => p.t + stepMs));
  const first = points.length ? points[0].t : to;
  const from = Math.max(to - spanMs, Math.min(first, to - (quarter ? DAY_MS : HOUR_MS)));
  for (const fig of document.querySelectorAll('#history .chart')) {
    const series = fig.dataset.series;
    const scope = fig.dataset.scope;
    if (scope === 'cluster' && !clustered) continue;
    // In a cluster the license holds for the cluster: its limit goes on the cluster's charts.
    const againstLicense = scope === 'cluster' || !clustered;
    const limit = doc && againstLicense ? doc.limits[series] : null;
    const evLimit = ev && ev.limits && againstLicense ? ev.limits[series] : null;
    drawChart(fig, chartPoints(scope, series, quarter), limit, evLimit ? evLimit.warn_at : null, from, to, stepMs);
  }
  const zone = state.zone === 'UTC' ? 'UTC' : 'local time';
  const span = $('history-span');
  const since = quarter ? fmtDate(first) : fmtTime(first);
  span.textContent = points.length === 0
    ? 'no figures yet'
    : first > to - spanMs + stepMs
      ? `since ${since} (the first figure), ${zone}`
      : zone;
  if (points.length) span.dataset.first = String(first);
  renderHistoryTable();
}

/** 1, 2, 2.5, 5 × 10^n at or above `raw`, never below 1 (counts are whole). */
function niceStep(raw) {
  if (raw <= 1) return 1;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const n = raw / pow;
  const m = n <= 1 ? 1 : n <= 2 ? 2 : n <= 2.5 ? 2.5 : n <= 5 ? 5 : 10;
  return Math.max(1, m * pow);
}

function drawChart(fig, points, limit, warnAt, from, to, stepMs) {
  const plot = fig.querySelector('.plot');
  const caption = fig.querySelector('figcaption').textContent;
  const W = Math.max(260, Math.round(plot.clientWidth || 600));
  const H = W < 520 ? 150 : 180;
  const m = { l: 44, r: 8, t: 14, b: 22 };
  const iw = W - m.l - m.r;
  const ih = H - m.t - m.b;
  let peak = 0;
  let peakAt = 0;
  for (const p of points) {
    if (p.v >= peak) {
      peak = p.v;
      peakAt = p.t;
    }
  }
  const step = niceStep((Math.max(peak, limit || 0, 1) * 1.1) / 4);
  const top = Math.ceil((Math.max(peak, limit || 0, 1) * 1.1) / step) * step;
  const x = (t) => m.l + ((Math.min(Math.max(t, from), to) - from) / (to - from)) * iw;
  const y = (v) => m.t + ih - (v / top) * ih;

  const grid = svg('g', { class: 'grid' });
  const axis = svg('g', { class: 'axis' });
  for (let v = 0; v <= top + 1e-9; v += step) {
    grid.append(svg('line', { x1: m.l, x2: W - m.r, y1: y(v), y2: y(v) }));
    axis.append(svg('text', { x: m.l - 6, y: y(v) + 4, 'text-anchor': 'end', text: compactFormat.format(v) }));
  }
  const tickMs = [10, 15, 30, 60, 120, 180, 240, 360, 720, 1440, 2880, 10080, 20160].map((n) => n * MINUTE_MS)
    .find((s) => (to - from) / s <= Math.max(2, Math.floor(iw / 70))) || 30 * DAY_MS;
  const tickLabel = tickMs >= DAY_MS ? (t) => fmtDate(t).slice(5, 10) : fmtTime;
  const offset = zoneOffsetMs(from); // align ticks to the page's zone
  for (let t = Math.ceil((from + offset) / tickMs) * tickMs - offset; t <= to; t += tickMs) {
    grid.append(svg('line', { x1: x(t), x2: x(t), y1: m.t, y2: m.t + ih }));
    axis.append(svg('text', { x: x(t), y: H - 6, 'text-anchor': 'middle', text: tickLabel(t) }));
  }

  // Step line over the minute peaks: each minute is flat, short gaps are held, long break.
  const runs = [];
  let run = null;
  let prevEnd = -Infinity;
  const bridgeMs = Math.max(GAP_BRIDGE_MS, stepMs);
  for (const p of points) {
    const t = p.t;
    if (t + stepMs < from) continue;
    const v = p.v;
    if (!run || t - prevEnd > bridgeMs) {
      run = { d: `M${x(t).toFixed(1)},${y(v).toFixed(1)}`, start: t };
      runs.push(run);
    } else {
      run.d += `H${x(t).toFixed(1)}V${y(v).toFixed(1)}`;
    }
    prevEnd = Math.min(t + stepMs, to);
    run.d += `H${x(prevEnd).toFixed(1)}`;
    run.end = prevEnd;
  }
  const series = svg('g', null);
  for (const r of runs) {
    series.append(svg('path', { class: 'area', d: `${r.d}V${y(0)}H${x(r.start).toFixed(1)}Z` }));
    series.append(svg('path', { class: 'line', d: r.d }));
  }
  const last = points.length ? points[points.length - 1] : null;
  if (last) {
    series.append(svg('circle', { class: 'dot', cx: x(Math.min(last.t + stepMs, to)), cy: y(last.v), r: 3 }));
  }

  const marks = svg('g', null);
  if (warnAt !== null && warnAt !== undefined && limit) {
    marks.append(svg('line', { class: 'warn', x1: m.l, x2: W - m.r, y1: y(warnAt), y2: y(warnAt) }));
    if (y(warnAt) - y(limit) > 13) {
      marks.append(svg('text', { class: 'warn-label', x: m.l + 4, y: y(warnAt) - 4, text: `warning ${fmt(warnAt)}` }));
    }
  }
  if (limit !== null && limit !== undefined) {
    marks.append(svg('line', { class: 'limit', x1: m.l, x2: W - m.r, y1: y(limit), y2: y(limit) }));
    marks.append(svg('text', { class: 'limit-label', x: W - m.r - 2, y: y(limit) - 4, 'text-anchor': 'end', text: `limit ${fmt(limit)}` }));
  }

  const at = stepMs >= HOUR_MS ? fmtDate : fmtTime;
  const label = points.length
    ? `${caption}, ${at(from)} to ${at(to)}: latest ${fmt(last.v)}, highest ${fmt(peak)} at ${at(peakAt)}${limit !== null && limit !== undefined ? `, limit ${fmt(limit)}` : ''}.`
    : `${caption}: no figures yet.`;
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': label },
    svg('title', { text: label }), grid, axis, series, marks);
  if (!points.length) {
    chart.append(svg('text', { class: 'empty', x: m.l + iw / 2, y: m.t + ih / 2, 'text-anchor': 'middle', text: 'No figures yet' }));
  }
  fig.dataset.points = String(points.length);
  plot.replaceChildren(chart);
}

/** Hourly peaks as a table: from the 90-day history when it is loaded, else from the
 * minutes of the last 24 h. */
function renderHistoryTable() {
  const hours = new Map();
  if (state.range === 'quarter' && state.hourly) {
    for (const p of state.hourly) hours.set(p.hour_start_ms, [p.peak_calls, p.peak_registered_subscribers]);
  }
  for (const p of state.range === 'quarter' && state.hourly ? [] : state.history || []) {
    // The hour in the page's zone (offsets are whole quarter hours, so align by the offset).
    const off = zoneOffsetMs(p.minute_start_ms);
    const k = Math.floor((p.minute_start_ms + off) / HOUR_MS) * HOUR_MS - off;
    const cur = hours.get(k) || [0, 0];
    hours.set(k, [Math.max(cur[0], p.peak_calls), Math.max(cur[1], p.peak_registered_subscribers)]);
  }
  const rows = [...hours.entries()].sort((a, b) => b[0] - a[0]).map(([k, [c, r]]) => h('tr', null,
    h('td', { text: fmtDate(k) }), h('td', { class: 'num', text: fmt(c) }), h('td', { class: 'num', text: fmt(r) })));
  $('history-table').querySelector('tbody').replaceChildren(...rows);
}

// ---------------------------------------------------------------------------------------
// Sign-in and the admin actions

function showSignIn(show) {
  const form = $('signin-form');
  form.hidden = !show;
  $('signin-toggle').setAttribute('aria-expanded', String(show));
  if (show) $('signin-user').focus();
}

async function signIn(event) {
  event.preventDefault();
  const user = $('signin-user').value.trim();
  const password = $('signin-password').value;
  const result = $('signin-result');
  const submit = $('signin-submit');
  if (!user || !password) {
    setResult(result, 'error', 'Enter a user name and a password.');
    return;
  }
  submit.disabled = true;
  setResult(result, 'pending', 'Checking…');
  try {
    const t = basicToken(user, password);
    const check = await api('GET', '/api/v1/license', { token: t });
    if (!check.ok) {
      setResult(result, 'error', `Sign-in failed: ${describeFailure(check)}`, check.status);
      return;
    }
    const role = await detectRole(t);
    if (!role) {
      setResult(result, 'error', 'Sign-in failed: the agent did not accept these credentials.');
      return;
    }
    saveSession({ user, token: t, role });
    $('signin-password').value = '';
    setResult(result, 'ok', `Signed in as ${user} (${role}).`);
    showSignIn(false);
    setResult($('action-result'), '', '');
    state.rendered.license = '';
    render();
    await poll();
  } finally {
    submit.disabled = false;
  }
}

function signOut() {
  saveSession(null);
  state.license = null;
  state.rendered.license = '';
  setResult($('action-result'), '', '');
  setResult($('signin-result'), '', '');
  render();
  poll();
}

/** Runs an admin action and shows its outcome: 200 with the agent's message, or the
 * status, code and message of the refusal (401, 403, 409, 422, …). */
async function adminAction(label, method, path, body) {
  const result = $('action-result');
  state.busy = true;
  renderActions();
  setResult(result, 'pending', `${label}…`);
  try {
    const r = await api(method, path, { token: token(), body });
    if (r.ok) {
      const message = r.body && r.body.message ? r.body.message : 'done';
      setResult(result, 'ok', `${label}: ${r.status} OK: ${message}.`, r.status);
    } else {
      setResult(result, 'error', `${label} failed: ${describeFailure(r)}`, r.status);
    }
    return r.ok;
  } finally {
    state.busy = false;
    state.rendered.license = '';
    await poll();
  }
}

async function upload(event) {
  event.preventDefault();
  const text = $('upload-text').value;
  if (!text.trim()) {
    setResult($('action-result'), 'error', 'Upload License: choose a license file or paste the license text first.');
    return;
  }
  if (await adminAction('Upload License', 'PUT', '/api/v1/license', text)) {
    $('upload-text').value = '';
    $('upload-file').value = '';
  }
}

async function fileChosen() {
  const file = $('upload-file').files[0];
  if (!file) return;
  if (file.size > 64 * 1024) {
    setResult($('action-result'), 'error', `Upload License: ${file.name} is larger than 64 KiB; a license is a few KiB of text.`);
    return;
  }
  $('upload-text').value = await file.text();
}

function init() {
  formats = makeFormats(state.zone);
  $('signin-toggle').addEventListener('click', () => showSignIn($('signin-form').hidden));
  $('signin-cancel').addEventListener('click', () => showSignIn(false));
  $('signin-form').addEventListener('submit', signIn);
  $('signout').addEventListener('click', signOut);
  $('reload').addEventListener('click', () => adminAction('Reload License', 'POST', '/api/v1/license/reload'));
  $('upload-form').addEventListener('submit', upload);
  $('upload-file').addEventListener('change', fileChosen);
  $('zone').addEventListener('click', () => setZone(state.zone === 'UTC' ? 'local' : 'UTC'));
  for (const b of document.querySelectorAll('#history .range button')) {
    b.addEventListener('click', () => setRange(b.dataset.range));
  }
  $('license-note').addEventListener('click', (e) => {
    if (e.target instanceof HTMLElement && e.target.dataset.action === 'signin') showSignIn(true);
  });
  let pending = 0;
  new ResizeObserver(() => {
    cancelAnimationFrame(pending);
    pending = requestAnimationFrame(() => {
      renderHistory(true);
      renderGauges($('gauges-node'), state.usage, state.usageError, !state.cluster);
    });
  }).observe($('history'));
  render();
  poll();
}

init();
