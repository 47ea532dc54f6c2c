// Worker body for device.ktest.ts: one ublk queue served from a worker_thread, the
// way the daemon runs its queues. The disk is a SharedArrayBuffer shared with the
// other queues; the char device fd was opened once by the main thread.
import { parentPort, workerData } from 'worker_threads';
import { UblkQueue, type UblkQueueOptions } from '../../src/ublk/queue';
import { newStats, ramHandler } from './ram-target';

interface Data extends UblkQueueOptions {
  disk: SharedArrayBuffer;
}

const d = workerData as Data;
const port = parentPort;
if (port === null) throw new Error('not a worker');
const q = new UblkQueue(d);
const stats = newStats();
q.start(
  ramHandler(q, Buffer.from(d.disk), stats, () => {
    q.close();
    port.postMessage({ type: 'stopped', stats });
  }),
);
port.postMessage({ type: 'started', qid: d.qid });
