// The Markdown report of a benchmark run: settings, one table per store (median and
// min-max of the runs, the ublk/nbd ratio, the target where there is one) and the targets.
import { CASES, METRIC_LABEL, type BenchCase, type Metric } from './cases';
import { CLIENT_TITLE, type ClientKind, type QueueSettings } from './devices';
import type { BenchResults, StoreRun } from './results';
import { summarize, type Summary } from './stats';
import { STORE_TITLE } from './stores';

export interface Target {
  caseId: string;
  metric: Metric;
  /** ublk/nbd must be <= max (latency) or >= min (throughput). */
  max?: number;
  min?: number;
}

// The issue's targets, compared within one run against the same store.
export const TARGETS: readonly Target[] = [
  { caseId: 'randread-4k-qd1', metric: 'p50', max: 1.1 },
  { caseId: 'randwrite-4k-qd1', metric: 'p50', max: 1.1 },
  { caseId: 'randread-4k-qd32', metric: 'iops', min: 1.0 },
  { caseId: 'randwrite-4k-qd32', metric: 'iops', min: 1.0 },
  { caseId: 'read-1m-qd8', metric: 'mbps', min: 0.9 },
  { caseId: 'write-1m-qd8', metric: 'mbps', min: 0.9 },
];

export function targetFor(caseId: string, metric: Metric): Target | undefined {
  return TARGETS.find((t) => t.caseId === caseId && t.metric === metric);
}

export function summaryOf(run: StoreRun, caseId: string, client: ClientKind, metric: Metric): Summary {
  return summarize((run.samples[caseId]?.[client] ?? []).map((s) => s[metric]));
}

/** ublk/nbd of the medians. */
export function ratio(run: StoreRun, caseId: string, metric: Metric): number {
  return summaryOf(run, caseId, 'ublk', metric).median / summaryOf(run, caseId, 'nbd', metric).median;
}

export function targetMet(t: Target, r: number): boolean {
  return t.max !== undefined ? r <= t.max : r >= (t.min ?? 0);
}

function fmtNum(v: number, metric: Metric): string {
  if (!Number.isFinite(v)) return '–';
  if (metric === 'mbps') return v >= 100 ? v.toFixed(0) : v.toFixed(1);
  if (metric === 'iops') return Math.round(v).toLocaleString('en-US');
  return v >= 100 ? Math.round(v).toLocaleString('en-US') : v.toFixed(1);
}

const UNIT: Record<Metric, string> = { p50: ' µs', p99: ' µs', 'p99.9': ' µs', iops: '', mbps: '' };

export function fmtSummary(s: Summary, metric: Metric): string {
  if (s.n === 0) return '–';
  const main = `**${fmtNum(s.median, metric)}**${UNIT[metric]}`;
  return s.n > 1 ? `${main} (${fmtNum(s.min, metric)}–${fmtNum(s.max, metric)})` : main;
}

function caseOf(id: string): BenchCase {
  return CASES.find((c) => c.id === id) as BenchCase;
}

function storeTable(run: StoreRun, cases: string[]): string[] {
  const lines = [
    `| case | metric | ${CLIENT_TITLE.ublk} | ${CLIENT_TITLE.nbd} | ublk / nbd | target |`,
    '|---|---|---:|---:|---:|---|',
  ];
  for (const id of cases) {
    const c = caseOf(id);
    for (const m of c.metrics) {
      const u = summaryOf(run, id, 'ublk', m);
      const n = summaryOf(run, id, 'nbd', m);
      const r = u.median / n.median;
      const t = targetFor(id, m);
      let target = '';
      if (t && Number.isFinite(r)) target = `${t.max !== undefined ? `≤ ${t.max}` : `≥ ${t.min}`} ${targetMet(t, r) ? 'met' : '**not met**'}`;
      const rText = Number.isFinite(r) ? r.toFixed(2) : '–';
      lines.push(`| ${c.title} | ${METRIC_LABEL[m]} | ${fmtSummary(u, m)} | ${fmtSummary(n, m)} | ${rText} | ${target} |`);
    }
  }
  return lines;
}

function settingsText(s: QueueSettings): string {
  return `logical block ${s.logicalBlock} B, max request ${s.maxSectorsKb} KiB, ${s.hwQueues} hw queue${s.hwQueues === 1 ? '' : 's'}, ` +
    `nr_requests ${s.nrRequests}, scheduler ${s.scheduler}, cache ${s.writeCache}`;
}

function loadText(l: number[]): string {
  return l.map((x) => x.toFixed(2)).join(' ');
}

/** The table alone (what `bench` prints at the end). */
export function renderTables(res: BenchResults): string {
  const out: string[] = [];
  for (const run of res.stores) {
    out.push(`### Store: ${STORE_TITLE[run.store]}`, '', ...storeTable(run, res.settings.cases), '');
  }
  return out.join('\n');
}

export function targetLines(res: BenchResults): string[] {
  const out: string[] = [];
  for (const t of TARGETS) {
    if (!res.settings.cases.includes(t.caseId)) continue;
    const parts = res.stores.map((run) => {
      const r = ratio(run, t.caseId, t.metric);
      return `${STORE_TITLE[run.store]} ${Number.isFinite(r) ? r.toFixed(2) : '–'}${Number.isFinite(r) ? (targetMet(t, r) ? ' (met)' : ' (not met)') : ''}`;
    });
    const want = t.max !== undefined ? `≤ ${t.max}x` : `≥ ${t.min}x`;
    out.push(`- ${caseOf(t.caseId).title}, ${METRIC_LABEL[t.metric]}: ublk/nbd ${want} kernel nbd: ${parts.join('; ')}`);
  }
  return out;
}

export function renderMarkdown(res: BenchResults, chartFile: string | undefined): string {
  const e = res.env;
  const s = res.settings;
  const where = e.inVm
    ? `the project's test VM (qemu TCG, ${e.cpus} vCPUs, emulated CPU)${e.host ? ` on a ${e.host.cpus}-CPU host (${e.host.cpu}, kernel ${e.host.kernel})` : ''}`
    : `natively (${e.cpus} CPUs, ${e.cpu})`;
  const out: string[] = [
    `# netdisk-ublk vs the kernel nbd client: latency and throughput`,
    '',
    `Run ${e.date} with \`${e.command}\`.`,
    '',
    `- Kernel ${e.kernel}, ${where}.`,
    `- Versions: ${Object.entries(e.versions).map(([k, v]) => `${k} ${v}`).join(', ')}.`,
    `- fio: libaio, direct I/O, one job, ${s.seconds} s per case after ${s.rampSeconds} s of ramp, ${s.runs} run${s.runs === 1 ? '' : 's'} of every case ` +
      `(after an unrecorded warm-up of ${s.warmupSeconds} s over all cases on both devices); ` +
      'the devices take turns case by case (the order flips every case and every run). Latency is fio\'s total latency ' +
      '(`lat_ns`: submission plus completion), as the kernel nbd client does its sending inside the submit call.',
    `- Cells: **median** of the runs (min–max). Ratio: ublk median / nbd median.`,
    ...(s.transport ? [`- netdisk-ublk's connection on the **${s.transport} transport** (\`add --transport ${s.transport}\`).`] : []),
    ...(s.tls ? ['- **netdisk-ublk over TLS** (nbds://, PSK; the store offers TLS with `--tls on`); kernel nbd in clear text (it has no TLS of its own).'] : []),
    `- Load average (1, 5, 15 min) ${e.inVm ? 'in the VM' : ''} at start ${loadText(e.load.start)}, at end ${loadText(e.load.end)}` +
      (e.host ? `; on the host before ${loadText(e.host.loadBefore)}${e.host.loadAfter ? `, after ${loadText(e.host.loadAfter)}` : ''}` : '') + '.',
    '',
  ];
  for (const run of res.stores) {
    out.push(`## Store: ${STORE_TITLE[run.store]}`, '', `Store: \`${run.command}\``, '');
    for (const k of ['ublk', 'nbd'] as ClientKind[]) {
      const d = run.devices[k];
      if (d) out.push(`- ${CLIENT_TITLE[k]}: \`${d.command}\` → ${d.path}: ${settingsText(d.settings)}${d.dataPath ? `; data path: **${d.dataPath}**` : ''}`);
    }
    out.push('', ...storeTable(run, s.cases), '');
  }
  if (chartFile) out.push(`![latency percentiles, IOPS and MB/s](${chartFile})`, '');
  out.push('## Targets', '', ...targetLines(res), '');
  if (res.tsPath) {
    out.push(
      '## The TypeScript part, natively',
      '',
      `UblkQueue + QueueService + NbdClient driven by a stand-in for the kernel side (no ublk), against ${res.tsPath.server} ` +
        `on loopback, ${res.tsPath.where}. CPU time of the process per request (user + system, so the socket ` +
        'system calls are included; the store runs in its own process and is not), median and least loaded of several slices.',
      '',
      '| case | requests/s | CPU per request (median) | least loaded slice |',
      '|---|---:|---:|---:|',
      ...res.tsPath.results.map((r) => `| ${r.name} | ${Math.round(r.iops).toLocaleString('en-US')} | ${r.cpuUsPerRequest.toFixed(1)} µs | ${r.minCpuUsPerRequest.toFixed(1)} µs |`),
      '',
    );
  }
  return out.join('\n');
}
