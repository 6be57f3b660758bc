// Building the page: every text from the API goes in as a text node, never as HTML, so an
// event body or tenant id holding markup shows as the characters it is.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name.startsWith('on')) node.addEventListener(name.slice(2), value);
    else if (name === 'class') node.className = value;
    else node.setAttribute(name, value === true ? '' : String(value));
  }
  append(node, children);
  return node;
}

export function append(node, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function clear(node) {
  node.replaceChildren();
  return node;
}

// Tells screen readers what just happened, without moving focus.
export function announce(text) {
  const live = document.getElementById('announce');
  live.textContent = '';
  setTimeout(() => { live.textContent = text; }, 50);
}

export function time(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  return h('time', { datetime: iso, title: iso }, d.toLocaleString());
}

export function ago(seconds) {
  if (seconds === null || seconds === undefined) return '—';
  const s = Math.round(seconds);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  if (s < 86400) return `${(s / 3600).toFixed(1)} h`;
  return `${(s / 86400).toFixed(1)} d`;
}

export function percent(ratio) {
  return ratio === null || ratio === undefined ? '—' : `${(ratio * 100).toFixed(1)} %`;
}

export function badge(state) {
  return h('span', { class: `badge badge-${String(state).replace(/[^a-z_]/g, '')}` }, state);
}

export function errorBox(error) {
  return h('p', { class: 'error', role: 'alert' },
    error.code ? `${error.code}: ` : '', error.message);
}

// A button that asks once more before it acts: the first press shows what will happen and a
// confirm button (focused), the second runs `action`. `name` tells one row's button from the
// next to a screen reader.
export function confirmButton(label, question, action, name) {
  const box = h('div', { class: 'confirm' });
  const start = h('button', { type: 'button', onclick: ask, 'aria-label': name }, label);
  box.append(start);
  function ask() {
    const yes = h('button', { type: 'button', class: 'danger', onclick: run }, `Yes, ${label.toLowerCase()}`);
    const no = h('button', { type: 'button', onclick: reset }, 'Cancel');
    clear(box).append(h('p', { role: 'alert' }, question), yes, ' ', no);
    yes.focus();
  }
  async function run(e) {
    e.target.disabled = true;
    try {
      const outcome = await action();
      clear(box).append(h('p', { role: 'status', class: 'ok' }, outcome));
    } catch (error) {
      clear(box).append(errorBox(error));
    }
    box.append(h('button', { type: 'button', onclick: reset }, 'Done'));
    box.querySelector('button').focus();
  }
  function reset() {
    clear(box).append(start);
    start.focus();
  }
  return box;
}
