// The Markdown report of a benchmark run: settings, one table per store (median and
// min-max of the runs, each of our devices' ratio to kernel nbd, the target where there is
// one) and the targets.
import { CASES, METRIC_LABEL, type BenchCase, type Metric } from './cases';
import { CLIENT_TITLE, type ClientKind, type QueueSettings, type UblkVariant } from './devices';
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

/** A device's data path as `list --json` names it; kernel nbd has none. */
export type DataPath = 'copy' | 'zero copy';

// The targets, by data path (zero copy where the kernel offers it, 7.2 and later; copy
// elsewhere), each compared within one run against kernel nbd on the same store. Zero copy
// moves no byte in user space, so it is held to the best C ublk server's level; copy mode
// pays a user-space trip per request and a copy per byte, so its QD1 bound is looser and
// it must win where batching shares that trip (QD32).
export const TARGETS: Readonly<Record<DataPath, readonly Target[]>> = {
  'zero copy': targetsWith(1.3, 0.9),
  copy: targetsWith(1.6, 1.1),
};

/** QD1 p50 at most qd1Max, QD32 IOPS at least qd32Min, 64 KiB and 1 MiB MB/s at least 0.9x. */
function targetsWith(qd1Max: number, qd32Min: number): Target[] {
  return [
    ...['randread-4k-qd1', 'randwrite-4k-qd1'].map((caseId): Target => ({ caseId, metric: 'p50', max: qd1Max })),
    ...['randread-4k-qd32', 'randwrite-4k-qd32'].map((caseId): Target => ({ caseId, metric: 'iops', min: qd32Min })),
    ...['randread-64k-qd8', 'randwrite-64k-qd8', 'read-1m-qd8', 'write-1m-qd8']
      .map((caseId): Target => ({ caseId, metric: 'mbps', min: 0.9 })),
  ];
}

/** The data path whose targets apply to a device of ours (results without one ran in copy mode). */
function dataPathOf(run: StoreRun, device: string): DataPath {
  return run.devices[device]?.dataPath === 'zero copy' ? 'zero copy' : 'copy';
}

export function targetFor(caseId: string, metric: Metric, dataPath: DataPath): Target | undefined {
  return TARGETS[dataPath].find((t) => t.caseId === caseId && t.metric === metric);
}

function wantText(t: Target): string {
  return t.max !== undefined ? `≤ ${t.max}` : `≥ ${t.min}`;
}

export function summaryOf(run: StoreRun, caseId: string, device: string, metric: Metric): Summary {
  return summarize((run.samples[caseId]?.[device] ?? []).map((s) => s[metric]));
}

/** The keys of run's devices of this kind, in the report's order (ours first). */
export function deviceKeys(run: StoreRun, kind?: ClientKind): string[] {
  return Object.keys(run.devices).filter((k) => kind === undefined || run.devices[k]?.kind === kind);
}

/** One of ours / kernel nbd, of the medians. */
export function ratio(run: StoreRun, caseId: string, device: string, metric: Metric): number {
  return summaryOf(run, caseId, device, metric).median / summaryOf(run, caseId, 'nbd', metric).median;
}

/** A device's name in a ratio's heading: 'ublk' alone, else its title without 'netdisk-ublk'. */
function ratioLabel(run: StoreRun, key: string): string {
  const ours = deviceKeys(run, 'ublk');
  return ours.length === 1 ? 'ublk' : (run.devices[key]?.title ?? key).replace(`${CLIENT_TITLE.ublk} `, '');
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
  const all = deviceKeys(run);
  const ours = deviceKeys(run, 'ublk');
  const lines = [
    `| case | metric | ${all.map((k) => run.devices[k]?.title ?? k).join(' | ')} | ${ours.map((k) => `${ratioLabel(run, k)} / nbd`).join(' | ')} | target |`,
    `|---|---|${all.map(() => '---:|').join('')}${ours.map(() => '---:|').join('')}---|`,
  ];
  for (const id of cases) {
    const c = caseOf(id);
    for (const m of c.metrics) {
      const rs = ours.map((k) => ratio(run, id, k, m));
      // Each device against its own data path's target: '≤ 1.3 met, ≤ 1.6 **not met**'.
      const judged = ours.map((k, i) => {
        const t = targetFor(id, m, dataPathOf(run, k));
        const r = rs[i] ?? NaN;
        if (t === undefined) return '';
        return `${wantText(t)} ${!Number.isFinite(r) ? '–' : targetMet(t, r) ? 'met' : '**not met**'}`;
      });
      const target = judged.some((j) => j !== '') && rs.some((r) => Number.isFinite(r)) ? judged.join(', ') : '';
      const rText = rs.map((r) => (Number.isFinite(r) ? r.toFixed(2) : '–'));
      lines.push(`| ${c.title} | ${METRIC_LABEL[m]} | ${all.map((k) => fmtSummary(summaryOf(run, id, k, m), m)).join(' | ')} | ${rText.join(' | ')} | ${target} |`);
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
  const paths = (Object.keys(TARGETS) as DataPath[]).filter((p) =>
    res.stores.some((run) => deviceKeys(run, 'ublk').some((k) => dataPathOf(run, k) === p)));
  for (const path of paths) {
    for (const t of TARGETS[path]) {
      if (!res.settings.cases.includes(t.caseId)) continue;
      const parts = res.stores.flatMap((run) => {
        const ours = deviceKeys(run, 'ublk');
        const each = ours.filter((k) => dataPathOf(run, k) === path).map((k) => {
          const r = ratio(run, t.caseId, k, t.metric);
          const text = `${Number.isFinite(r) ? r.toFixed(2) : '–'}${Number.isFinite(r) ? (targetMet(t, r) ? ' (met)' : ' (not met)') : ''}`;
          return ours.length === 1 ? text : `${ratioLabel(run, k)} ${text}`;
        });
        if (each.length === 0) return [];
        return [`${STORE_TITLE[run.store]}${ours.length === 1 ? ' ' : ': '}${each.join(', ')}`];
      });
      out.push(`- ${path}: ${caseOf(t.caseId).title}, ${METRIC_LABEL[t.metric]}: ublk/nbd ${wantText(t)}x kernel nbd: ${parts.join('; ')}`);
    }
  }
  return out;
}

function variantLines(variants: UblkVariant[]): string[] {
  if (variants.length === 1) {
    const t = variants[0]?.settings.transport;
    const zc = variants[0]?.settings.zeroCopy;
    return [
      ...(t ? [`- netdisk-ublk's connection on the **${t} transport** (\`add --transport ${t}\`).`] : []),
      ...(zc === 'off' ? ['- netdisk-ublk with **zero copy turned off** (`add --zero-copy off`).'] : []),
    ];
  }
  return [`- netdisk-ublk in ${variants.length} configurations, a device each, all attached to the store and taking turns with ` +
    'kernel nbd case by case; while one device is measured, the other devices\' ' +
    'daemons are stopped (SIGSTOP), so one netdisk-ublk daemon runs at a time and each keeps its warm-up.'];
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
      `(after an unrecorded warm-up of ${s.warmupSeconds} s over all cases on ${s.variants.length > 1 ? 'every device' : 'both devices'}); ` +
      `the devices take turns case by case (${s.variants.length > 1 ? 'each case starts with the next device' : 'the order flips every case and every run'}). Latency is fio's total latency ` +
      '(`lat_ns`: submission plus completion), as the kernel nbd client does its sending inside the submit call.',
    `- Cells: **median** of the runs (min–max). Ratio: ${s.variants.length > 1 ? 'each netdisk-ublk device\'s' : 'ublk'} median / nbd median.`,
    ...variantLines(s.variants),
    ...(s.tls ? ['- **netdisk-ublk over TLS** (nbds://, PSK; the store offers TLS with `--tls on`); kernel nbd in clear text (it has no TLS of its own).'] : []),
    `- Load average (1, 5, 15 min) ${e.inVm ? 'in the VM' : ''} at start ${loadText(e.load.start)}, at end ${loadText(e.load.end)}` +
      (e.host ? `; on the host before ${loadText(e.host.loadBefore)}${e.host.loadAfter ? `, after ${loadText(e.host.loadAfter)}` : ''}` : '') + '.',
    '',
  ];
  for (const run of res.stores) {
    out.push(`## Store: ${STORE_TITLE[run.store]}`, '', `Store: \`${run.command}\``, '');
    for (const d of Object.values(run.devices)) {
      out.push(`- ${d.title}: \`${d.command}\` → ${d.path}: ${settingsText(d.settings)}${d.dataPath ? `; data path: **${d.dataPath}**` : ''}`);
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
