// Worker thread body: owns one ublk queue and its NBD connection. The kernel takes a
// queue's commands only from the thread that fetched its tags, so the queue never
// leaves this thread.
import { parentPort, workerData } from 'worker_threads';
import { NbdClient } from '../nbd/client';
import { createLogger } from '../log';
import { sameExport, type ExportCaps } from './capabilities';
import { QueueService } from './queue-service';

export interface QueueWorkerData {
  devId: number;
  qid: number;
  depth: number;
  maxIoBufBytes: number;
  charFd: number;
  ioctlEncode: boolean;
  host: string;
  port: number;
  exportName: string;
  expect: ExportCaps;
}

export type QueueWorkerMessage =
  | { type: 'started' }
  | { type: 'failed'; message: string }
  | { type: 'stopped' };

const d = workerData as QueueWorkerData;
const port = parentPort;
if (port === null) throw new Error('queue-worker must run in a worker thread');
const log = createLogger('netdisk-ublk').child({ dev: d.devId, q: d.qid });
const post = (m: QueueWorkerMessage): void => port.postMessage(m);

async function main(): Promise<void> {
  let client: NbdClient;
  try {
    client = await NbdClient.connect({ host: d.host, port: d.port, exportName: d.exportName });
  } catch (err) {
    post({ type: 'failed', message: (err as Error).message });
    return;
  }
  const diff = sameExport(d.expect, client.info);
  if (diff !== null) {
    client.destroy();
    post({ type: 'failed', message: diff });
    return;
  }
  let stopping = false;
  client.on('close', (err: Error) => {
    if (!stopping) log.error({ err: err.message }, 'connection to the store lost; requests fail with EIO');
  });
  const svc = new QueueService(
    { devId: d.devId, qid: d.qid, depth: d.depth, maxIoBufBytes: d.maxIoBufBytes, charFd: d.charFd, ioctlEncode: d.ioctlEncode },
    client,
    log,
  );
  svc.start();
  post({ type: 'started' });
  await svc.stopped;
  stopping = true;
  await Promise.race([client.close(), new Promise((r) => setTimeout(r, 5000))]);
  client.destroy();
  post({ type: 'stopped' });
}

main().catch((err: unknown) => {
  post({ type: 'failed', message: (err as Error).message ?? String(err) });
});
