// Worker body for addon.test.ts: loads the addon in a worker_thread and runs a
// queue over /dev/zero there (see addon.test.ts for why /dev/zero).
import * as fs from 'fs';
import { parentPort, workerData } from 'worker_threads';
import { UblkQueue } from '../../src/ublk/queue';

const { depth, leaveOpen } = workerData as { depth: number; leaveOpen: boolean };
const fd = fs.openSync('/dev/zero', 'r+');
const q = new UblkQueue({ devId: 0, qid: 0, depth, maxIoBufBytes: 4096, charFd: fd, ioctlEncode: true });
const errors: string[] = [];
q.start({
  request: () => undefined,
  error: (err) => errors.push(err.errnoCode),
  stopped: () => {
    const bufferLength = q.buffers[0]?.length ?? -1;
    if (!leaveOpen) q.close();
    parentPort?.postMessage({ errors, bufferLength, closedLength: q.buffers[0]?.length ?? -1 });
    // leaveOpen: the environment's teardown has to close the ring and the handle.
  },
});
