// An SVG chart of a benchmark run, one row per store: QD1 latency percentiles of every
// device side by side (log scale), IOPS bars, MB/s bars. Bars are medians; whiskers span
// the runs' min to max. Plain SVG text, no dependencies.
import type { Metric } from './cases';
import { deviceKeys, summaryOf } from './report';
import type { BenchResults, StoreRun } from './results';
import type { Summary } from './stats';
import { STORE_TITLE } from './stores';

// Kernel nbd keeps its orange; ours take blue, then green, purple, brown.
const NBD_COLOR = '#ff7f0e';
const OUR_COLORS = ['#1f77b4', '#2ca02c', '#9467bd', '#8c564b', '#e377c2', '#17becf'];

/** Each device's colour by key: ours in order, kernel nbd orange. */
function colorsOf(run: StoreRun): Map<string, string> {
  const m = new Map<string, string>();
  deviceKeys(run, 'ublk').forEach((k, i) => m.set(k, OUR_COLORS[i % OUR_COLORS.length] as string));
  m.set('nbd', NBD_COLOR);
  return m;
}

interface Group {
  label: string;
  caseId: string;
  metric: Metric;
}

interface Panel {
  title: string;
  log: boolean;
  groups: Group[];
  width: number;
}

const PANELS: Panel[] = [
  {
    title: '4 KiB QD1 latency, µs (log scale)',
    log: true,
    width: 470,
    groups: [
      { label: 'read p50', caseId: 'randread-4k-qd1', metric: 'p50' },
      { label: 'read p99', caseId: 'randread-4k-qd1', metric: 'p99' },
      { label: 'read p99.9', caseId: 'randread-4k-qd1', metric: 'p99.9' },
      { label: 'write p50', caseId: 'randwrite-4k-qd1', metric: 'p50' },
      { label: 'write p99', caseId: 'randwrite-4k-qd1', metric: 'p99' },
      { label: 'write p99.9', caseId: 'randwrite-4k-qd1', metric: 'p99.9' },
    ],
  },
  {
    title: '4 KiB IOPS',
    log: false,
    width: 330,
    groups: [
      { label: 'read QD1', caseId: 'randread-4k-qd1', metric: 'iops' },
      { label: 'write QD1', caseId: 'randwrite-4k-qd1', metric: 'iops' },
      { label: 'read QD32', caseId: 'randread-4k-qd32', metric: 'iops' },
      { label: 'write QD32', caseId: 'randwrite-4k-qd32', metric: 'iops' },
    ],
  },
  {
    title: '1 MiB QD8, MB/s',
    log: false,
    width: 200,
    groups: [
      { label: 'seq read', caseId: 'read-1m-qd8', metric: 'mbps' },
      { label: 'seq write', caseId: 'write-1m-qd8', metric: 'mbps' },
    ],
  },
];

const ROW_HEIGHT = 250;
const TOP = 56;
const GAP = 30;

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;');
}

function fmtTick(v: number): string {
  if (v >= 1e6) return `${v / 1e6}M`;
  if (v >= 1e3) return `${v / 1e3}k`;
  return String(Math.round(v * 100) / 100);
}

function fmtValue(v: number): string {
  if (v >= 10000) return `${(v / 1000).toFixed(0)}k`;
  if (v >= 1000) return `${(v / 1000).toFixed(1)}k`;
  if (v >= 100) return v.toFixed(0);
  return v.toFixed(1);
}

function niceMax(v: number): number {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

interface Scale {
  y(v: number): number;
  ticks: number[];
}

function makeScale(values: number[], log: boolean, y0: number, y1: number): Scale {
  const vs = values.filter((v) => Number.isFinite(v) && v > 0);
  if (log) {
    const lo = 10 ** Math.floor(Math.log10(Math.min(...vs, 1e9)));
    const hi = 10 ** Math.ceil(Math.log10(Math.max(...vs, lo * 10)));
    const span = Math.log10(hi) - Math.log10(lo);
    const ticks: number[] = [];
    for (let p = lo; p <= hi * 1.0001; p *= 10) {
      ticks.push(p);
      if (span <= 2 && p < hi) ticks.push(2 * p, 5 * p);
    }
    return { y: (v) => y1 - ((Math.log10(Math.max(v, lo)) - Math.log10(lo)) / span) * (y1 - y0), ticks };
  }
  const hi = niceMax(Math.max(...vs, 0));
  const ticks = [0, hi / 4, hi / 2, (3 * hi) / 4, hi];
  return { y: (v) => y1 - (v / hi) * (y1 - y0), ticks };
}

function panelSvg(run: StoreRun, p: Panel, x0: number, y0: number): string[] {
  const out: string[] = [];
  const left = 46;
  const plotX = x0 + left;
  const plotW = p.width - left - 8;
  const plotTop = y0 + 22;
  const plotBottom = y0 + ROW_HEIGHT - 50;
  const devices = deviceKeys(run);
  const colors = colorsOf(run);
  const sums: Array<Array<Summary>> = p.groups.map((g) => devices.map((c) => summaryOf(run, g.caseId, c, g.metric)));
  const all = sums.flat().flatMap((s) => [s.median, s.max]);
  const sc = makeScale(all, p.log, plotTop, plotBottom);
  out.push(`<text x="${x0 + p.width / 2}" y="${y0 + 12}" text-anchor="middle" font-weight="bold">${esc(p.title)}</text>`);
  for (const t of sc.ticks) {
    const y = sc.y(t).toFixed(1);
    out.push(`<line x1="${plotX}" x2="${plotX + plotW}" y1="${y}" y2="${y}" stroke="#ddd"/>`);
    out.push(`<text x="${plotX - 4}" y="${(Number(y) + 4).toFixed(1)}" text-anchor="end" fill="#555">${fmtTick(t)}</text>`);
  }
  out.push(`<line x1="${plotX}" x2="${plotX}" y1="${plotTop}" y2="${plotBottom}" stroke="#888"/>`);
  out.push(`<line x1="${plotX}" x2="${plotX + plotW}" y1="${plotBottom}" y2="${plotBottom}" stroke="#888"/>`);
  const gw = plotW / p.groups.length;
  const bw = Math.min(26, (gw - 10) / devices.length);
  p.groups.forEach((g, gi) => {
    const gx = plotX + gi * gw + (gw - bw * devices.length) / 2;
    devices.forEach((c, ci) => {
      const s = sums[gi]?.[ci];
      if (!s || s.n === 0) return;
      const x = gx + ci * bw;
      const y = sc.y(s.median);
      out.push(`<rect x="${x.toFixed(1)}" y="${y.toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${Math.max(0, plotBottom - y).toFixed(1)}" fill="${colors.get(c) ?? '#999'}"><title>${esc(`${run.devices[c]?.title ?? c} ${g.label}: ${fmtValue(s.median)} (${fmtValue(s.min)}–${fmtValue(s.max)})`)}</title></rect>`);
      if (s.n > 1) {
        const cx = (x + (bw - 2) / 2).toFixed(1);
        out.push(`<line x1="${cx}" x2="${cx}" y1="${sc.y(s.min).toFixed(1)}" y2="${sc.y(s.max).toFixed(1)}" stroke="#222"/>`);
      }
      out.push(`<text x="${(x + (bw - 2) / 2).toFixed(1)}" y="${(y - 3).toFixed(1)}" text-anchor="middle" font-size="9" fill="#333">${fmtValue(s.median)}</text>`);
    });
    out.push(`<text x="${(plotX + gi * gw + gw / 2).toFixed(1)}" y="${plotBottom + 14}" text-anchor="middle">${esc(g.label)}</text>`);
  });
  return out;
}

export function renderChart(res: BenchResults): string {
  const width = PANELS.reduce((a, p) => a + p.width, 0) + GAP * (PANELS.length - 1) + 20;
  const height = TOP + res.stores.length * ROW_HEIGHT + 10;
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="sans-serif" font-size="11">`,
    `<rect width="${width}" height="${height}" fill="white"/>`,
    `<text x="10" y="20" font-size="14" font-weight="bold">${esc(`netdisk-ublk vs kernel nbd, same store — ${res.env.date}, kernel ${res.env.kernel}${res.env.inVm ? ' (test VM, qemu TCG)' : ''}`)}</text>`,
  ];
  let lx = 10;
  // Every store has the same devices: the first names them.
  const first = res.stores[0];
  if (first) {
    const colors = colorsOf(first);
    for (const k of deviceKeys(first)) {
      const title = first.devices[k]?.title ?? k;
      out.push(`<rect x="${lx}" y="32" width="12" height="12" fill="${colors.get(k) ?? '#999'}"/>`);
      out.push(`<text x="${lx + 16}" y="42">${esc(title)}</text>`);
      lx += Math.max(120, 16 + Math.ceil(title.length * 6.5) + 14);
    }
  }
  out.push(`<text x="${lx}" y="42" fill="#555">bars: median of ${res.settings.runs} runs; whiskers: min–max</text>`);
  res.stores.forEach((run, ri) => {
    const y0 = TOP + ri * ROW_HEIGHT;
    out.push(`<text x="10" y="${y0 + ROW_HEIGHT - 18}" font-weight="bold" fill="#333">store: ${esc(STORE_TITLE[run.store])}</text>`);
    let x = 10;
    for (const p of PANELS) {
      if (p.groups.some((g) => res.settings.cases.includes(g.caseId))) out.push(...panelSvg(run, p, x, y0));
      x += p.width + GAP;
    }
    if (ri < res.stores.length - 1) out.push(`<line x1="10" x2="${width - 10}" y1="${y0 + ROW_HEIGHT - 6}" y2="${y0 + ROW_HEIGHT - 6}" stroke="#bbb"/>`);
  });
  out.push('</svg>');
  return out.join('\n') + '\n';
}
