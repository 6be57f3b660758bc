// One event: its timeline (received and stored, published or quarantined, its replays), the
// message it is published as (routing key, headers) and its body, and Replay.

import { api, query } from './api.js';
import { h, append, badge, time, confirmButton } from './dom.js';
import { eventsTable } from './events.js';

export async function render(root, _params, seq) {
  const e = await api(`/v1/events/${encodeURIComponent(seq)}`);
  // Copies made by replays share the key; an event without a key has none to find.
  const copies = e.key ? await api(`/v1/events${query({ key: e.key, limit: 100 })}`) : { events: [] };
  const replays = copies.events.filter((c) => c.seq !== e.seq && c.replay);

  const quarantined = e.state === 'quarantined';
  append(root, [
    h('p', {}, h('a', { href: '#/events' }, '← Events')),
    h('div', { class: 'heading' },
      h('h1', {}, `Event ${e.seq} `, badge(e.state)),
      h('section', { class: 'actions', 'aria-label': quarantined ? 'Redrive' : 'Replay' },
        confirmButton(quarantined ? 'Redrive' : 'Replay',
          `Publish event ${e.seq} again to the ${quarantined ? 'main ' : ''}exchange, marked x-hl-replay: true?`,
          async () => {
            await api(`/v1/events/${e.seq}/replay`, { method: 'POST' });
            return 'Queued: it will be published once more.';
          }))),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'h-timeline' },
        h('h2', { id: 'h-timeline' }, 'Timeline'), timeline(e, replays)),
      h('section', { class: 'card', 'aria-labelledby': 'h-facts' },
        h('h2', { id: 'h-facts' }, 'Event'), facts(e))),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'h-body' },
        h('h2', { id: 'h-body' }, 'Body'),
        h('pre', { id: 'body', tabindex: '0', 'aria-labelledby': 'h-body' }, bodyText(e))),
      h('section', { class: 'card', 'aria-labelledby': 'h-message' },
        h('h2', { id: 'h-message' }, 'Message'),
        h('p', {}, 'Routing key: ', h('code', { id: 'routing-key' }, e.routing_key ?? '—')),
        headersTable(e.headers ?? {}))),
    replays.length ? h('section', { class: 'card wide', 'aria-labelledby': 'h-copies' },
      h('h2', { id: 'h-copies' }, 'Replayed copies'), h('div', { class: 'scroll' }, eventsTable(replays))) : null,
  ]);
}

function bodyText(e) {
  if ('body' in e) return JSON.stringify(e.body, null, 2);
  if (e.body_base64) {
    try {
      return atob(e.body_base64);
    } catch {
      return e.body_base64;
    }
  }
  return '(not held)';
}

function timeline(e, replays) {
  const step = (what, at, detail) => h('li', {}, h('strong', {}, what), ' ', time(at),
    detail ? h('div', { class: 'muted' }, detail) : null);
  const items = [
    step('Received', e.received_at, `signature ${e.signature_scheme ?? '—'} (${e.signature_form ?? '—'} form), schema ${e.schema ?? '—'}`),
    step('Stored', e.received_at, 'on disk before the 200'),
  ];
  if (e.state === 'published') items.push(step('Published and confirmed', e.published_at, 'the broker confirmed it'));
  if (e.state === 'pending') items.push(h('li', {}, h('strong', {}, 'Waiting'), ' in the outbox for the broker'));
  if (e.state === 'quarantined') {
    items.push(step('Quarantined', e.quarantined_at, e.quarantine_reason));
  }
  if (e.state === 'lost') items.push(h('li', {}, h('strong', {}, 'Lost'), ': an operator accepted its loss'));
  for (const r of replays) {
    items.push(h('li', {}, h('strong', {}, 'Replayed'), ' ', time(r.received_at), ' as ',
      h('a', { href: `#/events/${r.seq}` }, `seq ${r.seq}`), ' ', badge(r.state)));
  }
  return h('ol', { class: 'timeline' }, items);
}

function facts(e) {
  const row = (label, value) => [h('dt', {}, label), h('dd', {}, value ?? '—')];
  return h('dl', {},
    row('Seq', e.seq), row('Key', e.key), row('Webhook id', e.webhook_id),
    row('Type', e.type), row('Tenant', e.tenant ? h('a', { href: `#/events${query({ tenant: e.tenant })}` }, e.tenant) : null),
    row('Size', e.size === null || e.size === undefined ? null : `${e.size} bytes`),
    row('Replay', e.replay ? 'yes' : 'no'));
}

function headersTable(headers) {
  const rows = Object.entries(headers).map(([name, value]) => h('tr', {},
    h('th', { scope: 'row' }, h('code', {}, name)),
    h('td', {}, h('code', {}, typeof value === 'string' ? value : JSON.stringify(value)))));
  return h('div', { class: 'scroll' }, h('table', { id: 'headers' },
    h('caption', {}, 'Headers'),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Name'), h('th', { scope: 'col' }, 'Value'))),
    h('tbody', {}, rows)));
}
