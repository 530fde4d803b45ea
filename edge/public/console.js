// The operator console: API keys, tenant caps and usage, read from and written to the edge's admin API with the
// admin secret. Server data reaches the page only as text nodes (textContent / DOM building), never as markup.
// Amounts are integer micro-units of the price table's currency; dates are UTC days.

/**
 * The chart library, loaded apart from the page's own code: where it fails to load, the console
 * works without its chart. (uPlot builds a number format from `navigator.language` as it loads,
 * which throws where Chromium reports a POSIX locale such as "en-US@posix", e.g. under LANG=C.)
 */
const chartLibrary = import('/vendor/uplot.js').then(
  (module) => ({ uPlot: module.default, failure: null }),
  (error) => ({ uPlot: null, failure: error instanceof Error ? error.message : String(error) }),
);

/** Kept per tab only: never in localStorage (outlives the session) nor in the URL (history, logs, referrers). */
const SECRET_STORAGE = 'sirocco.adminSecret';
const MICROS_PER_UNIT = 1_000_000;
const DAY_SECONDS = 86_400;
const HALF_DAY_SECONDS = DAY_SECONDS / 2;
const TOP_KEYS = 10;
const RECENT_ERRORS = 20;
const SERIES_COLOURS = ['#f2711c', '#2185d0', '#21ba45', '#a333c8', '#db2828', '#00b5ad', '#fbbd08', '#e03997', '#767676', '#6435c9'];

const $ = (id) => document.getElementById(id);

const state = {
  currency: 'EUR',
  /** id → key row from GET /admin/keys, for the edit and revoke dialogs. */
  keys: new Map(),
  /** Models seen in key records and usage: the create form's suggestions (the admin secret cannot list /v1/models). */
  knownModels: new Set(),
  chart: null,
};

// ─── Talking to the edge ─────────────────────────────────────────────────────

/**
 * Calls the admin API with the kept secret (or `candidate`, while signing in); a failure is an Error whose message is
 * the Mistral error body's (or the HTTP status). An answer that arrives after a sign-out is dropped, not shown.
 */
async function api(method, path, body, candidate) {
  const secret = candidate ?? sessionStorage.getItem(SECRET_STORAGE);
  const headers = { authorization: `Bearer ${secret ?? ''}`, accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new Error(`Could not reach the edge: ${error instanceof Error ? error.message : String(error)}`);
  }
  const text = await response.text();
  if (candidate === undefined && sessionStorage.getItem(SECRET_STORAGE) !== secret) throw new Error('Signed out.');
  let json = null;
  try {
    json = JSON.parse(text);
  } catch {
    // not JSON: handled below
  }
  if (!response.ok) {
    const message = typeof json?.message === 'string' ? json.message : text.trim().slice(0, 200) || response.statusText;
    const error = new Error(`${response.status}: ${message}`);
    if (response.status === 401) signOut(`The admin secret was refused (${error.message}). Enter it again.`);
    throw error;
  }
  if (json === null) throw new Error(`${method} ${path} answered something other than JSON`);
  return json;
}

function query(params) {
  const search = new URLSearchParams();
  for (const [name, value] of Object.entries(params)) if (value !== undefined && value !== '') search.set(name, String(value));
  return search.toString();
}

// ─── Formatting and parsing ──────────────────────────────────────────────────

function formatMoney(micros) {
  if (micros === null || micros === undefined) return '–';
  try {
    return new Intl.NumberFormat('en', {
      style: 'currency',
      currency: state.currency,
      minimumFractionDigits: 2,
      maximumFractionDigits: 6,
    }).format(micros / MICROS_PER_UNIT);
  } catch {
    // a currency code Intl does not know
    return `${(micros / MICROS_PER_UNIT).toFixed(6)} ${state.currency}`;
  }
}

const formatCount = (value) => (value === null || value === undefined ? '–' : new Intl.NumberFormat('en').format(value));

/** `2026-12-03 14:05 UTC` from unix seconds or an ISO string. */
function formatTime(value) {
  if (value === null || value === undefined) return 'never';
  const date = typeof value === 'number' ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return `${date.toISOString().slice(0, 16).replace('T', ' ')} UTC`;
}

/** A money amount typed by the operator ("5", "12.50") as micro-units, exactly (no float rounding); '' = none. */
function parseMoney(text, what) {
  const trimmed = text.trim();
  if (trimmed === '') return null;
  const match = trimmed.match(/^(\d{1,12})(?:[.,](\d{1,6}))?$/);
  if (!match) throw new Error(`${what} must be an amount such as 5 or 12.50 (at most 6 decimals), or empty for none.`);
  const micros = Number(match[1]) * MICROS_PER_UNIT + Number((match[2] ?? '').padEnd(6, '0'));
  if (micros <= 0) throw new Error(`${what} must be more than 0 (leave it empty for none).`);
  return micros;
}

/** A whole number typed by the operator; '' = none. */
function parseCount(text, what) {
  const trimmed = text.trim();
  if (trimmed === '') return null;
  if (!/^\d{1,15}$/.test(trimmed) || Number(trimmed) <= 0) throw new Error(`${what} must be a whole number above 0, or empty for none.`);
  return Number(trimmed);
}

function parseModels(text) {
  const models = text
    .split(/[\s,]+/)
    .map((model) => model.trim())
    .filter(Boolean);
  return models.length === 0 ? null : models;
}

const moneyInputValue = (micros) => (micros === null || micros === undefined ? '' : String(micros / MICROS_PER_UNIT));
const countInputValue = (value) => (value === null || value === undefined ? '' : String(value));

/** Today and the first day of this month, as UTC `YYYY-MM-DD` (the API's default range). */
function currentMonthRange() {
  const today = new Date().toISOString().slice(0, 10);
  return { from: `${today.slice(0, 8)}01`, to: today };
}

// ─── DOM building ────────────────────────────────────────────────────────────

/** Builds an element; children are nodes or strings (strings become text nodes, never markup). */
function el(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (name === 'className') element.className = value;
    else if (name === 'dataset') Object.assign(element.dataset, value);
    else if (name.startsWith('on')) element.addEventListener(name.slice(2), value);
    else element.setAttribute(name, value);
  }
  element.append(...children.filter((child) => child !== null && child !== undefined));
  return element;
}

/** A table cell labelled with its column, so narrow screens can show rows as cards. */
function cell(label, content, className) {
  return el('td', { 'data-label': label, className }, content);
}

function emptyRow(table, text) {
  const columns = table.tHead.rows[0].cells.length;
  table.tBodies[0].replaceChildren(el('tr', { className: 'empty' }, el('td', { colspan: String(columns) }, text)));
}

/** Shows a section's state: loading (busy), a message, or an error. */
function setStatus(element, text, kind = 'info') {
  element.textContent = text;
  element.dataset.kind = kind;
}

/** Runs `work` with `button` disabled and a loading line, reporting a failure's readable message. */
async function withBusy(button, statusElement, loadingText, work) {
  if (button) button.disabled = true;
  setStatus(statusElement, loadingText, 'busy');
  statusElement.closest('section, form, dialog')?.setAttribute('aria-busy', 'true');
  try {
    const result = await work();
    setStatus(statusElement, '');
    return result;
  } catch (error) {
    setStatus(statusElement, error instanceof Error ? error.message : String(error), 'error');
    return undefined;
  } finally {
    if (button) button.disabled = false;
    statusElement.closest('section, form, dialog')?.removeAttribute('aria-busy');
  }
}

function rememberModels(models) {
  for (const model of models) if (model && model !== '*') state.knownModels.add(model);
  $('known-models').replaceChildren(...[...state.knownModels].sort().map((model) => el('option', { value: model })));
}

function capsText(spendCap, tokenCap) {
  const parts = [];
  if (spendCap !== null && spendCap !== undefined) parts.push(formatMoney(spendCap));
  if (tokenCap !== null && tokenCap !== undefined) parts.push(`${formatCount(tokenCap)} ${tokenCap === 1 ? 'token' : 'tokens'}`);
  return parts.length === 0 ? 'none' : parts.join(' · ');
}

// ─── Signing in ──────────────────────────────────────────────────────────────

function showConsole(signedIn) {
  $('sign-in').hidden = signedIn;
  $('console').hidden = !signedIn;
  $('nav').hidden = !signedIn;
}

/** Forgets the secret and everything shown with it (a new key's value above all), for whoever uses the tab next. */
function signOut(message, kind = 'error') {
  sessionStorage.removeItem(SECRET_STORAGE);
  for (const dialog of document.querySelectorAll('dialog[open]')) dialog.close();
  $('new-key-value').value = '';
  $('new-key').hidden = true;
  for (const body of document.querySelectorAll('#console tbody')) body.replaceChildren();
  state.chart?.destroy();
  state.chart = null;
  showConsole(false);
  setStatus($('sign-in-status'), message, kind);
  $('admin-secret').value = '';
}

$('sign-in').addEventListener('submit', async (event) => {
  event.preventDefault();
  const secret = $('admin-secret').value.trim();
  if (!secret) {
    setStatus($('sign-in-status'), 'Enter the admin secret.', 'error');
    return;
  }
  // Checked against a real admin route before it is kept, so a typo is reported here rather than on every section.
  const keys = await withBusy($('sign-in-submit'), $('sign-in-status'), 'Checking…', () => api('GET', '/admin/keys', undefined, secret));
  if (!keys) return;
  sessionStorage.setItem(SECRET_STORAGE, secret);
  $('admin-secret').value = '';
  setStatus($('sign-in-status'), '');
  showConsole(true);
  void loadEverything();
});

$('sign-out').addEventListener('click', () => signOut('Signed out.', 'info'));

// ─── Keys ────────────────────────────────────────────────────────────────────

async function loadKeys() {
  const list = await withBusy($('keys-refresh'), $('keys-status'), 'Loading keys…', () => api('GET', '/admin/keys'));
  if (!list) return;
  const keys = [...list.data].sort((a, b) => a.tenant.localeCompare(b.tenant) || a.id.localeCompare(b.id));
  state.keys = new Map(keys.map((key) => [key.id, key]));
  for (const key of keys) rememberModels(key.models);
  $('known-tenants').replaceChildren(
    ...[...new Set(keys.map((key) => key.tenant))].sort().map((tenant) => el('option', { value: tenant })),
  );
  setStatus($('keys-status'), `${keys.length} ${keys.length === 1 ? 'key' : 'keys'}.`);
  const table = $('keys-table');
  if (keys.length === 0) return emptyRow(table, 'No keys yet: create one below.');
  table.tBodies[0].replaceChildren(...keys.map(keyRow));
}

function keyRow(key) {
  const models = key.models.includes('*') ? 'all models' : key.models.join(', ');
  return el(
    'tr',
    { dataset: { keyId: key.id } },
    cell('Key id', el('code', {}, key.id)),
    cell('Tenant', key.tenant),
    cell('Models', models),
    cell('Limits / min', `${formatCount(key.rpm)} req · ${formatCount(key.tpm)} tokens`),
    cell('Monthly caps', capsText(key.spend_cap_month_micros, key.token_cap_month), 'caps'),
    cell(
      'Last used',
      el('span', { title: key.last_used_at ? new Date(key.last_used_at * 1000).toISOString() : null }, formatTime(key.last_used_at)),
    ),
    cell('Spend this month', formatMoney(key.spend_month_micros), 'number spend'),
    cell(
      'Actions',
      el(
        'div',
        { className: 'actions' },
        el('button', { type: 'button', className: 'secondary edit', onclick: () => openEditKey(key.id) }, 'Edit'),
        el('button', { type: 'button', className: 'danger revoke', onclick: () => openRevoke(key.id) }, 'Revoke'),
      ),
    ),
  );
}

$('keys-refresh').addEventListener('click', () => void loadKeys());

$('create-key').addEventListener('submit', async (event) => {
  event.preventDefault();
  const status = $('create-key-status');
  let request;
  try {
    const tenant = $('new-tenant').value.trim();
    if (!tenant) throw new Error('Tenant is required.');
    request = { tenant };
    const models = parseModels($('new-models').value);
    if (models) request.models = models;
    const rpm = parseCount($('new-rpm').value, 'Requests / min');
    if (rpm !== null) request.rpm = rpm;
    const tpm = parseCount($('new-tpm').value, 'Tokens / min');
    if (tpm !== null) request.tpm = tpm;
    const spendCap = parseMoney($('new-spend-cap').value, 'Spend cap');
    if (spendCap !== null) request.spend_cap_month_micros = spendCap;
    const tokenCap = parseCount($('new-token-cap').value, 'Token cap');
    if (tokenCap !== null) request.token_cap_month = tokenCap;
  } catch (error) {
    setStatus(status, error.message, 'error');
    return;
  }
  const created = await withBusy($('create-key-submit'), status, 'Creating…', () => api('POST', '/admin/keys', request));
  if (!created) return;
  setStatus(status, `Created key ${created.id}.`);
  $('create-key').reset();
  $('new-key-tenant').textContent = created.tenant;
  $('new-key-id').textContent = created.id;
  $('new-key-value').value = created.key;
  setStatus($('copy-status'), '');
  $('new-key').hidden = false;
  $('new-key-value').select();
  void loadKeys();
  void loadTenants();
});

$('copy-key').addEventListener('click', async () => {
  const input = $('new-key-value');
  try {
    await navigator.clipboard.writeText(input.value);
    setStatus($('copy-status'), 'Copied to the clipboard.');
  } catch {
    // No clipboard permission (e.g. an http origin other than localhost): leave it selected for Ctrl-C.
    input.select();
    setStatus($('copy-status'), 'Could not copy: the key is selected, press Ctrl-C (⌘-C).', 'error');
  }
});

$('dismiss-key').addEventListener('click', () => {
  $('new-key-value').value = '';
  $('new-key').hidden = true;
});

function openEditKey(id) {
  const key = state.keys.get(id);
  if (!key) return;
  const dialog = $('edit-key-dialog');
  dialog.dataset.keyId = id;
  $('edit-key-id').textContent = id;
  $('edit-models').value = key.models.includes('*') ? '' : key.models.join(', ');
  $('edit-rpm').value = countInputValue(key.rpm);
  $('edit-tpm').value = countInputValue(key.tpm);
  $('edit-spend-cap').value = moneyInputValue(key.spend_cap_month_micros);
  $('edit-token-cap').value = countInputValue(key.token_cap_month);
  setStatus($('edit-key-status'), '');
  dialog.showModal();
}

$('edit-key').addEventListener('submit', async (event) => {
  event.preventDefault();
  const dialog = $('edit-key-dialog');
  const id = dialog.dataset.keyId;
  const status = $('edit-key-status');
  let patch;
  try {
    const rpm = parseCount($('edit-rpm').value, 'Requests / min');
    const tpm = parseCount($('edit-tpm').value, 'Tokens / min');
    if (rpm === null || tpm === null) throw new Error('Requests / min and tokens / min are required.');
    patch = {
      models: parseModels($('edit-models').value) ?? ['*'],
      rpm,
      tpm,
      // null removes a cap
      spend_cap_month_micros: parseMoney($('edit-spend-cap').value, 'Spend cap'),
      token_cap_month: parseCount($('edit-token-cap').value, 'Token cap'),
    };
  } catch (error) {
    setStatus(status, error.message, 'error');
    return;
  }
  const saved = await withBusy($('edit-key-save'), status, 'Saving…', () => api('PATCH', `/admin/keys/${encodeURIComponent(id)}`, patch));
  if (!saved) return;
  dialog.close();
  setStatus($('keys-status'), `Saved key ${id}.`);
  void loadKeys();
});

$('edit-key-cancel').addEventListener('click', () => $('edit-key-dialog').close());

function openRevoke(id) {
  const key = state.keys.get(id);
  if (!key) return;
  const dialog = $('revoke-dialog');
  dialog.dataset.keyId = id;
  $('revoke-key-id').textContent = id;
  $('revoke-key-tenant').textContent = key.tenant;
  setStatus($('revoke-status'), '');
  dialog.showModal();
  // The safe choice has the focus, so Enter does not revoke by accident.
  $('revoke-cancel').focus();
}

$('revoke').addEventListener('submit', async (event) => {
  event.preventDefault();
  const dialog = $('revoke-dialog');
  const id = dialog.dataset.keyId;
  const revoked = await withBusy($('revoke-confirm'), $('revoke-status'), 'Revoking…', () =>
    api('DELETE', `/admin/keys/${encodeURIComponent(id)}`),
  );
  if (!revoked) return;
  dialog.close();
  void loadKeys().then(() => setStatus($('keys-status'), `Revoked key ${id}.`));
  void loadTenants();
});

$('revoke-cancel').addEventListener('click', () => $('revoke-dialog').close());

// ─── Tenants ─────────────────────────────────────────────────────────────────

async function loadTenants() {
  const list = await withBusy($('tenants-refresh'), $('tenants-status'), 'Loading tenants…', () => api('GET', '/admin/tenants'));
  if (!list) return;
  const tenants = [...list.data].sort((a, b) => a.tenant.localeCompare(b.tenant));
  setStatus($('tenants-status'), `${tenants.length} ${tenants.length === 1 ? 'tenant' : 'tenants'}.`);
  const table = $('tenants-table');
  if (tenants.length === 0) return emptyRow(table, 'No tenants yet: a tenant exists once a key or a cap names it.');
  table.tBodies[0].replaceChildren(
    ...tenants.map((tenant) =>
      el(
        'tr',
        { dataset: { tenant: tenant.tenant } },
        cell('Tenant', tenant.tenant),
        cell('Spend cap / month', tenant.spend_cap_month_micros === null ? 'none' : formatMoney(tenant.spend_cap_month_micros), 'number'),
        cell('Token cap / month', tenant.token_cap_month === null ? 'none' : formatCount(tenant.token_cap_month), 'number'),
        cell('Spend this month', formatMoney(tenant.spend_month_micros), 'number spend'),
        cell('Actions', el('button', { type: 'button', className: 'secondary edit', onclick: () => editTenantCaps(tenant) }, 'Edit caps')),
      ),
    ),
  );
}

function editTenantCaps(tenant) {
  $('caps-tenant').value = tenant.tenant;
  $('caps-spend').value = moneyInputValue(tenant.spend_cap_month_micros);
  $('caps-tokens').value = countInputValue(tenant.token_cap_month);
  setStatus($('caps-status'), '');
  $('caps-spend').focus();
}

$('tenants-refresh').addEventListener('click', () => void loadTenants());

$('tenant-caps').addEventListener('submit', async (event) => {
  event.preventDefault();
  const status = $('caps-status');
  let tenant;
  let caps;
  try {
    tenant = $('caps-tenant').value.trim();
    if (!tenant) throw new Error('Tenant is required.');
    caps = {
      spend_cap_month_micros: parseMoney($('caps-spend').value, 'Spend cap'),
      token_cap_month: parseCount($('caps-tokens').value, 'Token cap'),
    };
  } catch (error) {
    setStatus(status, error.message, 'error');
    return;
  }
  const saved = await withBusy($('caps-submit'), status, 'Saving…', () =>
    api('PUT', `/admin/tenants/${encodeURIComponent(tenant)}/caps`, caps),
  );
  if (!saved) return;
  setStatus(status, `Saved the caps of ${tenant}.`);
  void loadTenants();
});

// ─── Usage ───────────────────────────────────────────────────────────────────

const rowTokens = (row) => row.prompt_tokens + row.completion_tokens;
const METRICS = {
  cost_micros: { label: 'spend', value: (row) => row.cost_micros, format: (value) => formatMoney(value) },
  tokens: { label: 'tokens', value: rowTokens, format: formatCount },
  requests: { label: 'requests', value: (row) => row.requests, format: formatCount },
};

/** Every UTC day from `from` to `to` inclusive, as `YYYY-MM-DD`. */
function daysBetween(from, to) {
  const days = [];
  const end = Date.parse(`${to}T00:00:00Z`);
  for (let time = Date.parse(`${from}T00:00:00Z`); time <= end && days.length < 1000; time += DAY_SECONDS * 1000) {
    days.push(new Date(time).toISOString().slice(0, 10));
  }
  return days;
}

async function loadUsage() {
  const from = $('usage-from').value;
  const to = $('usage-to').value;
  const group = $('usage-group').value;
  const status = $('usage-status');
  if (!from || !to) return setStatus(status, 'Choose both dates.', 'error');
  if (from > to) return setStatus(status, '"From" is after "To".', 'error');
  const loaded = await withBusy($('usage-refresh'), status, 'Loading usage…', () =>
    Promise.all([
      api('GET', `/admin/usage?${query({ from, to, group_by: `day,${group}` })}`),
      api('GET', `/admin/usage?${query({ from, to, group_by: 'key' })}`),
      api('GET', `/admin/usage/events?${query({ errors_only: 'true', limit: RECENT_ERRORS })}`),
      // Only for the models the create and edit forms suggest.
      api('GET', `/admin/usage?${query({ from, to, group_by: 'model' })}`),
    ]),
  );
  if (!loaded) return;
  const [perDay, perKey, errors, perModel] = loaded;
  if (perDay.currency && perDay.currency !== state.currency) {
    state.currency = perDay.currency;
    for (const element of document.querySelectorAll('.currency-name')) element.textContent = state.currency;
    // The key and tenant amounts were shown in the assumed currency: show them again in the price table's.
    void loadKeys();
    void loadTenants();
  }
  rememberModels(perModel.data.map((row) => row.model));
  renderTotals(perKey.data);
  void renderChart(perDay, group);
  renderTopKeys(perKey.data);
  renderRecentErrors(errors.data);
  setStatus(status, `Usage from ${perDay.from} to ${perDay.to} (UTC), in ${state.currency}.`);
}

function renderTotals(rows) {
  const sum = (pick) => rows.reduce((total, row) => total + pick(row), 0);
  $('total-requests').textContent = formatCount(sum((row) => row.requests));
  $('total-prompt-tokens').textContent = formatCount(sum((row) => row.prompt_tokens));
  $('total-completion-tokens').textContent = formatCount(sum((row) => row.completion_tokens));
  $('total-cached').textContent = formatCount(sum((row) => row.cached_requests));
  $('total-errors').textContent = formatCount(sum((row) => row.error_requests));
  $('total-cost').textContent = formatMoney(sum((row) => row.cost_micros));
}

async function renderChart(usage, group) {
  const metric = METRICS[$('usage-metric').value] ?? METRICS.cost_micros;
  const days = daysBetween(usage.from, usage.to);
  const dayIndex = new Map(days.map((day, index) => [day, index]));
  /** series name → value per day */
  const series = new Map();
  for (const row of usage.data) {
    const name = group === 'key' ? `${row.key_id ?? '?'} (${row.tenant ?? '?'})` : (row.model ?? '?');
    if (!series.has(name)) series.set(name, new Array(days.length).fill(0));
    const index = dayIndex.get(row.day);
    if (index !== undefined) series.get(name)[index] += metric.value(row);
  }
  const { uPlot, failure } = await chartLibrary;
  const container = $('usage-chart');
  state.chart?.destroy();
  state.chart = null;
  container.replaceChildren();
  $('usage-chart-caption').textContent =
    series.size === 0
      ? `No usage between ${usage.from} and ${usage.to}.`
      : `${metric.label[0].toUpperCase()}${metric.label.slice(1)} per UTC day and ${group}, ${usage.from} to ${usage.to}.` +
        (failure ? ` The chart could not be drawn in this browser (${failure}); the totals and tables are unaffected.` : '');
  if (series.size === 0 || !uPlot) return;
  const names = [...series.keys()];
  const data = [days.map((day) => Date.parse(`${day}T00:00:00Z`) / 1000), ...names.map((name) => series.get(name))];
  const options = {
    width: chartWidth(container),
    height: 260,
    // Ticks on UTC midnights, like the days they label.
    tzDate: (seconds) => uPlot.tzDate(new Date(seconds * 1000), 'Etc/UTC'),
    scales: {
      // Half a day either side, so a single day is a point in the middle rather than an empty range.
      x: { time: true, range: (_plot, min, max) => [min - HALF_DAY_SECONDS, max + HALF_DAY_SECONDS] },
      y: { range: (_plot, _min, max) => [0, max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      {
        stroke: 'currentColor',
        grid: { stroke: 'rgba(128,128,128,0.2)' },
        // Whole days only: the data is per UTC day.
        incrs: [1, 2, 7, 14, 30, 91, 365].map((days) => days * DAY_SECONDS),
        values: (_plot, ticks) => ticks.map((seconds) => new Date(seconds * 1000).toISOString().slice(5, 10)),
      },
      {
        stroke: 'currentColor',
        grid: { stroke: 'rgba(128,128,128,0.2)' },
        // Wide enough for the longest label (amounts can have six decimals).
        size: (_plot, values) => 16 + 8 * Math.max(4, ...(values ?? []).map((value) => value.length)),
        values: (_plot, ticks) => ticks.map((tick) => compactValue(metric, tick)),
      },
    ],
    series: [
      { label: 'day', value: (_plot, seconds) => (seconds === null ? '' : new Date(seconds * 1000).toISOString().slice(0, 10)) },
      ...names.map((name, index) => ({
        label: name,
        stroke: SERIES_COLOURS[index % SERIES_COLOURS.length],
        width: 2,
        points: { show: true, size: 6 },
        value: (_plot, value) => (value === null ? '–' : metric.format(value)),
      })),
    ],
  };
  state.chart = new uPlot(options, data, container);
}

function compactValue(metric, value) {
  if (metric === METRICS.cost_micros) return formatMoney(value);
  return new Intl.NumberFormat('en', { notation: 'compact' }).format(value);
}

function chartWidth(container) {
  return Math.max(240, Math.floor(container.getBoundingClientRect().width || 600));
}

new ResizeObserver(() => {
  if (state.chart) state.chart.setSize({ width: chartWidth($('usage-chart')), height: 260 });
}).observe($('usage-chart'));

function renderTopKeys(rows) {
  const table = $('top-keys');
  const top = rows.filter((row) => row.key_id !== null).slice(0, TOP_KEYS);
  if (top.length === 0) return emptyRow(table, 'No usage in this range.');
  table.tBodies[0].replaceChildren(
    ...top.map((row) =>
      el(
        'tr',
        { dataset: { keyId: row.key_id } },
        cell('Key id', el('code', {}, row.key_id)),
        cell('Tenant', row.tenant ?? '–'),
        cell('Requests', formatCount(row.requests), 'number requests'),
        cell('Tokens', formatCount(rowTokens(row)), 'number tokens'),
        cell('Spend', formatMoney(row.cost_micros), 'number spend'),
      ),
    ),
  );
}

function renderRecentErrors(events) {
  const table = $('recent-errors');
  if (events.length === 0) return emptyRow(table, 'No errors recorded.');
  table.tBodies[0].replaceChildren(
    ...events.map((event) =>
      el(
        'tr',
        {},
        cell('Time (UTC)', formatTime(event.time)),
        cell('Status', String(event.status), 'number'),
        cell('Key id', event.key_id ? el('code', {}, event.key_id) : '–'),
        cell('Model', event.model ?? '–'),
        cell('Request id', el('code', {}, event.request_id ?? '–')),
      ),
    ),
  );
}

$('usage-form').addEventListener('submit', (event) => {
  event.preventDefault();
  void loadUsage();
});
$('usage-metric').addEventListener('change', () => void loadUsage());
$('usage-group').addEventListener('change', () => void loadUsage());

// ─── Start ───────────────────────────────────────────────────────────────────

async function loadEverything() {
  await Promise.all([loadKeys(), loadTenants(), loadUsage()]);
}

const range = currentMonthRange();
$('usage-from').value = range.from;
$('usage-to').value = range.to;
if (sessionStorage.getItem(SECRET_STORAGE)) {
  showConsole(true);
  void loadEverything();
} else {
  showConsole(false);
  $('admin-secret').focus();
}
