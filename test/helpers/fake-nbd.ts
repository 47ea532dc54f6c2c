// A scripted NBD server backed by an in-memory disk, for reconnect and hostile-reply tests.
// It shakes hands correctly (fixed newstyle, GO), answers requests in order and keeps the
// disk as the model of what a correct client must read back. A test arms one misbehaviour
// at a time (an unknown handle, a bad magic, a short read, an errno out of range, ...);
// the next matching request gets it instead of a correct reply, and whatever the client
// does next (reconnect, resend) is served correctly again. The store can also be taken
// down (new connections closed at once), stalled (nothing answered), or made to announce
// another size.
//
// Messages are built here from the spec's layouts (test/helpers/raw-nbd.ts), not with
// src/nbd/codec, so that a codec bug cannot hide on both ends of the wire.
import * as net from 'net';
import { HOST } from './net';
import { MAGIC, RawConn, u16, u32, u64 } from './raw-nbd';

export const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, WRITE_ZEROES: 6 } as const;
export const TFLAG = {
  HAS_FLAGS: 1 << 0, READ_ONLY: 1 << 1, SEND_FLUSH: 1 << 2, SEND_FUA: 1 << 3, SEND_TRIM: 1 << 5,
  SEND_WRITE_ZEROES: 1 << 6, CAN_MULTI_CONN: 1 << 8,
} as const;
export const DEFAULT_FLAGS = TFLAG.HAS_FLAGS | TFLAG.SEND_FLUSH | TFLAG.SEND_FUA | TFLAG.SEND_TRIM | TFLAG.SEND_WRITE_ZEROES;
const OPT_GO = 7;
const REP_ACK = 1;
const REP_INFO = 3;
const REP_ERR_UNSUP = 0x80000001;
const ESHUTDOWN = 108;

export interface FakeRequest {
  /** Which connection (1 = the first accepted) carried it. */
  conn: number;
  type: number;
  flags: number;
  cookie: Buffer;
  offset: number;
  length: number;
  payload?: Buffer;
  /** When it was read (ms since the epoch). */
  t: number;
}

/**
 * What an armed misbehaviour does to the request it catches:
 * - unknown-handle: a reply (with wrong data for a READ) whose handle no request has;
 * - bad-magic: a reply header with a wrong magic;
 * - short-read-close / short-read-stall: a READ reply header and half the data (wrong
 *   bytes), then the connection is closed / goes silent;
 * - bad-errno: an error reply with an errno outside the spec's list (the connection goes on);
 * - eshutdown: an ESHUTDOWN error reply (the server is going away; the client should reconnect);
 * - cut: the connection is destroyed without a reply;
 * - stall: no reply, ever, on this connection (it stays open);
 * - endless: the correct reply, then bytes that never form a header, as fast as the client
 *   takes them, until it closes (or FLOOD_CAP bytes);
 * - unasked-cookies: reply headers for cookies no request carried, one after the other,
 *   until the client closes (or FLOOD_CAP bytes);
 * - huge-length: a structured reply (never negotiated) announcing a chunk of 4 GiB - 1,
 *   then that chunk's bytes, until the client closes (or FLOOD_CAP bytes).
 */
export type Hostile = 'unknown-handle' | 'bad-magic' | 'short-read-close' | 'short-read-stall' | 'bad-errno' | 'eshutdown' | 'cut' | 'stall'
  | 'endless' | 'unasked-cookies' | 'huge-length';

/** The most a flood sends: far more than a client that kept it all could hold within its bound. */
export const FLOOD_CAP = 1024 * 1024 * 1024;
const STRUCTURED_REPLY_MAGIC = 0x668e33ef;
const REPLY_TYPE_OFFSET_DATA = 1;

export const BAD_ERRNO = 4242;
/** The byte a hostile reply fills its data with: it must never reach a reader. */
export const POISON = 0xee;

interface Armed {
  act: Hostile;
  when: (r: FakeRequest) => boolean;
  resolve: (r: FakeRequest) => void;
}

interface Conn {
  readonly n: number;
  readonly raw: RawConn;
  /** Advertised size on this connection. */
  size: number;
  stalled: boolean;
}

export class FakeNbdServer {
  readonly disk: Buffer;
  /** What the next handshakes announce; a test may change it to play another export. */
  exportSize: number;
  exportFlags: number;
  /** While true, a new connection is closed at once (the store is down). */
  refuse = false;
  /** When set, READ replies leave in pieces of this many bytes, each once the socket takes it. */
  trickle = 0;
  /** The longest request seen. */
  longest = 0;
  /** Bytes the floods sent. */
  flooded = 0;
  readonly requests: FakeRequest[] = [];
  /** Connections accepted, and those that reached transmission (GO acknowledged). */
  accepted = 0;
  handshakes = 0;
  /** Errors of the server's own scripts (a test asserts this stays empty). */
  readonly errors: unknown[] = [];
  readonly sizesSeen: Array<{ conn: number; size: number }> = [];
  private readonly server: net.Server;
  private readonly conns = new Set<Conn>();
  private armed: Armed | null = null;
  port = 0;

  private constructor(size: number, flags: number) {
    this.disk = Buffer.alloc(size);
    this.exportSize = size;
    this.exportFlags = flags;
    this.server = net.createServer((sock) => this.accept(sock));
  }

  static async start(size: number, flags = DEFAULT_FLAGS): Promise<FakeNbdServer> {
    const s = new FakeNbdServer(size, flags);
    await new Promise<void>((resolve, reject) => {
      s.server.once('error', reject);
      s.server.listen({ host: HOST, port: 0 }, () => resolve());
    });
    s.port = (s.server.address() as net.AddressInfo).port;
    return s;
  }

  /** Connections open now. */
  get open(): number {
    return this.conns.size;
  }

  /** The next request that matches `when` gets `act`; resolves with that request. */
  arm(act: Hostile, when: (r: FakeRequest) => boolean = () => true): Promise<FakeRequest> {
    return new Promise((resolve) => { this.armed = { act, when, resolve }; });
  }

  disarm(): void {
    this.armed = null;
  }

  /** Destroys every open connection (the store crashed, or the network cut them). */
  cutAll(): void {
    for (const c of this.conns) c.raw.destroy();
  }

  /** Stops answering on every open connection (they stay open). */
  stallAll(): void {
    for (const c of this.conns) c.stalled = true;
  }

  /** Requests that reached connection n. */
  requestsOn(n: number): FakeRequest[] {
    return this.requests.filter((r) => r.conn === n);
  }

  async close(): Promise<void> {
    this.cutAll();
    await new Promise<void>((r) => this.server.close(() => r()));
  }

  private accept(sock: net.Socket): void {
    this.accepted++;
    const n = this.accepted;
    const raw = RawConn.from(sock);
    if (this.refuse) {
      raw.destroy();
      return;
    }
    const c: Conn = { n, raw, size: this.exportSize, stalled: false };
    this.conns.add(c);
    void raw.closed.then(() => this.conns.delete(c));
    this.serve(c).catch((err: unknown) => {
      // A peer that goes away mid-message is the client's right; anything else is a bug here.
      if (!/peer closed/.test(String(err))) this.errors.push(err);
      raw.destroy();
    });
  }

  private async serve(c: Conn): Promise<void> {
    const { raw } = c;
    raw.write(Buffer.concat([MAGIC.NBDMAGIC, MAGIC.IHAVEOPT, u16(3)])); // FIXED_NEWSTYLE | NO_ZEROES
    await raw.read(4);
    for (;;) {
      const h = await raw.read(16);
      if (!h.subarray(0, 8).equals(MAGIC.IHAVEOPT)) throw new Error(`fake server: bad option magic ${h.toString('hex')}`);
      const opt = h.readUInt32BE(8);
      await raw.read(h.readUInt32BE(12));
      if (opt !== OPT_GO) {
        raw.write(optReply(opt, REP_ERR_UNSUP));
        continue;
      }
      c.size = this.exportSize;
      this.sizesSeen.push({ conn: c.n, size: c.size });
      raw.write(Buffer.concat([
        optReply(OPT_GO, REP_INFO, Buffer.concat([u16(0), u64(c.size), u16(this.exportFlags)])),
        optReply(OPT_GO, REP_ACK),
      ]));
      this.handshakes++;
      break;
    }
    for (;;) {
      const hdr = await raw.read(28);
      if (hdr.readUInt32BE(0) !== MAGIC.REQUEST) throw new Error(`fake server: bad request magic ${hdr.toString('hex')}`);
      const r: FakeRequest = {
        conn: c.n, flags: hdr.readUInt16BE(4), type: hdr.readUInt16BE(6), cookie: Buffer.from(hdr.subarray(8, 16)),
        offset: Number(hdr.readBigUInt64BE(16)), length: hdr.readUInt32BE(24), t: Date.now(),
      };
      if (r.type === CMD.WRITE) r.payload = Buffer.from(await raw.read(r.length));
      if (r.type === CMD.DISC) {
        raw.sock.end();
        return;
      }
      this.requests.push(r);
      this.longest = Math.max(this.longest, r.length);
      if (c.stalled) continue;
      const a = this.armed;
      if (a !== null && a.when(r)) {
        this.armed = null;
        a.resolve(r);
        if (await this.misbehave(c, r, a.act)) continue;
        return;
      }
      if (this.trickle > 0 && r.type === CMD.READ && r.offset + r.length <= Math.min(c.size, this.disk.length)) {
        await this.trickleRead(c, r);
        continue;
      }
      this.answer(c, r);
    }
  }

  /** A correct reply, applying the request to the disk. */
  private answer(c: Conn, r: FakeRequest): void {
    const inRange = r.offset + r.length <= c.size && r.offset + r.length <= this.disk.length;
    if (!inRange && r.type !== CMD.FLUSH) {
      c.raw.write(reply(r.cookie, 22));
      return;
    }
    switch (r.type) {
      case CMD.READ:
        c.raw.write(Buffer.concat([reply(r.cookie), this.disk.subarray(r.offset, r.offset + r.length)]));
        return;
      case CMD.WRITE:
        (r.payload as Buffer).copy(this.disk, r.offset);
        break;
      case CMD.TRIM:
      case CMD.WRITE_ZEROES:
        this.disk.fill(0, r.offset, r.offset + r.length);
        break;
      case CMD.FLUSH:
        break;
      default:
        c.raw.write(reply(r.cookie, 22));
        return;
    }
    c.raw.write(reply(r.cookie));
  }

  /** A correct READ reply, its data in pieces of `trickle` bytes. */
  private async trickleRead(c: Conn, r: FakeRequest): Promise<void> {
    const data = this.disk.subarray(r.offset, r.offset + r.length);
    await this.send(c, reply(r.cookie));
    for (let off = 0; off < data.length; off += this.trickle) {
      if (!await this.send(c, data.subarray(off, off + this.trickle))) return;
    }
  }

  /** Writes b; once the socket holds too much, waits until it drains. False once the connection is gone. */
  private async send(c: Conn, b: Buffer): Promise<boolean> {
    const sock = c.raw.sock;
    if (sock.destroyed) return false;
    if (!sock.write(b)) {
      await new Promise<void>((res) => {
        const done = (): void => {
          sock.off('drain', done);
          sock.off('close', done);
          res();
        };
        sock.once('drain', done);
        sock.once('close', done);
      });
    }
    return !sock.destroyed;
  }

  /** Sends what `next` makes until the client closes the connection or FLOOD_CAP bytes are out. */
  private async flood(c: Conn, next: (i: number) => Buffer): Promise<void> {
    for (let i = 0, sent = 0; sent < FLOOD_CAP; i++) {
      const b = next(i);
      this.flooded += b.length;
      sent += b.length;
      if (!await this.send(c, b)) return;
    }
    c.raw.destroy();
  }

  /** Carries out a misbehaviour; true when the connection goes on reading requests. */
  private async misbehave(c: Conn, r: FakeRequest, act: Hostile): Promise<boolean> {
    const poison = Buffer.alloc(r.type === CMD.READ ? r.length : 0, POISON);
    switch (act) {
      case 'unknown-handle': {
        const other = Buffer.from(r.cookie);
        other[0] = (other[0] ?? 0) ^ 0x5a;
        other[7] = (other[7] ?? 0) ^ 0xa5;
        c.raw.write(Buffer.concat([reply(other), poison]));
        return true;
      }
      case 'bad-magic':
        c.raw.write(Buffer.concat([reply(r.cookie, 0, 0x67446699), poison]));
        return true;
      case 'short-read-close':
      case 'short-read-stall':
        c.raw.write(Buffer.concat([reply(r.cookie), poison.subarray(0, poison.length >> 1)]));
        if (act === 'short-read-close') {
          // Let the bytes leave before the close, so the client sees a short reply, not a reset.
          await new Promise<void>((resolve) => c.raw.sock.end(resolve));
          return false;
        }
        c.stalled = true;
        return true;
      case 'bad-errno':
        c.raw.write(reply(r.cookie, BAD_ERRNO));
        return true;
      case 'eshutdown':
        c.raw.write(reply(r.cookie, ESHUTDOWN));
        return true;
      case 'cut':
        c.raw.destroy();
        return false;
      case 'stall':
        c.stalled = true;
        return true;
      case 'endless': {
        this.answer(c, r);
        const junk = Buffer.alloc(256 * 1024, POISON);
        await this.flood(c, () => junk);
        return false;
      }
      case 'unasked-cookies': {
        const headers = Buffer.alloc(64 * 1024);
        await this.flood(c, (i) => {
          for (let o = 0; o < headers.length; o += 16) {
            reply(u64(BigInt(0x7e57_0000_0000) + BigInt(i * 4096 + o / 16))).copy(headers, o);
          }
          return headers;
        });
        return false;
      }
      case 'huge-length': {
        await this.send(c, Buffer.concat([u32(STRUCTURED_REPLY_MAGIC), u16(0), u16(REPLY_TYPE_OFFSET_DATA), r.cookie, u32(0xffffffff), u64(BigInt(r.offset))]));
        const junk = Buffer.alloc(256 * 1024, POISON);
        await this.flood(c, () => junk);
        return false;
      }
    }
  }
}

function optReply(opt: number, type: number, data: Buffer = Buffer.alloc(0)): Buffer {
  return Buffer.concat([MAGIC.OPTION_REPLY, u32(opt), u32(type), u32(data.length), data]);
}

function reply(cookie: Buffer, error = 0, magic = MAGIC.SIMPLE_REPLY): Buffer {
  return Buffer.concat([u32(magic), u32(error), cookie]);
}
