// The device settings on the command line (add, and bench which passes them to add) and in
// the devices file: parsed in one place into the DeviceConfig shape, defaults from its one table.
import {
  DATA_TRANSPORTS, DEVICE_DEFAULTS, DEVICE_LIMITS, ZERO_COPY_MODES, type DataTransport, type DeviceSettings, type ZeroCopyMode,
} from '../device/config';
import { formatSize, parseSize } from '../size';
import { parseIntArg } from './args';
import { METRICS_USAGE, parseMetricsArg } from './metrics-arg';
import { UsageError } from './errors';

export const DEVICE_OPTIONS = {
  queues: { type: 'string', short: 'q' },
  depth: { type: 'string', short: 'd' },
  'max-io': { type: 'string' },
  timeout: { type: 'string' },
  'fail-after': { type: 'string' },
  transport: { type: 'string' },
  'zero-copy': { type: 'string' },
  metrics: { type: 'string' },
} as const;

export type DeviceArgs = Partial<Record<keyof typeof DEVICE_OPTIONS, string>>;

const D = DEVICE_DEFAULTS;
const L = DEVICE_LIMITS;

export const DEVICE_USAGE = `  --queues N     queues, each with its own thread and connection when the server allows
                 multi-conn (default ${D.queues})
  --depth N      requests in flight per queue (default ${D.depth})
  --max-io SIZE  largest request (default ${formatSize(D.maxIoBufBytes)})
  --timeout S    a request without a reply for S seconds means the connection is stalled:
                 reconnect and resend (default ${D.timeoutMs / 1000}; 0: never)
  --fail-after S requests wait up to S seconds for a lost store before failing with EIO
                 (default ${D.failAfterMs / 1000}; 0: fail at once)
  --transport ${DATA_TRANSPORTS.join('|')}
                 how each connection moves its bytes after the handshake: Node's socket
                 stream, or the queue's own io_uring beside its ublk commands (TLS always
                 takes the stream) (default ${D.transport})
  --zero-copy ${ZERO_COPY_MODES.join('|')}
                 auto: the ring transport moves each request's own pages to and from the
                 socket where the kernel allows it (7.2 and later); off: copy mode there
                 too, to compare the two (default ${D.zeroCopy})
  ${METRICS_USAGE}
                 (none by default; a recovered daemon serves them at the same address)`;

/**
 * The settings given on the command line; those not given are left out. Relative paths are
 * taken from `base`.
 */
export function parseDeviceArgs(values: DeviceArgs, base = process.cwd()): Partial<DeviceSettings> {
  const out: Partial<DeviceSettings> = {};
  const queues = parseIntArg(values.queues, '--queues', L.queues.min, L.queues.max);
  if (queues !== undefined) out.queues = queues;
  const depth = parseIntArg(values.depth, '--depth', L.depth.min, L.depth.max);
  if (depth !== undefined) out.depth = depth;
  if (values['max-io'] !== undefined) {
    let maxIo: number;
    try {
      maxIo = parseSize(values['max-io']);
    } catch (err) {
      throw new UsageError(`--max-io: ${(err as Error).message}`);
    }
    if (maxIo < L.maxIoBufBytes.min || maxIo > L.maxIoBufBytes.max || maxIo % 4096 !== 0) {
      throw new UsageError(`--max-io must be a multiple of 4K between ${formatSize(L.maxIoBufBytes.min)} and ${formatSize(L.maxIoBufBytes.max)}`);
    }
    out.maxIoBufBytes = maxIo;
  }
  const timeout = parseIntArg(values.timeout, '--timeout', L.timeoutMs.min / 1000, L.timeoutMs.max / 1000);
  if (timeout !== undefined) out.timeoutMs = timeout * 1000;
  const failAfter = parseIntArg(values['fail-after'], '--fail-after', L.failAfterMs.min / 1000, L.failAfterMs.max / 1000);
  if (failAfter !== undefined) out.failAfterMs = failAfter * 1000;
  if (values.transport !== undefined) {
    if (!(DATA_TRANSPORTS as readonly string[]).includes(values.transport)) {
      throw new UsageError(`--transport must be one of ${DATA_TRANSPORTS.join(', ')}, not "${values.transport}"`);
    }
    out.transport = values.transport as DataTransport;
  }
  if (values['zero-copy'] !== undefined) {
    if (!(ZERO_COPY_MODES as readonly string[]).includes(values['zero-copy'])) {
      throw new UsageError(`--zero-copy must be one of ${ZERO_COPY_MODES.join(', ')}, not "${values['zero-copy']}"`);
    }
    out.zeroCopy = values['zero-copy'] as ZeroCopyMode;
  }
  const metrics = parseMetricsArg(values.metrics, base);
  if (metrics !== undefined) out.metrics = metrics;
  return out;
}
