// Hostile load: our server (`serve`) under clients that try to make it hold memory or
// connections, while one honest client, fio's nbd engine, does 4 KiB random reads at queue
// depth 1. Native (plain TCP on loopback), no VM.
//
// Each scenario gets a fresh server: fio runs --seconds quiet, then the attackers start (in a
// child process of their own, test/helpers/hostile-clients.ts), and after --ramp seconds fio
// runs --seconds again. Reported per scenario: the server's peak RSS (VmHWM), the honest
// client's p50/p99 completion latency quiet and under attack, and whether any of its requests
// failed. Goal (issue 11): peak RSS < 512 MiB with 8 hostile connections, p99 under attack
// within 2x of quiet, no failed request.
//
// With --rounds N every scenario runs N times per server (servers alternating) and the table
// gives the median latencies and the largest peak RSS; every run is listed below it.
//
//   npm run bench:hostile -- [--seconds 8] [--ramp 3] [--rounds 1] [--size 256M] [--scenarios greedy-8,...]
//                            [--baseline DIR]   (also the server of another built checkout)
//                            [--rss-cap 6G]     (a server above this is killed: the machine is shared)
//                            [--out FILE | --no-out]
import { ChildProcess, execFileSync, spawn } from 'child_process';
import { randomFillSync } from 'crypto';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { parseArgs } from 'util';
import { run, sleep, stopChild } from '../src/bench/procs';
import { packageRoot } from '../src/native/load';
import { parseSize } from '../src/size';
import { AttackKind, Attacker, startAttacker } from '../test/helpers/hostile-clients';

const MiB = 1024 * 1024;

interface Scenario {
  name: string;
  what: string;
  attackers: Partial<Record<AttackKind, number>>;
}

const SCENARIOS: Scenario[] = [
  { name: 'greedy-8', what: '8 connections pipelining 8 READs of 32 MiB each, replies never read', attackers: { 'greedy-reader': 8 } },
  { name: 'reply-flood', what: '2 connections sending zero-length READs as fast as the server reads them, replies never read', attackers: { 'reply-flood': 2 } },
  { name: 'slow', what: '40 handshakes that never finish (reconnecting when closed), 4 WRITEs of 32 MiB trickling in at 1.6 KB/s', attackers: { 'slow-handshake': 40, 'trickle-writer': 4 } },
  { name: 'all', what: 'all of the above at once (54 connections)', attackers: { 'greedy-reader': 8, 'reply-flood': 2, 'slow-handshake': 40, 'trickle-writer': 4 } },
];

interface Phase {
  /** The server's CPU time over the phase, in % of one CPU. */
  serverCpu: number;
  p50us: number;
  p99us: number;
  ios: number;
  error: string | null;
}

interface Row {
  server: string;
  scenario: string;
  quiet: Phase;
  attack: Phase;
  peakRssMiB: number;
  killedAtCap: boolean;
  logLines: Record<string, number>;
  attackers: string;
}

// ---- the attackers' process ----

async function attackerMain(port: number, spec: string): Promise<void> {
  const running: Attacker[] = [];
  for (const part of spec.split(',')) {
    const [kind, n] = part.split('=') as [AttackKind, string];
    for (let i = 0; i < Number(n); i++) {
      running.push(startAttacker(kind, { port, trickleOffset: 128 * MiB + i * 32 * MiB }));
    }
  }
  await new Promise<void>((resolve) => process.once('SIGTERM', () => resolve()));
  const sum = new Map<string, { n: number; closed: number; refused: number }>();
  for (const a of running) {
    a.stop();
    const s = sum.get(a.kind) ?? { n: 0, closed: 0, refused: 0 };
    s.n++;
    s.closed += a.closedByServer;
    s.refused += a.refused;
    sum.set(a.kind, s);
  }
  // Synchronous: stdout is a pipe, and an asynchronous write would be lost to the exit.
  fs.writeSync(1, JSON.stringify(Object.fromEntries(sum)) + '\n');
  process.exit(0);
}

// ---- the orchestrator ----

interface Served {
  child: ChildProcess;
  port: number;
  stderr(): string;
}

async function startServer(root: string, image: string): Promise<Served> {
  const child = spawn(process.execPath, [path.join(root, 'bin', 'netdisk-ublk.js'), 'serve', image, '--listen', '127.0.0.1:0'], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, NETDISK_LOG_FORMAT: 'json', NETDISK_LOG_LEVEL: 'info' },
  });
  let text = '';
  child.stderr?.on('data', (b: Buffer) => { text += b.toString('utf8'); });
  const port = await new Promise<number>((resolve, reject) => {
    const check = (): void => {
      const m = /"listen":"[^"]*:(\d+)"/.exec(text);
      if (m) {
        child.stderr?.off('data', check);
        resolve(Number(m[1]));
      }
    };
    child.stderr?.on('data', check);
    child.once('exit', (code) => reject(new Error(`serve exited (${code}) before listening: ${text}`)));
  });
  return { child, port, stderr: () => text };
}

function procStatusKiB(pid: number, field: string): number {
  const m = new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) : NaN;
}

interface FioJson {
  jobs: { error: number; read: { total_ios: number; lat_ns: { percentile?: Record<string, number> } } }[];
}

/** utime + stime of pid, in clock ticks (USER_HZ, 100 on Linux). */
function cpuTicks(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which may hold spaces: state is field 3, utime 14, stime 15.
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return Number(f[11]) + Number(f[12]);
}

/** fio for `seconds`, with the server's CPU use over the same time. */
async function fio(port: number, seconds: number, size: number, serverPid: number): Promise<Phase> {
  const t0 = process.hrtime.bigint();
  const c0 = cpuTicks(serverPid);
  const r = await runFio(port, seconds, size);
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  let cpu = NaN;
  try {
    cpu = ((cpuTicks(serverPid) - c0) / 100 / s) * 100;
  } catch {
    // the server is gone
  }
  return { ...r, serverCpu: cpu };
}

async function runFio(port: number, seconds: number, size: number): Promise<Omit<Phase, 'serverCpu'>> {
  // Total latency (lat_ns), as the device bench reports it (src/bench/fio.ts).
  const args = ['--name=honest', '--ioengine=nbd', `--uri=nbd://127.0.0.1:${port}/`, '--rw=randread', '--bs=4k',
    '--iodepth=1', `--size=${size}`, '--time_based', `--runtime=${seconds}`, '--norandommap', '--randrepeat=0',
    '--lat_percentiles=1', '--percentile_list=50:99', '--output-format=json'];
  const r = await run('fio', args);
  let j: FioJson | undefined;
  try {
    j = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))) as FioJson;
  } catch {
    // no JSON: fio failed before running
  }
  const job = j?.jobs[0];
  const pct = job?.read.lat_ns.percentile ?? {};
  const failed = r.code !== 0 || job === undefined || job.error !== 0;
  return {
    p50us: (pct['50.000000'] ?? NaN) / 1000,
    p99us: (pct['99.000000'] ?? NaN) / 1000,
    ios: job?.read.total_ios ?? 0,
    error: failed ? `fio exit ${r.code}, error ${job?.error}: ${r.stderr.trim().split('\n').slice(-2).join(' ')}` : null,
  };
}

async function runScenario(server: string, root: string, image: string, sc: Scenario, o: { seconds: number; ramp: number; size: number; rssCap: number }): Promise<Row> {
  const srv = await startServer(root, image);
  const pid = srv.child.pid as number;
  let killedAtCap = false;
  const watch = setInterval(() => {
    try {
      if (procStatusKiB(pid, 'VmRSS') * 1024 > o.rssCap) {
        killedAtCap = true;
        srv.child.kill('SIGKILL');
      }
    } catch {
      // exited
    }
  }, 100);
  try {
    const quiet = await fio(srv.port, o.seconds, o.size, pid);
    const spec = Object.entries(sc.attackers).map(([k, n]) => `${k}=${n}`).join(',');
    const atk = spawn(process.execPath, [__filename, '--attack', spec, '--port', String(srv.port)], { stdio: ['ignore', 'pipe', 'inherit'] });
    let atkOut = '';
    atk.stdout?.on('data', (b: Buffer) => { atkOut += b.toString('utf8'); });
    await sleep(o.ramp * 1000);
    const attack = await fio(srv.port, o.seconds, o.size, pid);
    let peak = NaN;
    try {
      peak = procStatusKiB(pid, 'VmHWM') / 1024;
    } catch {
      // killed at the cap
    }
    await stopChild(atk, 10_000);
    await stopChild(srv.child, 10_000);
    const logLines: Record<string, number> = {};
    for (const line of srv.stderr().split('\n')) {
      const m = /"level":(40|30)[^]*"msg":"([^"]*)"/.exec(line);
      if (m && m[2] !== 'serving' && m[2] !== 'stopped' && m[2] !== 'shutting down') logLines[m[2] as string] = (logLines[m[2] as string] ?? 0) + 1;
    }
    return { server, scenario: sc.name, quiet, attack, peakRssMiB: peak, killedAtCap, logLines, attackers: atkOut.trim() };
  } finally {
    clearInterval(watch);
    srv.child.kill('SIGKILL');
  }
}

function describe(root: string): string {
  try {
    const rev = execFileSync('git', ['log', '-1', '--format=%h %s'], { cwd: root, encoding: 'utf8' }).trim();
    const dirty = execFileSync('git', ['status', '--porcelain', '--', 'src/server', 'src/nbd', 'src/cli'], { cwd: root, encoding: 'utf8' }).trim();
    return `${rev}${dirty ? ' (modified)' : ''}`;
  } catch {
    return root;
  }
}

const fmt = (n: number, d = 0): string => (Number.isFinite(n) ? n.toFixed(d) : '-');

function median(v: number[]): number {
  const s = v.filter(Number.isFinite).sort((a, b) => a - b);
  if (s.length === 0) return NaN;
  const m = s.length >> 1;
  return s.length % 2 === 1 ? (s[m] as number) : ((s[m - 1] as number) + (s[m] as number)) / 2;
}

function report(rows: Row[], servers: [string, string][], scenarios: Scenario[], cmd: string, o: { seconds: number; ramp: number; size: number; rounds: number }): string {
  const lines = [
    `# Hostile load on \`serve\` (${new Date().toISOString().slice(0, 16).replace('T', ' ')} UTC)`,
    '',
    `Command: \`${cmd}\``,
    '',
    ...servers.map(([n, root]) => `- ${n}: ${describe(root)}`),
    `- host: ${os.cpus().length} CPUs (${os.cpus()[0]?.model ?? '?'}), Linux ${os.release()}, node ${process.version}, ` +
      `${execFileSync('fio', ['--version'], { encoding: 'utf8' }).trim()}; the machine is shared, so latencies move with other load`,
    `- honest client: fio --ioengine=nbd, 4 KiB random reads, iodepth 1, ${o.seconds} s quiet then ${o.seconds} s under attack ` +
      `(after ${o.ramp} s of ramp), on a ${o.size / MiB} MiB image of random data`,
    '- peak RSS: the server\'s VmHWM over the whole scenario, fresh server per scenario',
    `- ${o.rounds} round(s), servers alternating; the table gives median latencies and the largest peak RSS over the rounds`,
    '',
    'Scenarios:',
    ...scenarios.map((s) => `- ${s.name}: ${s.what}`),
    '',
    '| scenario | server | peak RSS MiB | quiet p50 / p99 µs | attack p50 / p99 µs | p99 attack / quiet | server CPU quiet / attack | honest failures |',
    '| --- | --- | --: | --: | --: | --: | --: | --- |',
  ];
  for (const sc of scenarios) {
    for (const [server] of servers) {
      const rs = rows.filter((r) => r.scenario === sc.name && r.server === server);
      const qp99 = median(rs.map((r) => r.quiet.p99us));
      const ap99 = median(rs.map((r) => r.attack.p99us));
      const failed = rs.filter((r) => r.quiet.error || r.attack.error).length;
      lines.push(`| ${sc.name} | ${server} | ${fmt(Math.max(...rs.map((r) => r.peakRssMiB)))}` +
        `${rs.some((r) => r.killedAtCap) ? ' (killed at the cap)' : ''} | ` +
        `${fmt(median(rs.map((r) => r.quiet.p50us)))} / ${fmt(qp99)} | ${fmt(median(rs.map((r) => r.attack.p50us)))} / ${fmt(ap99)} | ` +
        `${fmt(ap99 / qp99, 2)}x | ${fmt(median(rs.map((r) => r.quiet.serverCpu)))} % / ${fmt(median(rs.map((r) => r.attack.serverCpu)))} % | ${failed === 0 ? 'none' : `${failed} of ${rs.length} runs`} |`);
    }
  }
  lines.push('', 'Every run:', '', '| scenario | server | peak RSS MiB | quiet p50 / p99 µs | attack p50 / p99 µs | honest I/Os quiet / attack | honest failures |',
    '| --- | --- | --: | --: | --: | --: | --- |');
  for (const r of rows) {
    const failures = [r.quiet.error, r.attack.error].filter(Boolean).join('; ') || 'none';
    lines.push(`| ${r.scenario} | ${r.server} | ${fmt(r.peakRssMiB)}${r.killedAtCap ? ' (killed at the cap)' : ''} | ` +
      `${fmt(r.quiet.p50us)} / ${fmt(r.quiet.p99us)} | ${fmt(r.attack.p50us)} / ${fmt(r.attack.p99us)} | ` +
      `${r.quiet.ios} / ${r.attack.ios} | ${failures} |`);
  }
  lines.push('', 'Server log lines at info and above during each scenario (message: count), and the attackers\' view ' +
    '(per kind: connections, closed by the server, refused):', '');
  for (const r of rows) {
    const logs = Object.entries(r.logLines).map(([m, n]) => `"${m}": ${n}`).join(', ') || 'none';
    lines.push(`- ${r.scenario} / ${r.server}: log ${logs}; attackers ${r.attackers || '-'}`);
  }
  return lines.join('\n') + '\n';
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      attack: { type: 'string' },
      port: { type: 'string' },
      seconds: { type: 'string', default: '8' },
      ramp: { type: 'string', default: '3' },
      rounds: { type: 'string', default: '1' },
      size: { type: 'string', default: '256M' },
      scenarios: { type: 'string', default: SCENARIOS.map((s) => s.name).join(',') },
      baseline: { type: 'string' },
      'rss-cap': { type: 'string', default: '6G' },
      dir: { type: 'string', default: os.tmpdir() },
      out: { type: 'string' },
      'no-out': { type: 'boolean' },
    },
  });
  if (values.attack !== undefined) return attackerMain(Number(values.port), values.attack);
  const o = { seconds: Number(values.seconds), ramp: Number(values.ramp), rounds: Number(values.rounds), size: parseSize(values.size), rssCap: parseSize(values['rss-cap']) };
  const scenarios = values.scenarios.split(',').map((n) => {
    const s = SCENARIOS.find((x) => x.name === n);
    if (!s) throw new Error(`unknown scenario "${n}" (known: ${SCENARIOS.map((x) => x.name).join(', ')})`);
    return s;
  });
  const servers: [string, string][] = [];
  if (values.baseline) servers.push(['before', path.resolve(values.baseline)]);
  servers.push([values.baseline ? 'after' : 'ours', packageRoot()]);
  const work = fs.mkdtempSync(path.join(values.dir, 'hostile-load-'));
  const image = path.join(work, 'disk.img');
  try {
    const chunk = Buffer.allocUnsafe(MiB);
    const fd = fs.openSync(image, 'w');
    for (let off = 0; off < o.size; off += MiB) fs.writeSync(fd, randomFillSync(chunk), 0, Math.min(MiB, o.size - off), off);
    fs.closeSync(fd);
    const rows: Row[] = [];
    for (let round = 0; round < o.rounds; round++) {
      for (const sc of scenarios) {
        // Servers alternate, and which goes first alternates too.
        const order = round % 2 === 0 ? servers : [...servers].reverse();
        for (const [name, root] of order) {
          process.stderr.write(`round ${round + 1}: ${name} / ${sc.name} ...\n`);
          const r = await runScenario(name, root, image, sc, o);
          process.stderr.write(`  peak RSS ${fmt(r.peakRssMiB)} MiB, p99 ${fmt(r.quiet.p99us)} -> ${fmt(r.attack.p99us)} µs, ` +
            `failures: ${[r.quiet.error, r.attack.error].filter(Boolean).join('; ') || 'none'}\n`);
          rows.push(r);
        }
      }
    }
    const cmd = `npm run bench:hostile -- ${process.argv.slice(2).join(' ')}`.trim();
    const text = report(rows, servers, scenarios, cmd, o);
    process.stdout.write(text);
    if (!values['no-out']) {
      const out = values.out ?? path.join(packageRoot(), 'bench', 'results', `hostile-load-${new Date().toISOString().slice(0, 10)}.md`);
      fs.writeFileSync(out, text);
      process.stderr.write(`wrote ${out}\n`);
    }
  } finally {
    fs.rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  process.stderr.write(`${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
