// netdisk-ublk add --remote HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N] [--foreground] [--json]
//
// Without --foreground, add starts the daemon as a detached process and returns once the
// device is live (or the daemon failed), printing its path. The daemon reports readiness
// on a pipe (NETDISK_READY_FD) and logs to /run/netdisk-ublk/<id>.log.
import { parseSize } from '../size';
import { parse, parseHostPort, parseIntArg } from './args';
import { runForeground, spawnDaemon } from './daemonize';
import { UsageError } from './errors';

export const ADD_USAGE = `usage: netdisk-ublk add --remote HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N]
                        [--max-io SIZE] [--timeout S] [--fail-after S] [--foreground] [--json]
  Creates /dev/ublkbN backed by the NBD export at HOST:PORT (port 10809 by default); its size
  comes from the server. Returns once the device is live; the daemon keeps serving it.
  --export NAME  export name (default: the server's default export)
  --id N         device id to claim (default: the next free one)
  --queues N     queues, each with its own thread and connection when the server allows
                 multi-conn (default 1)
  --depth N      requests in flight per queue (default 128)
  --max-io SIZE  largest request (default 512K)
  --timeout S    a request without a reply for S seconds means the connection is stalled:
                 reconnect and resend (default 30; 0: never)
  --fail-after S requests wait up to S seconds for a lost store before failing with EIO
                 (default 180; 0: fail at once)
  --foreground   stay attached (systemd, debugging); logs go to stderr
  --json         print the device as JSON`;

const DEFAULT_DEPTH = 128;
const DEFAULT_MAX_IO = 512 * 1024;

export async function add(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    remote: { type: 'string', short: 'r' },
    export: { type: 'string', short: 'e' },
    id: { type: 'string' },
    queues: { type: 'string', short: 'q' },
    depth: { type: 'string', short: 'd' },
    'max-io': { type: 'string' },
    timeout: { type: 'string' },
    'fail-after': { type: 'string' },
    foreground: { type: 'boolean', short: 'f' },
    json: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  }, 'add');
  if (values.help) {
    process.stdout.write(ADD_USAGE + '\n');
    return 0;
  }
  if (positionals.length > 0) throw new UsageError(`add: unexpected argument "${positionals[0]}"\n${ADD_USAGE}`);
  if (values.remote === undefined) throw new UsageError(`add: --remote HOST[:PORT] is required\n${ADD_USAGE}`);
  const { host, port } = parseHostPort(values.remote, '', '--remote');
  if (host === '') throw new UsageError('add: --remote needs a host');
  if (port === 0) throw new UsageError('add: --remote port 0 is not valid');
  const id = parseIntArg(values.id, '--id', 0, 1_048_575);
  const queues = parseIntArg(values.queues, '--queues', 1, 64) ?? 1;
  const depth = parseIntArg(values.depth, '--depth', 1, 4096) ?? DEFAULT_DEPTH;
  let maxIo = DEFAULT_MAX_IO;
  if (values['max-io'] !== undefined) {
    try {
      maxIo = parseSize(values['max-io']);
    } catch (err) {
      throw new UsageError(`add: --max-io: ${(err as Error).message}`);
    }
    if (maxIo < 4096 || maxIo > 32 * 1024 * 1024 || maxIo % 4096 !== 0) {
      throw new UsageError('add: --max-io must be a multiple of 4K between 4K and 32M');
    }
  }
  const timeoutMs = (parseIntArg(values.timeout, '--timeout', 0, 86400) ?? 30) * 1000;
  const failAfterMs = (parseIntArg(values['fail-after'], '--fail-after', 0, 7 * 86400) ?? 180) * 1000;
  const json = values.json ?? false;
  if (values.foreground || process.env.NETDISK_READY_FD !== undefined) {
    const settings = { host, port, exportName: values.export ?? '', queues, depth, maxIoBufBytes: maxIo, timeoutMs, failAfterMs,
      ...(id === undefined ? {} : { id }) };
    return runForeground('add', (d) => d.startOrRecover(), settings, json);
  }
  return spawnDaemon('add', argv, json);
}
