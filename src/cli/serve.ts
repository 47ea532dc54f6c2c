// netdisk-ublk serve IMAGE [--listen HOST:PORT|unix:PATH|URI] [--tls off|on|require] [--size SIZE] [--name EXPORT] [--read-only]
//                      [--max-connections N] [--handshake-timeout S]
import * as fs from 'fs';
import { createLogger } from '../log';
import { SystemdNotifier } from '../systemd';
import { FileStore, FileStoreError } from '../server/store/file-store';
import { NbdServer } from '../server/server';
import { SERVER_DEFAULTS } from '../server/settings';
import { loadServerTls, ServerTls } from '../server/tls';
import { NbdError } from '../nbd/errors';
import { formatSize, parseSize } from '../size';
import { parse, parseIntArg } from './args';
import { planListen } from './serve-listen';
import { CliError, UsageError } from './errors';
import { helpText } from './help';
import { METRICS_USAGE, parseMetricsArg } from './metrics-arg';
import { newQueueCounters, QueueCounters, readCounters, type DeviceCounters } from '../stats/device-counters';
import { MetricsServer } from '../stats/metrics-server';
import { renderMetrics } from '../stats/prometheus';
import { zeroCounters } from '../stats/report';
import { StatsSocket } from '../stats/stats-socket';
import { runDir, serveStatsSocketPath } from '../device/state';

export const SERVE_USAGE = `usage: netdisk-ublk serve IMAGE [--listen WHERE] [--size SIZE] [--name EXPORT] [--read-only]
                          [--tls off|on|require] [--tls-certificates DIR | --tls-psk FILE]
                          [--max-connections N] [--handshake-timeout S] [--metrics WHERE] [--stats-socket PATH|none]
  Serves IMAGE over NBD. Listens on 127.0.0.1:10809 unless --listen says otherwise.
  --listen WHERE  HOST[:PORT], unix:PATH, or an NBD URI: nbd://HOST[:PORT][/EXPORT],
                  nbd+unix:///[EXPORT]?socket=PATH; nbds:// and nbds+unix:// require TLS.
                  A unix socket's mode follows the umask; a stale one is replaced.
  --tls MODE      off (default), on (offered), require (no option answered before STARTTLS)
  --tls-certificates DIR  ca-cert.pem, server-cert.pem, server-key.pem (nbdkit's and qemu's
                  layout); with ca-cert.pem, a client certificate must chain to that CA
  --tls-psk FILE  pre-shared keys, one username:hexkey a line (psktool -p FILE -u NAME)
  --size SIZE   create IMAGE, or grow it (sparse), to SIZE (1440K, 64M, 10G or bytes)
  --name NAME   the export's name (default: "", the default export)
  --read-only   refuse writes
  --max-connections N  clients served at once; more are closed at once (default ${SERVER_DEFAULTS.maxConnections})
  --handshake-timeout S  a client still negotiating after S seconds is closed (default ${SERVER_DEFAULTS.handshakeTimeoutMs / 1000})
  ${METRICS_USAGE}
  --stats-socket PATH  answer \`netdisk-ublk stats --socket PATH\` there: requests and latency of the
                  store's I/O by operation, connections, bytes held for requests in flight
                  (default /run/netdisk-ublk/serve-ADDRESS.stats.sock, which \`stats\` asks
                  without an ID; none where that directory cannot be written; \`--stats-socket none\`: no socket)`;

export async function serve(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    listen: { type: 'string', short: 'l' },
    size: { type: 'string', short: 's' },
    name: { type: 'string', short: 'n' },
    'read-only': { type: 'boolean', short: 'r' },
    tls: { type: 'string' },
    'tls-certificates': { type: 'string' },
    'tls-psk': { type: 'string' },
    'max-connections': { type: 'string' },
    'handshake-timeout': { type: 'string' },
    metrics: { type: 'string' },
    'stats-socket': { type: 'string' },
    help: { type: 'boolean', short: 'h' },
  }, 'serve');
  if (values.help) {
    process.stdout.write(helpText(SERVE_USAGE, 'netdisk-ublk serve /srv/disk.img --size 10G --listen 0.0.0.0:10809'));
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError(`serve: expected one IMAGE argument\n${SERVE_USAGE}`);
  const image = positionals[0] as string;
  const plan = planListen(values);
  if (plan.exportName !== undefined && values.name !== undefined && values.name !== plan.exportName) {
    throw new UsageError(`serve: --name "${values.name}" and the listen URI's export "${plan.exportName}" differ`);
  }
  const exportName = values.name ?? plan.exportName ?? '';
  const maxConnections = parseIntArg(values['max-connections'], 'serve: --max-connections', 1, 65536);
  const handshakeTimeoutS = parseIntArg(values['handshake-timeout'], 'serve: --handshake-timeout', 1, 3600);
  let size: number | undefined;
  if (values.size !== undefined) {
    try {
      size = parseSize(values.size);
    } catch (err) {
      throw new UsageError(`serve: --size: ${(err as Error).message}`);
    }
  }
  const log = createLogger('netdisk-serve');
  // Type=notify: READY=1 once the socket listens (netdisk-ublk-serve@.service).
  const systemd = new SystemdNotifier(log);
  let tls: ServerTls | undefined;
  try {
    if (plan.tls !== 'off') tls = loadServerTls(plan.tls, plan.files, log);
  } catch (err) {
    if (err instanceof NbdError) throw new CliError(`serve: ${err.message}`);
    throw err;
  }
  let store: FileStore;
  try {
    store = FileStore.open(image, { size, readOnly: values['read-only'] ?? false, log });
  } catch (err) {
    if (err instanceof FileStoreError) throw new CliError(`serve: ${err.message}`);
    throw err;
  }
  const settings = { maxConnections, handshakeTimeoutMs: handshakeTimeoutS === undefined ? undefined : handshakeTimeoutS * 1000 };
  const metricsAt = parseMetricsArg(values.metrics);
  const counters = new QueueCounters(newQueueCounters());
  const server = new NbdServer({ exports: [{ name: exportName, store }], log, tls, settings, counters });
  const read = (): DeviceCounters => readCounters([counters.buffer]);
  const extra = (): Record<string, number> => ({ connections: server.connections, 'bytes held': server.bytesHeld });
  const statsSource = { name: `export "${exportName}"`, detail: image, start: zeroCounters(Date.now()), read, extra };
  const where = plan.address;
  try {
    if ('path' in where) await server.listenUnix(where.path);
    else await server.listen(where.host, where.port);
  } catch (err) {
    await store.close();
    const e = err as NodeJS.ErrnoException;
    const what = 'path' in where ? where.path : `${where.host}:${where.port}`;
    throw new CliError(`serve: cannot listen on ${what}: ${e.code ?? e.message}${e.code === 'EADDRINUSE' && 'path' in where ? ' (a server is running there)' : ''}`);
  }
  let metrics: MetricsServer | undefined;
  let stats: StatsSocket | undefined;
  // "none" turns the default socket off (a socket file named none is still ./none).
  const statsAt = values['stats-socket'];
  try {
    if (metricsAt) {
      metrics = await MetricsServer.listen(metricsAt, () => renderMetrics(['export', exportName], read(), [
        ['connections', 'Client connections open now.', server.connections],
        ['bytes_held', 'Bytes held for requests and replies in flight.', server.bytesHeld],
      ]));
    }
    if (statsAt !== undefined && statsAt !== 'none') stats = await StatsSocket.listen(statsAt, statsSource);
  } catch (err) {
    await metrics?.close();
    await server.close();
    const e = err as NodeJS.ErrnoException;
    throw new CliError(`serve: ${metrics || !metricsAt ? '--stats-socket' : '--metrics'}: cannot listen: ${e.code ?? e.message}`);
  }
  if (statsAt === undefined) {
    // Without --stats-socket, one in the run directory as a device has, where `stats` looks.
    // serve need not run as root: a run directory it cannot write only means no socket.
    const at = serveStatsSocketPath(server.addressText());
    try {
      fs.mkdirSync(runDir(), { recursive: true, mode: 0o755 });
      stats = await StatsSocket.listen(at, statsSource);
    } catch (err) {
      log.info({ socket: at, err: (err as NodeJS.ErrnoException).code ?? (err as Error).message }, 'no stats socket (--stats-socket PATH names one)');
    }
  }
  // The handlers go in before anyone hears "serving": a stop sent right after READY=1 must
  // find them, not Node's default action (death by the signal, connections cut).
  const stopSignal = new Promise<string>((resolve) => {
    const stop = (sig: string): void => {
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve(sig);
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  log.info({ image, size: store.size, export: exportName, readOnly: store.readOnly, io: store.engine, listen: server.addressText(), tls: plan.tls,
    ...(metrics ? { metrics: metrics.text } : {}), ...(stats ? { statsSocket: stats.path } : {}) }, 'serving');
  systemd.ready(`serving ${image} (${formatSize(store.size)}) as export "${exportName}" on ${server.addressText()}`);
  const sig = await stopSignal;
  log.info({ signal: sig, connections: server.connections }, 'shutting down');
  systemd.stopping(`shutting down: ${server.connections} connections finish their requests`);
  await server.close();
  await stats?.close();
  await metrics?.close();
  log.info('stopped');
  return 0;
}
