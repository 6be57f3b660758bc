// The overview: deliveries judged against HighLevel's rule, the two charts, the pipeline's
// state, tenants by token state and the active alerts; asked again every few seconds.

import { api } from './api.js';
import { h, clear, ago, percent, badge, time, errorBox } from './dom.js';
import { ratioChart, stackedBars } from './chart.js';

const REFRESH_MS = 10_000;

const SIGNATURE = ['missing_signature', 'invalid_signature'];
const sum = (o, names) => names.reduce((n, name) => n + (o[name] ?? 0), 0);
const OUTCOMES = [
  { name: 'accepted', class: 'o-accepted', pick: (p) => p.outcomes.accepted ?? 0 },
  { name: 'duplicate', class: 'o-duplicate', pick: (p) => p.outcomes.duplicate ?? 0 },
  { name: 'signature refused', class: 'o-signature', pick: (p) => sum(p.outcomes, SIGNATURE) },
  {
    name: 'other failures', class: 'o-failed',
    pick: (p) => p.attempts - p.succeeded - sum(p.outcomes, SIGNATURE),
  },
];

export async function render(root) {
  const body = h('div');
  const updated = h('p', { class: 'muted', id: 'updated' });
  root.append(h('div', { class: 'heading' }, h('h1', {}, 'Overview'), updated), body);
  let timer = null;
  let gone = false;
  let last = null;
  // The charts are drawn to the card's width: again when the window changes.
  let resizing = null;
  const resized = () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => { if (last && !gone) draw(clear(body), ...last); }, 200);
  };
  window.addEventListener('resize', resized);
  async function refresh() {
    try {
      const [health, hours, minutes] = await Promise.all([
        api('/v1/health'),
        api('/v1/health/series?span=72h&step=1h'),
        api('/v1/health/series?span=1h&step=1m'),
      ]);
      if (gone) return;
      const first = last === null;
      last = [health, hours, minutes];
      draw(clear(body), ...last);
      // When the first load was drawn, for BENCHMARKS.md.
      if (first) performance.mark('hlgate-overview-drawn');
      updated.textContent = `Updated ${new Date().toLocaleTimeString()}; refreshes every ${REFRESH_MS / 1000} s`;
    } catch (error) {
      if (gone) return;
      clear(body).append(errorBox(error));
    }
    if (!gone) timer = setTimeout(refresh, REFRESH_MS);
  }
  await refresh();
  return () => {
    gone = true;
    clearTimeout(timer);
    window.removeEventListener('resize', resized);
  };
}

function draw(body, health, hours, minutes) {
  const rule = health.rule;
  // The card's inner width: the charts are drawn to it.
  const width = body.clientWidth - 34;
  body.append(
    h('section', { class: 'card wide', 'aria-labelledby': 'h-deliveries' },
      h('h2', { id: 'h-deliveries' }, 'Deliveries ', badge(health.status)),
      windowsTable(health),
      h('p', { class: 'muted' },
        `HighLevel warns, then pauses the webhook, below ${percent(rule.highlevel_ratio)} success over 72 h `
        + `once past ${rule.highlevel_volume.toLocaleString()} deliveries; every non-2xx counts as a failure. `
        + `hlgate warns below ${percent(rule.warn)}.`)),
    h('section', { class: 'card wide', 'aria-labelledby': 'h-ratio' },
      h('h2', { id: 'h-ratio' }, 'Success ratio per hour, last 72 hours'),
      ratioChart(hours.points, [
        { value: rule.highlevel_ratio, class: 'line-highlevel' },
        { value: rule.warn, class: 'line-warn' },
      ], ratioSummary(hours.points, rule), width),
      h('ul', { class: 'legend' },
        h('li', {}, h('span', { class: 'swatch s-ratio', 'aria-hidden': 'true' }), 'success ratio of the hour'),
        h('li', {}, h('span', { class: 'swatch s-highlevel', 'aria-hidden': 'true' }),
          `HighLevel's line, ${percent(rule.highlevel_ratio)}`),
        h('li', {}, h('span', { class: 'swatch s-warn', 'aria-hidden': 'true' }),
          `hlgate's warning, ${percent(rule.warn)}`))),
    h('section', { class: 'card wide', 'aria-labelledby': 'h-minutes' },
      h('h2', { id: 'h-minutes' }, 'Attempts per minute by outcome, last hour'),
      stackedBars(minutes.points, OUTCOMES, barsSummary(minutes.points), width),
      legend(minutes.points)),
    h('div', { class: 'grid' }, pipeline(health), tenantStates(health), alerts(health)),
  );
}

function windowsTable(health) {
  const rows = ['1h', '24h', '72h'].map((name) => {
    const w = health.windows[name];
    const failed = Object.values(w.failed).reduce((a, b) => a + b, 0);
    const cell = (what, value) => h('td', { 'data-metric': `${what}-${name}` }, value);
    return h('tr', {},
      h('th', { scope: 'row' }, name),
      cell('attempts', w.attempts), cell('accepted', w.accepted), cell('duplicate', w.duplicate),
      cell('failed', failed), cell('ratio', percent(w.success_ratio)), h('td', {}, badge(w.status)));
  });
  const head = ['Window', 'Attempts', 'Accepted', 'Duplicate', 'Failed', 'Success', 'Status']
    .map((t) => h('th', { scope: 'col' }, t));
  return h('div', { class: 'scroll' }, h('table', {},
    h('caption', { class: 'visually-hidden' }, 'Webhook answers per window'),
    h('thead', {}, h('tr', {}, head)), h('tbody', {}, rows)));
}

function ratioSummary(points, rule) {
  const ratios = points.map((p) => p.success_ratio).filter((r) => r !== null);
  if (!ratios.length) return 'Success ratio per hour: no deliveries in the last 72 hours.';
  const below = points.filter((p) => p.success_ratio !== null && p.success_ratio < rule.highlevel_ratio).length;
  return `Success ratio per hour over 72 hours: lowest ${percent(Math.min(...ratios))}, `
    + `latest ${percent(ratios[ratios.length - 1])}; ${below} hour(s) below HighLevel's ${percent(rule.highlevel_ratio)}.`;
}

function barsSummary(points) {
  const total = points.reduce((n, p) => n + p.attempts, 0);
  const most = Math.max(0, ...points.map((p) => p.attempts));
  return `Attempts per minute over the last hour: ${total} in all, at most ${most} in one minute.`;
}

function legend(points) {
  return h('ul', { class: 'legend' }, OUTCOMES.map((o) => {
    const n = points.reduce((total, p) => total + o.pick(p), 0);
    return h('li', {}, h('span', { class: `swatch ${o.class}`, 'aria-hidden': 'true' }),
      `${o.name}: `, h('span', { 'data-metric': `hour-${o.class}` }, n));
  }));
}

function pipeline(health) {
  const row = (label, value, metric) => [h('dt', {}, label), h('dd', { 'data-metric': metric }, value)];
  return h('section', { class: 'card', 'aria-labelledby': 'h-pipeline' },
    h('h2', { id: 'h-pipeline' }, 'Pipeline'),
    h('dl', {},
      row('Outbox depth', health.outbox.depth.toLocaleString(), 'outbox-depth'),
      row('Oldest pending', ago(health.outbox.oldest_pending_seconds), 'outbox-oldest'),
      row('Broker', badge(health.broker.state), 'broker'),
      row('Store', badge(health.store), 'store'),
      row('Last accepted', time(health.last_accepted_at), 'last-accepted'),
      row('Signature failures', `${health.signature_failures.failures} of ${health.signature_failures.attempts}`
        + ` in ${ago(health.signature_failures.window_seconds)}`, 'signature-failures')));
}

function tenantStates(health) {
  const states = Object.entries(health.tenants.by_state ?? {});
  return h('section', { class: 'card', 'aria-labelledby': 'h-tenants' },
    h('h2', { id: 'h-tenants' }, 'Tenants by token state'),
    h('ul', { class: 'plain' }, states.map(([state, n]) => h('li', {},
      h('a', { href: `#/tenants?state=${encodeURIComponent(state)}` }, state), ': ',
      h('span', { 'data-metric': `tenants-${state}` }, n)))),
    health.tenants.needs_reauth > 0
      ? h('p', { class: 'warn' }, `${health.tenants.needs_reauth} need the app installed again.`) : null);
}

function alerts(health) {
  return h('section', { class: 'card', 'aria-labelledby': 'h-alerts' },
    h('h2', { id: 'h-alerts' }, 'Active alerts'),
    health.alerts.length === 0
      ? h('p', { class: 'muted', id: 'no-alerts' }, 'None.')
      : h('ul', { class: 'plain', id: 'alerts' }, health.alerts.map((a) =>
        h('li', {}, badge(a.state), ' ', a.alert, ' since ', time(a.since)))));
}
