// Tenants: those that need the app installed again first, with what to do, then every tenant
// page by page, filtered by token state.

import { api, query } from './api.js';
import { h, badge, time } from './dom.js';

const PAGE = 100;
const STATES = ['active', 'inactive', 'needs_reauth', 'private'];

export async function render(root, params) {
  const state = params.get('state') ?? '';
  const after = params.get('after') ?? '';
  const select = h('select', { id: 't-state', name: 'state' },
    h('option', { value: '' }, 'any'),
    STATES.map((s) => h('option', { value: s, selected: s === state }, s)));
  const filter = h('form', { class: 'card inline', 'aria-label': 'Filter tenants', onsubmit: go },
    h('label', { for: 't-state' }, 'Token state'), select, h('button', { type: 'submit' }, 'Show'));
  function go(e) {
    e.preventDefault();
    location.hash = `#/tenants${query({ state: select.value })}`;
  }
  root.append(h('h1', {}, 'Tenants'), filter);

  // Shown before everything else on the first page of the whole list.
  if (!after && state === '') {
    const reauth = await api(`/v1/tenants${query({ state: 'needs_reauth', limit: PAGE })}`);
    if (reauth.tenants.length) {
      root.append(h('section', { class: 'card wide attention', 'aria-labelledby': 'h-reauth', id: 'needs-reauth' },
        h('h2', { id: 'h-reauth' }, `Need the app installed again (${reauth.tenants.length}${reauth.next ? '+' : ''})`),
        whatToDo(),
        h('div', { class: 'scroll' }, tenantsTable(reauth.tenants, 'Tenants that need re-authorisation')),
        reauth.next ? h('p', {}, h('a', { href: '#/tenants?state=needs_reauth' }, 'Every tenant that needs it')) : null));
    }
  }
  if (state === 'needs_reauth') root.append(h('div', { class: 'card wide attention' }, whatToDo()));

  const page = await api(`/v1/tenants${query({ state, limit: PAGE, after })}`);
  const list = h('section', { class: 'card wide', 'aria-labelledby': 'h-all', id: 'all-tenants' },
    h('h2', { id: 'h-all' }, state ? `Tenants: ${state}` : 'All tenants'));
  list.append(page.tenants.length
    ? h('div', { class: 'scroll' }, tenantsTable(page.tenants, 'Tenants in tenant-id order'))
    : h('p', { class: 'muted' }, 'No tenant.'));
  const nav = h('p', { class: 'pager' });
  if (after) nav.append(h('a', { href: `#/tenants${query({ state })}` }, 'First page'), ' ');
  if (page.next) nav.append(h('a', { href: `#/tenants${query({ state, after: page.next })}`, rel: 'next' }, 'Next page'));
  list.append(nav);
  root.append(list);
  if (page.pending_installs?.length) root.append(pending(page.pending_installs));
}

function whatToDo() {
  return h('p', {}, 'hlgate could neither refresh nor recover these tokens. An admin of each location or '
    + 'agency must install the app again (the install link is /oauth/install on the public listener); '
    + 'until then its events are still stored and published, but no token is served or attached. '
    + 'The last error says what HighLevel answered.');
}

function tenantsTable(tenants, caption) {
  const head = ['Tenant', 'Kind', 'State', 'Token expires', 'Last error', 'Rate budget', 'Updated']
    .map((t) => h('th', { scope: 'col' }, t));
  const rows = tenants.map((t) => h('tr', { 'data-tenant': t.tenant },
    h('th', { scope: 'row', class: 'cell-tenant' }, t.tenant),
    h('td', {}, t.user_type || '—'),
    h('td', {}, badge(t.state)),
    h('td', {}, time(t.expires_at)),
    h('td', { class: 'cell-error' }, t.last_error ?? '—'),
    h('td', {}, t.rate ? `${t.rate.remaining} now, ${t.rate.daily_remaining.toLocaleString()} today` : '—'),
    h('td', {}, time(t.updated_at))));
  return h('table', {}, h('caption', { class: 'visually-hidden' }, caption),
    h('thead', {}, h('tr', {}, head)), h('tbody', {}, rows));
}

function pending(installs) {
  return h('section', { class: 'card wide', 'aria-labelledby': 'h-pending' },
    h('h2', { id: 'h-pending' }, 'INSTALLs waiting for their agency token'),
    h('ul', { class: 'plain' }, installs.map((p) => h('li', {},
      `${p.location_id} under ${p.company_id}: ${p.attempts} attempt(s), next `,
      time(new Date(p.retry_at * 1000).toISOString())))));
}

