// The benchmark's report, chart and targets from results measured by hand-made numbers:
// one device of ours keeps the report it always had; several each get a column, a ratio
// to kernel nbd, a colour and a legend entry named by transport and data path.
import * as assert from 'assert';
import { renderChart } from '../../src/bench/chart';
import type { Sample } from '../../src/bench/fio';
import { renderMarkdown, renderTables, targetLines } from '../../src/bench/report';
import type { BenchResults, DeviceInfo, StoreRun } from '../../src/bench/results';

const QUEUE = { logicalBlock: 512, maxSectorsKb: 512, nrRequests: 128, hwQueues: 1, scheduler: 'none', writeCache: 'write back' };

function sample(p50: number, iops: number, mbps = 0): Sample {
  return { p50, p99: p50 * 2, 'p99.9': p50 * 3, iops, mbps };
}

function device(kind: 'ublk' | 'nbd', title: string, extra: Partial<DeviceInfo> = {}): DeviceInfo {
  return { kind, title, command: `${kind} command`, path: kind === 'nbd' ? '/dev/nbd0' : '/dev/ublkb0', settings: QUEUE, ...extra };
}

function results(devices: Record<string, DeviceInfo>, samples: StoreRun['samples'], variants: BenchResults['settings']['variants']): BenchResults {
  return {
    env: {
      date: '2026-11-30T12:00:00Z', command: 'netdisk-ublk bench', kernel: '6.12.0', inVm: true, cpu: 'cpu', cpus: 2,
      versions: { fio: 'fio-3.33' }, load: { start: [0.1, 0.2, 0.3], end: [0.4, 0.5, 0.6] },
    },
    settings: {
      cases: ['randread-4k-qd1', 'read-1m-qd8'], runs: 2, warmupSeconds: 30, seconds: 8, rampSeconds: 1, sizeBytes: 256 << 20,
      nbdConnections: 1, nbdBlockSize: 512, variants,
    },
    stores: [{ store: 'nbdkit', command: 'nbdkit memory', devices, samples }],
  };
}

describe('bench: report and chart', () => {
  it('one device of ours: the columns, ratio and targets it always had', () => {
    const res = results({ ublk: device('ublk', 'netdisk-ublk', { dataPath: 'copy' }), nbd: device('nbd', 'kernel nbd') }, {
      'randread-4k-qd1': { ublk: [sample(100, 9000), sample(140, 7000)], nbd: [sample(100, 10000), sample(100, 10000)] },
      'read-1m-qd8': { ublk: [sample(0, 0, 90), sample(0, 0, 100)], nbd: [sample(0, 0, 100), sample(0, 0, 100)] },
    }, [{ key: 'ublk', settings: { transport: 'ring' } }]);
    const table = renderTables(res);
    assert.match(table, /^\| case \| metric \| netdisk-ublk \| kernel nbd \| ublk \/ nbd \| target \|$/m);
    // p50 medians 120 and 100: 1.20, within copy mode's 1.6.
    assert.match(table, /^\| 4 KiB random read, QD1 \| p50 latency \| \*\*120\*\* µs \(100–140\) \| \*\*100\*\* µs \(100–100\) \| 1\.20 \| ≤ 1\.6 met \|$/m);
    assert.match(table, /^\| 1 MiB sequential read, QD8 \| MB\/s \| \*\*95\.0\*\* \(90\.0–100\) \| \*\*100\*\* \(100–100\) \| 0\.95 \| ≥ 0\.9 met \|$/m);
    assert.deepStrictEqual(targetLines(res), [
      '- copy: 4 KiB random read, QD1, p50 latency: ublk/nbd ≤ 1.6x kernel nbd: nbdkit memory 1.20 (met)',
      '- copy: 1 MiB sequential read, QD8, MB/s: ublk/nbd ≥ 0.9x kernel nbd: nbdkit memory 0.95 (met)',
    ]);
    const md = renderMarkdown(res, 'chart.svg');
    assert.match(md, /^- netdisk-ublk's connection on the \*\*ring transport\*\* \(`add --transport ring`\)\.$/m);
    assert.match(md, /^- netdisk-ublk: `ublk command` → \/dev\/ublkb0: .*; data path: \*\*copy\*\*$/m);
    assert.doesNotMatch(md, /SIGSTOP/);
    assert.match(md, /warm-up of 30 s over all cases on both devices\); the devices take turns case by case \(the order flips every case and every run\)/);
  });

  it('several of ours: a column and a ratio to kernel nbd each, named by transport and data path, each judged by its data path\'s target, in the chart too', () => {
    const res = results({
      'ublk-ring': device('ublk', 'netdisk-ublk ring, zero copy', { dataPath: 'zero copy', transport: 'ring' }),
      'ublk-stream': device('ublk', 'netdisk-ublk stream, copy', { dataPath: 'copy', transport: 'stream' }),
      nbd: device('nbd', 'kernel nbd'),
    }, {
      'randread-4k-qd1': {
        'ublk-ring': [sample(100, 9000), sample(120, 8000)], 'ublk-stream': [sample(200, 5000), sample(220, 4000)],
        nbd: [sample(100, 10000), sample(100, 10000)],
      },
      'read-1m-qd8': {
        'ublk-ring': [sample(0, 0, 97), sample(0, 0, 97)], 'ublk-stream': [sample(0, 0, 64), sample(0, 0, 64)],
        nbd: [sample(0, 0, 100), sample(0, 0, 100)],
      },
    }, [{ key: 'ublk-ring', settings: { transport: 'ring' } }, { key: 'ublk-stream', settings: { transport: 'stream' } }]);
    const table = renderTables(res);
    assert.match(table, /^\| case \| metric \| netdisk-ublk ring, zero copy \| netdisk-ublk stream, copy \| kernel nbd \| ring, zero copy \/ nbd \| stream, copy \/ nbd \| target \|$/m);
    assert.match(table, /^\|---\|---\|---:\|---:\|---:\|---:\|---:\|---\|$/m);
    // Medians 110 and 210 against 100: zero copy's bound is 1.3, copy's 1.6.
    assert.match(table, /^\| 4 KiB random read, QD1 \| p50 latency \| \*\*110\*\* µs \(100–120\) \| \*\*210\*\* µs \(200–220\) \| \*\*100\*\* µs \(100–100\) \| 1\.10 \| 2\.10 \| ≤ 1\.3 met, ≤ 1\.6 \*\*not met\*\* \|$/m);
    assert.match(table, /^\| 4 KiB random read, QD1 \| IOPS \| \*\*8,500\*\* \(8,000–9,000\) \| \*\*4,500\*\* \(4,000–5,000\) \| \*\*10,000\*\* \(10,000–10,000\) \| 0\.85 \| 0\.45 \| {2}\|$/m);
    assert.deepStrictEqual(targetLines(res), [
      '- zero copy: 4 KiB random read, QD1, p50 latency: ublk/nbd ≤ 1.3x kernel nbd: nbdkit memory: ring, zero copy 1.10 (met)',
      '- zero copy: 1 MiB sequential read, QD8, MB/s: ublk/nbd ≥ 0.9x kernel nbd: nbdkit memory: ring, zero copy 0.97 (met)',
      '- copy: 4 KiB random read, QD1, p50 latency: ublk/nbd ≤ 1.6x kernel nbd: nbdkit memory: stream, copy 2.10 (not met)',
      '- copy: 1 MiB sequential read, QD8, MB/s: ublk/nbd ≥ 0.9x kernel nbd: nbdkit memory: stream, copy 0.64 (not met)',
    ]);
    const md = renderMarkdown(res, 'chart.svg');
    assert.match(md, /warm-up of 30 s over all cases on every device\); the devices take turns case by case \(each case starts with the next device\)/);
    assert.match(md, /^- netdisk-ublk in 2 configurations, a device each, .* stopped \(SIGSTOP\), so one netdisk-ublk daemon runs at a time/m);
    assert.match(md, /^- netdisk-ublk ring, zero copy: `ublk command` → \/dev\/ublkb0: .*; data path: \*\*zero copy\*\*$/m);
    assert.match(md, /^- netdisk-ublk stream, copy: `ublk command` .*; data path: \*\*copy\*\*$/m);
    assert.match(md, /^- kernel nbd: `nbd command` → \/dev\/nbd0: /m);

    const svg = renderChart(res);
    for (const t of ['netdisk-ublk ring, zero copy', 'netdisk-ublk stream, copy', 'kernel nbd']) {
      assert.ok(svg.includes(`>${t}</text>`), `the legend names ${t}`);
    }
    // A bar per device and value: six QD1 percentiles and two IOPS groups of the read case
    // (QD1 only: the write and QD32 cases were not run), two MB/s groups of which one ran.
    const bars = (title: string): number => svg.split(`<title>${title} `).length - 1;
    assert.deepStrictEqual([bars('netdisk-ublk ring, zero copy'), bars('netdisk-ublk stream, copy'), bars('kernel nbd')], [5, 5, 5]);
    const fills = new Set([...svg.matchAll(/<rect [^>]*fill="(#[0-9a-f]{6})"><title>/g)].map((m) => m[1]));
    assert.strictEqual(fills.size, 3, 'each device has its own colour');
  });
});
