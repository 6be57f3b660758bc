// The console's shell: sign-in, the sections and the hash routes that pick one.
//   #/                 overview          #/events?…        search
//   #/events/SEQ       one event         #/tenants?state=  tenants
//   #/quarantine       quarantined events

import { api, session, signedOut, ApiError } from './api.js';
import { h, clear, errorBox } from './dom.js';
import * as overview from './overview.js';
import * as events from './events.js';
import * as event from './event.js';
import * as tenants from './tenants.js';
import * as quarantine from './quarantine.js';

const main = () => document.getElementById('main');
let leave = null;
let signedIn = false;

function route() {
  const [path, search = ''] = location.hash.replace(/^#/, '').split('?');
  const params = new URLSearchParams(search);
  const parts = path.split('/').filter(Boolean);
  if (parts[0] === 'events' && parts[1]) return { section: 'events', view: event, params, id: parts[1] };
  if (parts[0] === 'events') return { section: 'events', view: events, params };
  if (parts[0] === 'tenants') return { section: 'tenants', view: tenants, params };
  if (parts[0] === 'quarantine') return { section: 'quarantine', view: quarantine, params };
  return { section: 'overview', view: overview, params };
}

async function show() {
  if (!signedIn) return;
  if (leave) leave();
  leave = null;
  const r = route();
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.dataset.section === r.section) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  const root = clear(main());
  try {
    leave = (await r.view.render(root, r.params, r.id)) ?? null;
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) return;
    root.append(errorBox(error));
  }
}

function signInForm(message) {
  signedIn = false;
  if (leave) leave();
  leave = null;
  document.getElementById('nav').hidden = true;
  document.getElementById('sign-out').hidden = true;
  const input = h('input', {
    id: 'token', name: 'token', type: 'password', autocomplete: 'current-password',
    required: true, 'aria-describedby': 'token-help',
  });
  const form = h('form', { class: 'card sign-in', onsubmit: submit },
    h('h1', {}, 'Sign in'),
    h('label', { for: 'token' }, 'Admin token'),
    input,
    h('p', { id: 'token-help', class: 'muted' },
      'The value of HLGATE_ADMIN_TOKEN. It is kept for this tab only and sent as a bearer header.'),
    message ? h('p', { class: 'error', role: 'alert', id: 'sign-in-error' }, message) : null,
    h('button', { type: 'submit' }, 'Sign in'));
  clear(main()).append(form);
  input.focus();

  async function submit(e) {
    e.preventDefault();
    session.set(input.value);
    await start('The admin token was refused.');
  }
}

// Asks the API once: open (no token configured, or a good one in this tab) shows the console,
// a 401 the sign-in form.
async function start(refused) {
  try {
    await api('/v1/health');
  } catch (error) {
    if (error.status === 401) {
      session.clear();
      signInForm(refused);
      return;
    }
    clear(main()).append(errorBox(error));
    return;
  }
  signedIn = true;
  document.getElementById('nav').hidden = false;
  document.getElementById('sign-out').hidden = !session.token;
  await show();
  main().focus({ preventScroll: true });
}

signedOut.addEventListener('signed-out', () => {
  if (signedIn) {
    session.clear();
    signInForm('The admin token is no longer accepted: sign in again.');
  }
});

document.addEventListener('DOMContentLoaded', () => {
  // The skip link moves the focus only: as a hash it would be taken for a route.
  document.querySelector('.skip').addEventListener('click', (e) => {
    e.preventDefault();
    main().focus();
  });
  document.getElementById('sign-out').addEventListener('click', () => {
    session.clear();
    signInForm(null);
  });
  window.addEventListener('hashchange', async () => {
    await show();
    window.scrollTo(0, 0);
    main().focus({ preventScroll: true });
  });
  start(null);
});
