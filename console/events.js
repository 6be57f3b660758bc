// Events: the search form (its values live in the hash, so a search can be linked), a page of
// results with a cursor, and the replay of a window with its dry-run count first.

import { api, query } from './api.js';
import { h, clear, badge, time, errorBox, confirmButton, announce } from './dom.js';

const FIELDS = ['key', 'webhook_id', 'tenant', 'type', 'since', 'until', 'state', 'q'];
const PAGE = 50;

// datetime-local inputs hold local time without a zone; the API takes RFC 3339.
export function toIso(local) {
  return local ? new Date(local).toISOString() : '';
}

export function toLocal(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  return new Date(d.getTime() - d.getTimezoneOffset() * 60_000).toISOString().slice(0, 16);
}

function field(id, label, input, help) {
  return h('div', { class: 'field' }, h('label', { for: id }, label), input,
    help ? h('small', { class: 'muted', id: `${id}-help` }, help) : null);
}

function text(id, value, attrs = {}) {
  return h('input', { id, name: id, type: 'text', value: value ?? '', autocomplete: 'off', ...attrs });
}

function when(id, iso) {
  return h('input', { id, name: id, type: 'datetime-local', value: toLocal(iso) });
}

export async function render(root, params) {
  const state = h('select', { id: 'f-state', name: 'state' },
    ['', 'pending', 'published', 'quarantined', 'lost'].map((s) =>
      h('option', { value: s, selected: params.get('state') === s }, s || 'any')));
  const inputs = {
    key: text('f-key', params.get('key')),
    webhook_id: text('f-webhook_id', params.get('webhook_id')),
    tenant: text('f-tenant', params.get('tenant')),
    type: text('f-type', params.get('type')),
    since: when('f-since', params.get('since')),
    until: when('f-until', params.get('until')),
    state,
    q: text('f-q', params.get('q'), { 'aria-describedby': 'f-q-help' }),
  };
  const form = h('form', { class: 'card search', role: 'search', 'aria-label': 'Search events', onsubmit: search },
    h('div', { class: 'fields' },
      field('f-key', 'Key', inputs.key),
      field('f-webhook_id', 'Webhook id', inputs.webhook_id),
      field('f-tenant', 'Tenant', inputs.tenant),
      field('f-type', 'Type', inputs.type),
      field('f-since', 'Since', inputs.since),
      field('f-until', 'Until', inputs.until),
      field('f-state', 'State', inputs.state),
      field('f-q', 'Body contains', inputs.q, 'Needs a tenant, a type, or a window of at most 24 h.')),
    h('button', { type: 'submit' }, 'Search'), ' ',
    h('a', { href: '#/events' }, 'Clear'));
  const results = h('section', { 'aria-labelledby': 'h-results', id: 'results' });
  root.append(h('h1', {}, 'Events'), form, results, windowReplay(params));

  function search(e) {
    e.preventDefault();
    const wanted = {};
    for (const name of FIELDS) {
      const value = inputs[name].value.trim();
      wanted[name] = name === 'since' || name === 'until' ? toIso(value) : value;
    }
    location.hash = `#/events${query(wanted)}`;
  }

  const asked = {};
  for (const name of FIELDS) asked[name] = params.get(name) ?? '';
  const page = await list(asked, params.get('after'));
  fill(results, page, asked, params.get('after'));
}

async function list(asked, after) {
  try {
    return await api(`/v1/events${query({ ...asked, limit: PAGE, after })}`);
  } catch (error) {
    return { error };
  }
}

function fill(results, page, asked, after) {
  results.append(h('h2', { id: 'h-results' }, 'Results'));
  if (page.error) {
    results.append(errorBox(page.error));
    return;
  }
  const n = page.events.length;
  announce(`${n} event${n === 1 ? '' : 's'} found`);
  if (n === 0) {
    results.append(h('p', { class: 'muted', id: 'no-results' }, 'No event matches.'));
  } else {
    results.append(h('div', { class: 'scroll' }, eventsTable(page.events)));
  }
  const nav = h('p', { class: 'pager' });
  if (after) nav.append(h('a', { href: `#/events${query(asked)}` }, 'First page'), ' ');
  if (page.next) {
    nav.append(h('a', { href: `#/events${query({ ...asked, after: page.next })}`, rel: 'next', id: 'next-page' }, 'Next page'));
  }
  results.append(nav);
}

export function eventsTable(events, extra) {
  const head = ['Seq', 'Received', 'Type', 'Tenant', 'State', 'Size', ...(extra ? [extra.title] : [])]
    .map((t) => h('th', { scope: 'col' }, t));
  const rows = events.map((e) => h('tr', { 'data-seq': e.seq },
    h('td', {}, h('a', { href: `#/events/${e.seq}` }, e.seq)),
    h('td', {}, time(e.received_at)),
    h('td', { class: 'cell-type' }, e.type ?? '—'),
    h('td', { class: 'cell-tenant' }, e.tenant
      ? h('a', { href: `#/events${query({ tenant: e.tenant })}` }, e.tenant) : '—'),
    h('td', {}, badge(e.state), e.replay ? h('span', { class: 'muted' }, ' replay') : null,
      e.quarantine_reason ? h('div', { class: 'muted reason' }, e.quarantine_reason) : null),
    h('td', {}, e.size ?? '—'),
    extra ? h('td', {}, extra.cell(e)) : null));
  return h('table', {},
    h('caption', { class: 'visually-hidden' }, 'Events, newest first'),
    h('thead', {}, h('tr', {}, head)), h('tbody', {}, rows));
}

// The replay of a window: counted first with a dry run, then run once confirmed.
function windowReplay(params) {
  const since = when('r-since', params.get('since'));
  const until = when('r-until', params.get('until'));
  const type = text('r-type', params.get('type'));
  const tenant = text('r-tenant', params.get('tenant'));
  const outcome = h('div', { id: 'replay-outcome' });
  const form = h('form', { class: 'card', 'aria-labelledby': 'h-replay', onsubmit: count },
    h('h2', { id: 'h-replay' }, 'Replay a window'),
    h('p', { class: 'muted' }, 'Publishes the archived events of a window again, marked x-hl-replay: true. '
      + 'The count comes first; nothing is published until you confirm.'),
    h('div', { class: 'fields' },
      field('r-since', 'Since', since), field('r-until', 'Until', until),
      field('r-type', 'Type (optional)', type), field('r-tenant', 'Tenant (optional)', tenant)),
    h('button', { type: 'submit' }, 'Count events'),
    outcome);
  async function count(e) {
    e.preventDefault();
    clear(outcome);
    const request = { since: toIso(since.value), until: toIso(until.value) };
    if (type.value.trim()) request.type = type.value.trim();
    if (tenant.value.trim()) request.tenant = tenant.value.trim();
    if (!request.since || !request.until) {
      outcome.append(h('p', { class: 'error', role: 'alert' }, 'Give both ends of the window.'));
      return;
    }
    try {
      const dry = await api('/v1/replay', { method: 'POST', body: { ...request, dry_run: true } });
      const n = dry.replayed;
      outcome.append(h('p', { role: 'status', id: 'dry-run-count' },
        `${n} event${n === 1 ? '' : 's'} in this window would be published again.`));
      if (n > 0) {
        outcome.append(confirmButton(`Replay ${n} events`,
          `Publish ${n} events again to the exchange, marked x-hl-replay: true?`,
          async () => {
            const done = await api('/v1/replay', { method: 'POST', body: request });
            return `${done.replayed} events queued for replay.`;
          }));
      }
    } catch (error) {
      outcome.append(errorBox(error));
    }
  }
  return form;
}
