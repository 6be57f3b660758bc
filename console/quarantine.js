// Quarantine: the events in highlevel.quarantine, each with its reason and a redrive.

import { api, query } from './api.js';
import { h, confirmButton } from './dom.js';
import { eventsTable } from './events.js';

const PAGE = 50;

export async function render(root, params) {
  const after = params.get('after') ?? '';
  const page = await api(`/v1/events${query({ state: 'quarantined', limit: PAGE, after })}`);
  root.append(h('h1', {}, 'Quarantine'),
    h('p', { class: 'muted' }, 'Events the broker refused past the bound, that broke the link alone, or that '
      + 'failed their schema under enforce mode. A redrive publishes one to the main exchange again, '
      + 'marked x-hl-replay: true; refused again, its copy comes back here.'));
  if (!page.events.length) {
    root.append(h('p', { class: 'card', id: 'quarantine-empty' }, 'Nothing is quarantined.'));
    return;
  }
  const redrive = {
    title: 'Redrive',
    cell: (e) => confirmButton('Redrive', `Publish event ${e.seq} to the main exchange again?`, async () => {
      await api(`/v1/events/${e.seq}/replay`, { method: 'POST' });
      return 'Queued for the main exchange.';
    }, `Redrive event ${e.seq}`),
  };
  root.append(h('section', { class: 'card wide', 'aria-label': 'Quarantined events' },
    h('div', { class: 'scroll' }, eventsTable(page.events, redrive))));
  const nav = h('p', { class: 'pager' });
  if (after) nav.append(h('a', { href: '#/quarantine' }, 'First page'), ' ');
  if (page.next) nav.append(h('a', { href: `#/quarantine${query({ after: page.next })}`, rel: 'next' }, 'Next page'));
  root.append(nav);
}
