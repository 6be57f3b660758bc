// Two small SVG charts drawn here rather than with a library: a line with threshold lines and
// stacked bars are a few dozen lines, and the page stays a few kilobytes with no vendored code.

const NS = 'http://www.w3.org/2000/svg';
const H = 220;
const PAD = { left: 46, right: 10, top: 10, bottom: 26 };
// Drawn at the width it is shown at (one user unit a pixel), so that text is never stretched.
let W = 720;
let plotW = W - PAD.left - PAD.right;
const x0 = PAD.left;
const plotH = H - PAD.top - PAD.bottom;

function size(width) {
  W = Math.max(280, Math.round(width));
  plotW = W - PAD.left - PAD.right;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function frame(label) {
  const root = svg('svg', {
    viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: 'img', 'aria-label': label, class: 'chart',
  });
  root.append(svg('title', {}, label));
  return root;
}

function timeLabels(root, points, every) {
  const hourly = points.length > 1 && new Date(points[1].at) - new Date(points[0].at) >= 3_600_000;
  points.forEach((p, i) => {
    if (i % every !== 0) return;
    const d = new Date(p.at);
    const text = hourly
      ? d.toLocaleDateString(undefined, { weekday: 'short', hour: '2-digit' })
      : d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
    const x = x0 + (i + 0.5) * (plotW / points.length);
    root.append(svg('text', { x, y: H - 8, class: 'axis', 'text-anchor': 'middle' }, text));
  });
}

// The success ratio of each step as a line (gaps where a step had no attempts), with
// HighLevel's line and the operator's warning line ({value, class}; the page's legend names them).
export function ratioChart(points, lines, label, width) {
  size(width);
  const root = frame(label);
  const ratios = points.map((p) => p.success_ratio).filter((r) => r !== null);
  const lowest = Math.min(...ratios, ...lines.map((l) => l.value), 1);
  const floor = Math.max(0, Math.floor((lowest - 0.02) * 10) / 10);
  const y = (r) => PAD.top + (1 - (r - floor) / (1 - floor)) * plotH;
  const step = plotW / Math.max(points.length, 1);
  for (let t = floor; t <= 1.0001; t += (1 - floor) / 4) {
    root.append(svg('line', { x1: x0, x2: W - PAD.right, y1: y(t), y2: y(t), class: 'grid' }));
    root.append(svg('text', { x: x0 - 6, y: y(t) + 4, class: 'axis', 'text-anchor': 'end' },
      `${Math.round(t * 100)} %`));
  }
  for (const line of lines) {
    root.append(svg('line', {
      x1: x0, x2: W - PAD.right, y1: y(line.value), y2: y(line.value), class: `threshold ${line.class}`,
    }));
  }
  let path = '';
  let open = false;
  points.forEach((p, i) => {
    if (p.success_ratio === null) { open = false; return; }
    const x = x0 + (i + 0.5) * step;
    path += `${open ? 'L' : 'M'}${x.toFixed(1)},${y(p.success_ratio).toFixed(1)}`;
    open = true;
    root.append(svg('circle', { cx: x, cy: y(p.success_ratio), r: 2.5, class: 'dot' }));
  });
  root.append(svg('path', { d: path, class: 'ratio' }));
  timeLabels(root, points, Math.max(1, Math.round(points.length / Math.max(2, Math.floor(plotW / 110)))));
  return root;
}

// Attempts of each step stacked by outcome, in the order of `outcomes` ({name, class}).
export function stackedBars(points, outcomes, label, width) {
  size(width);
  const root = frame(label);
  const totals = points.map((p) => p.attempts);
  const top = Math.max(1, ...totals);
  const y = (n) => PAD.top + (1 - n / top) * plotH;
  for (const t of [0, top / 2, top]) {
    root.append(svg('line', { x1: x0, x2: W - PAD.right, y1: y(t), y2: y(t), class: 'grid' }));
    root.append(svg('text', { x: x0 - 6, y: y(t) + 4, class: 'axis', 'text-anchor': 'end' },
      Number.isInteger(t) ? t : t.toFixed(1)));
  }
  const step = plotW / Math.max(points.length, 1);
  points.forEach((p, i) => {
    let base = 0;
    for (const outcome of outcomes) {
      const n = outcome.pick(p);
      if (!n) continue;
      root.append(svg('rect', {
        x: x0 + i * step + step * 0.1, width: step * 0.8,
        y: y(base + n), height: y(base) - y(base + n), class: `bar ${outcome.class}`,
      }));
      base += n;
    }
  });
  timeLabels(root, points, Math.max(1, Math.round(points.length / Math.max(2, Math.floor(plotW / 110)))));
  return root;
}
