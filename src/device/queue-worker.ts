// Worker thread body: owns one ublk queue and its NBD connection. The kernel takes a
// queue's commands only from the thread that fetched its tags, so the queue never
// leaves this thread.
import { parentPort, workerData } from 'worker_threads';
import { ReconnectingClient, type ConnectEvent, type ReconnectOptions } from '../nbd/reconnecting-client';
import type { ExportInfo } from '../nbd/client';
import { createLogger } from '../log';
import { DEVICE_DEFAULTS, type DeviceConfig } from './config';
import { QueueCounters } from '../stats/device-counters';
import { QueueService } from './queue-service';
import { ringTransport } from './ring-transport';
import { UblkQueue } from '../ublk';

export interface QueueWorkerData {
  devId: number;
  qid: number;
  charFd: number;
  ioctlEncode: boolean;
  /** The export as the daemon found it (or as its record keeps it): every connection must find the same. */
  expect: ExportInfo;
  /** The device's settings, as the kernel granted them. */
  config: DeviceConfig;
  /** This queue's counters, read by the daemon's main thread (stats/device-counters.ts). */
  counters: SharedArrayBuffer;
  /**
   * The device is being recovered: the kernel holds its I/O until every queue is started,
   * so the queue starts at once, without a connection, and its client connects in the
   * background as it reconnects (backoff, the export checked, fail-after): with the store
   * away the I/O fails with EIO after fail-after instead of waiting for good, and works
   * again once the store is back. (A queue that gave up instead would leave the device
   * waiting: Linux 6.12 refuses another START_USER_RECOVERY, EINVAL, until this one ends.)
   */
  recovering: boolean;
  /** The device has UBLK_F_AUTO_BUF_REG: the queue's ring moves the requests' own pages (data-path.ts). */
  zeroCopy: boolean;
  /** It also has UBLK_F_USER_COPY: small READ payloads are staged and copied into the requests' pages. */
  userCopy: boolean;
}

/** From the daemon: the device is being stopped. */
export type QueueWorkerCommand = { type: 'shutdown' };

export type QueueWorkerMessage =
  | { type: 'started' }
  /** The queue's connection to the store changed state (rare: never per request). */
  | { type: 'link'; text: string }
  | { type: 'failed'; message: string };

const d = workerData as QueueWorkerData;
if (parentPort === null) throw new Error('queue-worker must run in a worker thread');
const port = parentPort;
const log = createLogger('netdisk-ublk').child({ dev: d.devId, q: d.qid });
const post = (m: QueueWorkerMessage): void => port.postMessage(m);

async function main(): Promise<void> {
  // A connection never has more requests in flight than the queue has tags.
  const ring = d.config.transport === 'ring';
  let q: UblkQueue;
  try {
    q = new UblkQueue({
      devId: d.devId, qid: d.qid, depth: d.config.depth, maxIoBufBytes: d.config.maxIoBufBytes, charFd: d.charFd,
      ioctlEncode: d.ioctlEncode, socketSlots: ring ? d.config.depth : 0, zeroCopy: d.zeroCopy,
      userCopy: d.userCopy,
    });
  } catch (err) {
    post({ type: 'failed', message: (err as Error).message });
    return;
  }
  const opts: ReconnectOptions & { expect: ExportInfo } = {
    ...d.config.remote, expect: d.expect, timeoutMs: d.config.timeoutMs, failAfterMs: d.config.failAfterMs,
    // The ring transport drives each connection on this queue's own io_uring.
    makeTransport: ring ? ringTransport(q, d.config.depth) : undefined,
  };
  let client: ReconnectingClient;
  if (d.recovering) {
    client = ReconnectingClient.connectInBackground(opts);
  } else {
    try {
      client = await ReconnectingClient.connect(opts);
    } catch (err) {
      q.close();
      post({ type: 'failed', message: (err as Error).message });
      return;
    }
  }
  const counters = new QueueCounters(d.counters, d.config.depth);
  if (!client.connected) {
    counters.disconnected();
    log.info({ failAfterMs: d.config.failAfterMs }, 'recovering: connecting to the store in the background; requests wait for it');
  }
  client.on('connect', (e: ConnectEvent) => {
    counters.connected();
    log.info({ waitedMs: e.waitedMs, attempts: e.attempts, sent: e.sent, transport: client.transportKind }, 'connected to the store');
    post({ type: 'link', text: `queue ${d.qid}: connected to the store${e.attempts > 1 ? ` after ${(e.waitedMs / 1000).toFixed(1)} s` : ''}` });
  });
  client.on('disconnect', (e: { reason: string; pending: number }) => {
    counters.disconnected();
    log.warn({ reason: e.reason, pending: e.pending }, 'connection to the store lost: reconnecting, requests wait');
    post({ type: 'link', text: `queue ${d.qid}: connection to the store lost (${e.reason}); reconnecting, ${e.pending} requests wait` });
  });
  client.on('retry', (e: { attempt: number; error: string; delayMs: number }) =>
    log.info({ attempt: e.attempt, err: e.error, retryInMs: e.delayMs }, 'reconnect attempt failed'));
  client.on('mismatch', (e: { reason: string }) =>
    log.error({ reason: e.reason }, 'the store now serves a different export: not using it'));
  client.on('reconnect', (e: { downMs: number; attempts: number; resent: number }) => {
    counters.reconnected(e.resent);
    log.warn({ downMs: e.downMs, attempts: e.attempts, resent: e.resent, transport: client.transportKind }, 'reconnected to the store');
    post({ type: 'link', text: `queue ${d.qid}: reconnected after ${(e.downMs / 1000).toFixed(1)} s, ${e.resent} requests resent` });
  });
  client.on('give-up', (e: { reason: string; pending: number }) => {
    log.error({ reason: e.reason, failed: e.pending }, 'store unreachable: requests now fail with EIO (still reconnecting)');
    post({ type: 'link', text: `queue ${d.qid}: store unreachable (${e.reason}); requests fail with EIO, still reconnecting` });
  });
  const onCommand = (m: QueueWorkerCommand): void => {
    if (m.type === 'shutdown') client.shutdown();
  };
  port.on('message', onCommand);
  const svc = new QueueService(q, client, log, counters);
  svc.start();
  // Which data path runs: asked for in the settings, and what the connection took (TLS: the stream).
  log.info({ transport: client.transportKind, asked: d.config.transport ?? DEVICE_DEFAULTS.transport, zeroCopy: d.zeroCopy }, 'queue serving');
  post({ type: 'started' });
  await svc.stopped;
  // Neither the grace timer nor the message listener may outlive the queue: either keeps
  // this thread alive until the daemon terminates it after 30 s, delaying every `del` and
  // SIGTERM by that much. removeAllListeners() is not enough: it leaves parentPort
  // referenced (Node 20); off() with the listener unrefs it.
  let grace: NodeJS.Timeout | undefined;
  await Promise.race([client.close(), new Promise((r) => { grace = setTimeout(r, 5000); })]);
  clearTimeout(grace);
  port.off('message', onCommand);
}

main().catch((err: unknown) => {
  post({ type: 'failed', message: (err as Error).message ?? String(err) });
});
