// netdisk-ublk stats [ID] [--json] [--watch [S]]
//
// Asks each device's daemon over its stats socket (/run/netdisk-ublk/ID.stats.sock), and
// without an ID each local `serve` too (/run/netdisk-ublk/serve-ADDRESS.stats.sock), for its
// counters twice, an interval apart, and prints rates and latency percentiles over that
// interval and since the daemon started. --watch repeats every S seconds on one connection:
// a table redrawn in place on a terminal, one line per device and interval otherwise.
import { statsSocketPath, statsSocketPaths } from '../device/state';
import { renderLine, renderReport, type StatsReport } from '../stats/report';
import { StatsClient } from '../stats/stats-socket';
import { parse, parseIntArg } from './args';
import { CliError, UsageError } from './errors';
import { helpText } from './help';

export const STATS_USAGE = `usage: netdisk-ublk stats [ID | --socket PATH] [--json] [--watch [S]] [--interval S]
  What a running device does (without ID: every device and every local serve), from its
  daemon: requests and MB per second, flush, discard and write-zeroes counts, requests in
  flight (now and peak), latency percentiles per operation (p50, p99, p99.9 over the last
  interval and since start), reconnects, resent requests, time disconnected, errors by errno.
  --interval S   the interval the rates cover (default 1)
  --watch [S]    print again every S seconds (default 1) until interrupted; on a terminal
                 the table is redrawn in place, otherwise one line per device and interval
  --json         the reports as JSON, one line each
  --socket PATH  a stats socket by its path: a device's, or a store's (serve's own is
                 /run/netdisk-ublk/serve-ADDRESS.stats.sock unless --stats-socket moved it)`;

export async function stats(argv: string[]): Promise<number> {
  const { rest, watch } = takeWatch(argv);
  const { values, positionals } = parse(rest, {
    json: { type: 'boolean' },
    interval: { type: 'string' },
    socket: { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, 'stats');
  if (values.help) {
    process.stdout.write(helpText(STATS_USAGE, 'netdisk-ublk stats 0 --watch 2'));
    return 0;
  }
  if (positionals.length > 1) throw new UsageError(`stats: unexpected argument "${positionals[1]}"\n${STATS_USAGE}`);
  const interval = watch ?? parseIntArg(values.interval, '--interval', 1, 3600) ?? 1;
  if (values.socket !== undefined && positionals.length > 0) throw new UsageError('stats: give an ID or --socket PATH, not both');
  const named = values.socket !== undefined || positionals[0] !== undefined;
  const paths = values.socket !== undefined ? [values.socket]
    : positionals[0] === undefined ? statsSocketPaths()
      : [statsSocketPath(parseIntArg(positionals[0], 'device ID', 0, 1_048_575) as number)];
  const clients: StatsClient[] = [];
  for (const p of paths) {
    try {
      clients.push(await StatsClient.connect(p));
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code ?? (err as Error).message;
      // Asked for by name: say why not. Listing all: a device whose daemon is gone has nothing to tell.
      if (named) throw new CliError(`stats: nothing answers at ${p} (${code}): is its daemon running?`);
    }
  }
  if (clients.length === 0) throw new CliError('stats: no running netdisk-ublk device or server');
  const tty = process.stdout.isTTY === true && !values.json;
  let stop = false;
  const onSignal = (): void => { stop = true; };
  process.once('SIGINT', onSignal);
  try {
    // The first answer only starts each connection's interval.
    await Promise.all(clients.map((c) => c.ask()));
    do {
      await sleepUnless(interval * 1000, () => stop);
      if (stop) break;
      const reports: StatsReport[] = await Promise.all(clients.map((c) => c.ask()));
      let out: string;
      if (values.json) out = reports.map((r) => JSON.stringify(r)).join('\n') + '\n';
      else if (watch !== undefined && !tty) out = reports.map(renderLine).join('\n') + '\n';
      else out = (watch !== undefined ? '\x1b[H\x1b[2J' : '') + reports.map(renderReport).join('\n');
      process.stdout.write(out);
    } while (watch !== undefined && !stop);
  } catch (err) {
    throw new CliError(`stats: ${(err as Error).message}`);
  } finally {
    process.off('SIGINT', onSignal);
    for (const c of clients) c.close();
  }
  return 0;
}

/** --watch takes an optional number of seconds, which util.parseArgs cannot express. */
function takeWatch(argv: string[]): { rest: string[]; watch: number | undefined } {
  const rest: string[] = [];
  let watch: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i] as string;
    const m = /^--watch(?:=(.*))?$/.exec(a) ?? (a === '-w' ? [a] : null);
    if (!m) {
      rest.push(a);
      continue;
    }
    let text = m[1];
    if (text === undefined && /^\d+$/.test(argv[i + 1] ?? '')) text = argv[++i];
    watch = text === undefined ? 1 : parseIntArg(text, '--watch', 1, 3600);
  }
  return { rest, watch };
}

async function sleepUnless(ms: number, stop: () => boolean): Promise<void> {
  const end = Date.now() + ms;
  while (!stop() && Date.now() < end) await new Promise((r) => setTimeout(r, Math.min(100, end - Date.now())));
}
