// The ring transport without a ublk kernel: each connection rides on a queue over
// /dev/zero (see test/ublk/addon.test.ts), whose every FETCH is refused at once, so its
// io_uring carries only the socket. The same addon code and transport as on a device,
// where the ring is the real queue's.
import * as fs from 'fs';
import { RingTransport } from '../../src/device/ring-transport';
import type { TransportFactory } from '../../src/nbd/transport';
import { UblkQueue } from '../../src/ublk/queue';

/** The ring transport for connections of at most `slots` requests in flight, each on a queue of its own. */
export function zeroQueueRing(slots: number): TransportFactory {
  return (sock) => {
    const fd = fs.openSync('/dev/zero', 'r+');
    const q = new UblkQueue({ devId: 0, qid: 0, depth: 1, maxIoBufBytes: 4096, charFd: fd, ioctlEncode: false, socketSlots: slots });
    q.start({ request: () => undefined, error: () => undefined });
    return new RingTransport(sock, q, slots, () => {
      q.close();
      fs.closeSync(fd);
    });
  };
}
