// netdisk-ublk bench [--quick] [--runs N] [--seconds S] [--ramp S] [--stores LIST] [--cases LIST]
//                    [--queues N] [--depth N] [--max-io SIZE] [--transport LIST] [--zero-copy LIST]
//                    [--nbd-connections N] [--nbd-block-size N] [--size SIZE] [--dir DIR]
//                    [--out DIR | --no-out] [--no-ts-path] [--kernel 6.12|7|VERSION] [--tls]
//
// Latency and throughput of netdisk-ublk's /dev/ublkbN (one device per configuration asked
// for) against the kernel nbd client's /dev/nbdN, all attached to one and the same store.
// Where this kernel has no ublk (or no nbd), the device part runs in the project's test VM
// (test/vm/run.sh), as scripts/demo.sh does.
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { spawnSync } from 'child_process';
import { randomBytes } from 'crypto';
import { CASES, findCases, type BenchCase } from '../bench/cases';
import { renderChart } from '../bench/chart';
import { renderMarkdown, renderTables, targetLines } from '../bench/report';
import { BENCH_PSK_USER, type UblkSettings, type UblkVariant } from '../bench/devices';
import { runAttached, runOk } from '../bench/procs';
import type { BenchResults, HostInfo, TsPathReport } from '../bench/results';
import { missingPrerequisites, runBench, type Progress } from '../bench/run';
import { STORE_TITLE, type StoreKind } from '../bench/stores';
import { packageRoot } from '../native/load';
import { parseSize } from '../size';
import { DEVICE_DEFAULTS, type DataTransport, type ZeroCopyMode } from '../device/config';
import { transportCanZeroCopy } from '../device/data-path';
import { ublkAvailable } from '../ublk';
import { parse, parseIntArg } from './args';
import { DEVICE_OPTIONS, parseDeviceArgs } from './device-args';
import { CliError, UsageError } from './errors';
import { helpText } from './help';

export const BENCH_USAGE = `usage: netdisk-ublk bench [--quick] [--runs N] [--seconds S] [--ramp S] [--warmup S]
                          [--stores serve,nbdkit] [--cases ID,...] [--queues N] [--depth N] [--max-io SIZE]
                          [--transport stream|ring,...] [--zero-copy auto|off,...] [--nbd-connections N]
                          [--nbd-block-size N] [--size SIZE] [--dir DIR] [--out DIR | --no-out] [--no-ts-path]
                          [--kernel 6.12|7|VERSION] [--tls]
  Measures netdisk-ublk's /dev/ublkbN against the kernel nbd client's /dev/nbdN (nbd-client),
  both attached to the same store: \`netdisk-ublk serve\` (an image in --dir), then \`nbdkit memory\`.
  fio (libaio, direct I/O, total latency) runs every case --runs times, the devices taking turns.
  Writes a Markdown table, an SVG chart and the raw numbers (JSON) to --out and prints the table.
  Needs root, ublk_drv, nbd, fio, nbd-client and nbdkit; without ublk here it runs in the test VM.
  --quick              one run of 3 s per case (a check, not a result)
  --runs N             runs of every case (default 3)
  --seconds S          measured seconds per case (default 8), after --ramp S (default 1)
  --warmup S           unrecorded seconds spread over all cases on every device first
                       (default 30 in the test VM, whose emulated CPU makes JIT warm-up slow; 3 natively)
  --stores LIST        serve, nbdkit or both (default serve,nbdkit)
  --cases LIST         ${CASES.map((c) => c.id).join(', ')}
  --queues N, --depth N, --max-io SIZE
                       passed to \`netdisk-ublk add\` (default: add's defaults)
  --transport LIST, --zero-copy LIST
                       passed to \`netdisk-ublk add\`; a list (--transport ring,stream) measures one
                       netdisk-ublk device per transport in the same run, each against kernel nbd,
                       the devices taking turns case by case and only the measured one's daemon
                       running; --zero-copy auto,off does the same for the ring transport
                       (the stream transport always copies) (default: add's defaults)
  --nbd-connections N  nbd-client -C (default: as many as ublk queues)
  --nbd-block-size N   nbd-client -b (default 512, the logical block netdisk-ublk gets from both stores)
  --size SIZE          store size (default 256M)
  --dir DIR            where \`serve\` keeps its image (default: the temporary directory)
  --out DIR            results directory (default: bench/results in the package)
  --no-ts-path         skip the native measurement of the TypeScript part
  --tls                netdisk-ublk connects over TLS (nbds://, a fresh PSK; the store offers TLS),
                       kernel nbd in clear text: run once without and once with it to see TLS's cost
  --kernel SPEC        run in the test VM on this kernel: 6.12 (its default), 7 (the newest 7.x)
                       or an exact version (see test/vm/README.md); the result files name it`;

const VM_TIMEOUT_SEC = 3600;

/** What one `bench` run does, from its arguments. */
interface BenchPlan {
  quick: boolean;
  runs: number;
  seconds: number;
  ramp: number;
  warmup: number;
  stores: StoreKind[];
  cases: BenchCase[];
  ublk: UblkSettings;
  /** Our configurations (--transport, --zero-copy lists), a device each. */
  variants: UblkVariant[];
  nbdConnections: number;
  nbdBlockSize: number;
  sizeBytes: number;
  dir: string;
  outDir: string | undefined;
  tsPath: boolean;
  /** The command line, for the report. */
  command: string;
  /** --stem: the results' file stem the host side chose. */
  stem: string | undefined;
  /** --kernel: the test VM's kernel. */
  kernel: string | undefined;
  /** --tls: netdisk-ublk over nbds:// with a PSK made for the run. */
  tls: boolean;
}

export async function bench(argv: string[]): Promise<number> {
  const plan = parseBenchArgs(argv);
  if (plan === 'help') {
    process.stdout.write(helpText(BENCH_USAGE, 'netdisk-ublk bench --quick --cases randread-4k-qd1,randwrite-4k-qd1'));
    return 0;
  }
  const progress = process.stderr.isTTY ? new ProgressLine(process.stderr, plan.seconds + plan.ramp) : undefined;
  const log = (m: string): void => {
    progress?.clear();
    process.stderr.write(m + '\n');
  };
  const missing = await missingPrerequisites();
  const inVm = process.env.NETDISK_IN_VM === '1';
  // In the VM, --kernel was the host's choice, already made.
  if (!inVm && (missing !== null || plan.kernel !== undefined)) {
    if (missing !== null && ublkAvailable()) throw new CliError(`bench: ${missing}`);
    const kernel = vmKernel(plan.kernel);
    return benchInVm(argv, {
      stem: plan.stem ?? resultStem('vm', kernel), kernel, outDir: plan.outDir, tsPath: plan.tsPath, quick: plan.quick,
      reason: missing ?? 'the kernel is chosen with --kernel', log,
    });
  }
  if (missing !== null) throw new CliError(`bench: ${missing}`);
  return benchHere(plan, log, progress);
}

function parseBenchArgs(argv: string[]): BenchPlan | 'help' {
  const { values, positionals } = parse(argv, {
    quick: { type: 'boolean' },
    runs: { type: 'string' },
    seconds: { type: 'string' },
    ramp: { type: 'string' },
    warmup: { type: 'string' },
    stores: { type: 'string' },
    cases: { type: 'string' },
    queues: DEVICE_OPTIONS.queues,
    depth: DEVICE_OPTIONS.depth,
    'max-io': DEVICE_OPTIONS['max-io'],
    transport: DEVICE_OPTIONS.transport,
    'zero-copy': DEVICE_OPTIONS['zero-copy'],
    'nbd-connections': { type: 'string' },
    'nbd-block-size': { type: 'string' },
    size: { type: 'string' },
    dir: { type: 'string' },
    out: { type: 'string' },
    'no-out': { type: 'boolean' },
    'no-ts-path': { type: 'boolean' },
    kernel: { type: 'string' },
    tls: { type: 'boolean' },
    // Set by the host side when it re-runs bench in the VM: the results' file stem.
    stem: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, 'bench');
  if (values.help) return 'help';
  if (positionals.length > 0) throw new UsageError(`bench: unexpected argument "${positionals[0]}"\n${BENCH_USAGE}`);
  const quick = values.quick ?? false;
  const stores = (values.stores ?? 'serve,nbdkit').split(',').map((s) => s.trim()).filter((s) => s !== '');
  for (const s of stores) if (!(s in STORE_TITLE)) throw new UsageError(`bench: unknown store "${s}" (serve, nbdkit)`);
  let cases;
  try {
    cases = values.cases ? findCases(values.cases.split(',').map((s) => s.trim())) : [...CASES];
  } catch (err) {
    throw new UsageError(`bench: ${(err as Error).message}`);
  }
  const { queues, depth, maxIoBufBytes } = parseDeviceArgs({ queues: values.queues, depth: values.depth, 'max-io': values['max-io'] });
  const variants = benchVariants(values.transport, values['zero-copy']);
  const nbdBlockSize = parseIntArg(values['nbd-block-size'], '--nbd-block-size', 512, 4096) ?? 512;
  if (![512, 1024, 2048, 4096].includes(nbdBlockSize)) throw new UsageError('bench: --nbd-block-size must be 512, 1024, 2048 or 4096');
  let sizeBytes = 256 * 2 ** 20;
  if (values.size !== undefined) {
    try {
      sizeBytes = parseSize(values.size);
    } catch (err) {
      throw new UsageError(`bench: --size: ${(err as Error).message}`);
    }
  }
  return {
    quick,
    runs: parseIntArg(values.runs, '--runs', 1, 100) ?? (quick ? 1 : 3),
    seconds: parseIntArg(values.seconds, '--seconds', 1, 3600) ?? (quick ? 3 : 8),
    ramp: parseIntArg(values.ramp, '--ramp', 0, 600) ?? 1,
    // V8 needs ~25 s to compile the daemon's hot paths under the VM's emulated CPU (measured
    // with the TS-path harness in the VM); natively a few seconds are plenty.
    warmup: parseIntArg(values.warmup, '--warmup', 0, 3600) ?? (process.env.NETDISK_IN_VM === '1' ? (quick ? 12 : 30) : 3),
    stores: stores as StoreKind[],
    cases,
    ublk: { ...(queues ? { queues } : {}), ...(depth ? { depth } : {}), ...(maxIoBufBytes ? { maxIoBufBytes } : {}) },
    variants,
    nbdConnections: parseIntArg(values['nbd-connections'], '--nbd-connections', 1, 64) ?? queues ?? DEVICE_DEFAULTS.queues,
    nbdBlockSize,
    sizeBytes,
    dir: values.dir ?? os.tmpdir(),
    outDir: values['no-out'] ? undefined : path.resolve(values.out ?? path.join(packageRoot(), 'bench', 'results')),
    tsPath: !values['no-ts-path'],
    command: ['netdisk-ublk bench', ...argv.map(shellQuote)].join(' '),
    stem: values.stem,
    kernel: values.kernel,
    tls: values.tls ?? false,
  };
}

/**
 * Our configurations from --transport LIST and --zero-copy LIST: every transport, and on a
 * transport that can run zero copy, every zero-copy setting (the stream transport always
 * copies: it runs once). One configuration is keyed 'ublk' as it always was; several are
 * keyed by what tells them apart, e.g. 'ublk-ring' and 'ublk-stream'.
 */
export function benchVariants(transportList: string | undefined, zeroCopyList: string | undefined): UblkVariant[] {
  const listOf = <T extends string>(text: string | undefined, option: 'transport' | 'zero-copy'): Array<T | undefined> => {
    if (text === undefined) return [undefined];
    const items = text.split(',').map((x) => x.trim());
    const seen = new Set<string>();
    return items.map((item) => {
      if (seen.has(item)) throw new UsageError(`bench: --${option} lists "${item}" twice`);
      seen.add(item);
      return parseDeviceArgs({ [option]: item })[option === 'transport' ? 'transport' : 'zeroCopy'] as T;
    });
  };
  const transports = listOf<DataTransport>(transportList, 'transport');
  const zeroCopies = listOf<ZeroCopyMode>(zeroCopyList, 'zero-copy');
  const canZeroCopy = (t: DataTransport | undefined): boolean => transportCanZeroCopy(t ?? DEVICE_DEFAULTS.transport);
  if (zeroCopies.length > 1 && !transports.some(canZeroCopy)) {
    throw new UsageError(`bench: --zero-copy ${zeroCopyList ?? ''} compares nothing on the ${transports.map((t) => t ?? DEVICE_DEFAULTS.transport).join(', ')} transport (only ring can run zero copy): add --transport ring`);
  }
  const out: UblkVariant[] = [];
  for (const transport of transports) {
    for (const [i, zeroCopy] of zeroCopies.entries()) {
      if (i > 0 && !canZeroCopy(transport)) continue;
      const key = ['ublk', ...(transports.length > 1 ? [transport] : []), ...(zeroCopies.length > 1 && canZeroCopy(transport) ? [`zero-copy-${zeroCopy}`] : [])].join('-');
      out.push({ key, settings: { ...(transport ? { transport } : {}), ...(zeroCopy ? { zeroCopy } : {}) } });
    }
  }
  return out;
}

/** The devices are here: measure them (and the TS part, unless the host side did), write the files. */
async function benchHere(plan: BenchPlan, log: (m: string) => void, progress: ProgressLine | undefined): Promise<number> {
  const hostEnv = process.env.NETDISK_BENCH_HOST;
  const host = hostEnv ? (JSON.parse(hostEnv) as HostSide) : undefined;
  let tsPath = host?.tsPath;
  if (tsPath === undefined && plan.tsPath) {
    log('bench: measuring the TypeScript part against nbdkit memory');
    tsPath = await measureTsPath(plan.quick, `natively, ${os.cpus().length} CPUs (${os.cpus()[0]?.model.trim()})`);
  }
  const tls = plan.tls ? { pskFile: makeBenchPsk() } : undefined;
  const res: BenchResults = await runBench({
    stores: plan.stores,
    cases: plan.cases,
    runs: plan.runs,
    fio: { seconds: plan.seconds, rampSeconds: plan.ramp },
    warmupSeconds: plan.warmup,
    sizeBytes: plan.sizeBytes,
    dir: plan.dir,
    cli: path.join(packageRoot(), 'bin', 'netdisk-ublk.js'),
    ublk: plan.ublk,
    variants: plan.variants,
    nbd: { connections: plan.nbdConnections, blockSize: plan.nbdBlockSize },
    ...(tls ? { tls } : {}),
    command: host?.command ?? plan.command,
    ...(host ? { host: { kernel: host.kernel, cpu: host.cpu, cpus: host.cpus, loadBefore: host.loadBefore } } : {}),
    log,
    ...(progress ? { progress: (p: Progress) => progress.show(p) } : {}),
  }).finally(() => {
    if (tls) fs.rmSync(path.dirname(tls.pskFile), { recursive: true, force: true });
  });
  progress?.clear();
  if (tsPath) res.tsPath = tsPath;
  process.stdout.write(`\n${renderTables(res)}\nTargets:\n${targetLines(res).join('\n')}\n`);
  if (plan.outDir) {
    const files = writeResults(res, plan.outDir, plan.stem ?? resultStem(process.env.NETDISK_IN_VM === '1' ? 'vm' : 'native', os.release()));
    process.stdout.write(`\nwrote ${files.join(', ')}\n`);
  }
  return 0;
}

/** The TypeScript part of the ublk path, natively: bench/ts-path.ts in a process of its own. */
async function measureTsPath(quick: boolean, where: string): Promise<TsPathReport> {
  const script = path.join(packageRoot(), 'dist', 'bench', 'ts-path.js');
  const out = await runOk(process.execPath, [script, '--json', '--seconds', '1', '--slices', quick ? '3' : '7', '--where', where]);
  return JSON.parse(out) as TsPathReport;
}

/** DATE-TIME-WHERE-KERNEL, e.g. 2026-11-30-0300-vm-7.3.4+deb13-amd64. */
function resultStem(where: 'vm' | 'native', kernel: string): string {
  const d = new Date();
  const p = (n: number): string => String(n).padStart(2, '0');
  return `${d.getUTCFullYear()}-${p(d.getUTCMonth() + 1)}-${p(d.getUTCDate())}-${p(d.getUTCHours())}${p(d.getUTCMinutes())}-${where}-${kernel}`;
}

function vmScript(): string {
  return path.join(packageRoot(), 'test', 'vm', 'run.sh');
}

/** The exact kernel the test VM boots for SPEC (run.sh's default when undefined). */
function vmKernel(spec: string | undefined): string {
  const runSh = vmScript();
  if (!fs.existsSync(runSh)) {
    throw new CliError('bench: this kernel has no ublk or nbd, and the test VM (test/vm/run.sh) comes only with the repository');
  }
  const r = spawnSync(runSh, [...(spec === undefined ? [] : ['--kernel', spec]), '--check'], { encoding: 'utf8' });
  const m = /\(kernel ([^\s)]+)\)/.exec(r.stdout ?? '');
  if (r.status !== 0 || !m?.[1]) throw new CliError(`bench: ${(r.stderr || r.stdout || String(r.error)).trim().replace(/^netdisk-vm: /, '')}`);
  return m[1];
}

export function writeResults(res: BenchResults, outDir: string, stem: string): string[] {
  fs.mkdirSync(outDir, { recursive: true });
  const json = path.join(outDir, `${stem}.json`);
  const svg = path.join(outDir, `${stem}.svg`);
  const md = path.join(outDir, `${stem}.md`);
  fs.writeFileSync(json, JSON.stringify(res, null, 1) + '\n');
  fs.writeFileSync(svg, renderChart(res));
  fs.writeFileSync(md, renderMarkdown(res, path.basename(svg)));
  return [md, svg, json];
}

/** What the host side hands to the VM side. */
interface HostSide extends HostInfo {
  command: string;
  tsPath?: TsPathReport;
}

interface VmRun {
  stem: string;
  /** The test VM's kernel (exact version). */
  kernel: string;
  outDir: string | undefined;
  tsPath: boolean;
  quick: boolean;
  reason: string;
  log(m: string): void;
}

function shellQuote(s: string): string {
  return /^[A-Za-z0-9_./:=,+-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`;
}

/** The host side: measure the TS part here, run the device part in the test VM, finish the files. */
async function benchInVm(argv: string[], o: VmRun): Promise<number> {
  const runSh = vmScript();
  o.log(`bench: ${o.reason}; the devices are measured in the test VM (${path.relative(process.cwd(), runSh) || runSh}) on ${o.kernel}, whose output appears when it ends`);
  const host: HostSide = {
    command: ['netdisk-ublk bench', ...argv.map(shellQuote)].join(' '),
    kernel: os.release(),
    cpu: os.cpus()[0]?.model.trim() ?? 'unknown',
    cpus: os.cpus().length,
    loadBefore: os.loadavg(),
  };
  if (o.tsPath) {
    o.log('bench: measuring the TypeScript part natively against nbdkit memory');
    try {
      host.tsPath = await measureTsPath(o.quick, `natively on the host (${host.cpus} CPUs, ${host.cpu})`);
    } catch (err) {
      o.log(`bench: the native measurement failed, going on without it: ${(err as Error).message}`);
    }
  }
  const inner = ['node', path.join(packageRoot(), 'bin', 'netdisk-ublk.js'), 'bench', ...argv, '--stem', o.stem, '--no-ts-path'];
  const args = ['--kernel', o.kernel, '--timeout', String(VM_TIMEOUT_SEC), '--env', `NETDISK_BENCH_HOST=${JSON.stringify(host)}`];
  if (o.outDir && !o.outDir.startsWith(packageRoot() + path.sep)) args.push('--share', o.outDir);
  args.push('--', ...inner.map(shellQuote));
  const code = await runAttached(runSh, args);
  if (code !== 0) return code;
  if (o.outDir) {
    // The host's load after the run completes the record; the VM could not see it.
    const json = path.join(o.outDir, `${o.stem}.json`);
    if (fs.existsSync(json)) {
      const res = JSON.parse(fs.readFileSync(json, 'utf8')) as BenchResults;
      if (res.env.host) res.env.host.loadAfter = os.loadavg();
      writeResults(res, o.outDir, o.stem);
    }
  }
  return 0;
}

/**
 * Where the benchmark is, on one line of a terminal redrawn in place: case, run, time left.
 * Only on a terminal: in a log the step lines say enough.
 */
class ProgressLine {
  private shown = false;

  constructor(private readonly out: NodeJS.WriteStream, private readonly secondsPerRun: number) {}

  show(p: Progress): void {
    const left = Math.ceil(((p.total - p.done) * this.secondsPerRun) / 60);
    this.out.write(`\r\x1b[K  ${p.store}: ${p.caseId} on ${p.client}, run ${p.run}/${p.runs} `
      + `(${p.done + 1} of ${p.total}), about ${left} min left`);
    this.shown = true;
  }

  clear(): void {
    if (this.shown) this.out.write('\r\x1b[K');
    this.shown = false;
  }
}

/** A new random PSK for this run only (psktool's format, mode 0600 in a private directory). */
function makeBenchPsk(): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-bench-psk-'));
  const file = path.join(dir, 'bench.psk');
  fs.writeFileSync(file, `${BENCH_PSK_USER}:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
  return file;
}
