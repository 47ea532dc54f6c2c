// A byte-level NBD peer for hostile tests. Every message is built here by hand, from the
// spec's layouts, not with src/nbd/codec: a codec bug must not hide itself by being on
// both ends of the wire.
import * as net from 'net';
import { HOST } from './net';

export const MAGIC = {
  NBDMAGIC: Buffer.from('NBDMAGIC', 'latin1'),
  IHAVEOPT: Buffer.from('IHAVEOPT', 'latin1'),
  OPTION_REPLY: Buffer.from('0003e889045565a9', 'hex'),
  REQUEST: 0x25609513,
  SIMPLE_REPLY: 0x67446698,
  STRUCTURED_REPLY: 0x668e33ef,
};

export function u16(n: number): Buffer {
  const b = Buffer.alloc(2);
  b.writeUInt16BE(n);
  return b;
}

export function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n >>> 0);
  return b;
}

export function u64(n: bigint | number): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return b;
}

/** An option: IHAVEOPT, option, length, data (length may lie when given). */
export function option(opt: number, data: Buffer = Buffer.alloc(0), length = data.length): Buffer {
  return Buffer.concat([MAGIC.IHAVEOPT, u32(opt), u32(length), data]);
}

/** NBD_OPT_GO / NBD_OPT_INFO payload: name length, name, info request count, requests. */
export function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name, 'utf8');
  return Buffer.concat([u32(n.length), n, u16(infos.length), ...infos.map(u16)]);
}

/** A 28-byte request header. */
export function request(type: number, opts: { flags?: number; cookie?: bigint; offset?: bigint | number; length?: number; magic?: number } = {}): Buffer {
  return Buffer.concat([
    u32(opts.magic ?? MAGIC.REQUEST), u16(opts.flags ?? 0), u16(type),
    u64(opts.cookie ?? 1n), u64(opts.offset ?? 0), u32(opts.length ?? 0),
  ]);
}

export interface OptionReply {
  option: number;
  type: number;
  data: Buffer;
}

export interface SimpleReply {
  magic: number;
  error: number;
  cookie: bigint;
}

/** A TCP connection with exact-length reads, to script one side of a conversation. */
export class RawConn {
  readonly sock: net.Socket;
  /** Resolves when the socket has closed (either side). */
  readonly closed: Promise<void>;
  private buf = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | null = null;
  /** Bytes received in total, consumed or not. */
  receivedBytes = 0;

  private constructor(sock: net.Socket) {
    this.sock = sock;
    sock.on('data', (b: Buffer) => {
      this.buf = Buffer.concat([this.buf, b]);
      this.receivedBytes += b.length;
      this.poke();
    });
    sock.on('error', () => undefined);
    this.closed = new Promise((r) => sock.once('close', () => {
      this.ended = true;
      this.poke();
      r();
    }));
    sock.on('end', () => {
      this.ended = true;
      this.poke();
    });
  }

  static connect(port: number): Promise<RawConn> {
    return new Promise((resolve, reject) => {
      const s = net.connect({ host: HOST, port, noDelay: true });
      s.once('connect', () => resolve(new RawConn(s)));
      s.once('error', reject);
    });
  }

  static from(sock: net.Socket): RawConn {
    sock.setNoDelay(true);
    return new RawConn(sock);
  }

  private poke(): void {
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  write(b: Buffer): void {
    this.sock.write(b);
  }

  /** Exactly n bytes; rejects if the peer closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.ended) throw new Error(`peer closed after ${this.buf.length} of ${n} bytes`);
      await new Promise<void>((r) => { this.wake = r; });
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves once the peer has closed, with whatever it sent that was not read. */
  async untilClosed(): Promise<Buffer> {
    while (!this.ended) await new Promise<void>((r) => { this.wake = r; });
    return this.buf;
  }

  destroy(): void {
    this.sock.destroy();
  }

  // ---- client side ----

  /** Reads and checks the 18-byte greeting; returns the handshake flags. */
  async greeting(): Promise<number> {
    const g = await this.read(18);
    if (!g.subarray(0, 8).equals(MAGIC.NBDMAGIC) || !g.subarray(8, 16).equals(MAGIC.IHAVEOPT)) {
      throw new Error(`not a fixed-newstyle greeting: ${g.toString('hex')}`);
    }
    return g.readUInt16BE(16);
  }

  async optionReply(): Promise<OptionReply> {
    const h = await this.read(20);
    if (!h.subarray(0, 8).equals(MAGIC.OPTION_REPLY)) throw new Error(`bad option reply magic: ${h.toString('hex')}`);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: await this.read(h.readUInt32BE(16)) };
  }

  /** Greeting, client flags (fixed newstyle + no zeroes), GO; returns size and flags. */
  async handshake(name = ''): Promise<{ size: bigint; flags: number }> {
    await this.greeting();
    this.write(u32(3));
    this.write(option(7, goData(name)));
    let size = -1n;
    let flags = 0;
    for (;;) {
      const r = await this.optionReply();
      if (r.type === 1) break;
      if (r.type !== 3) throw new Error(`GO refused: type 0x${r.type.toString(16)} ${r.data.toString()}`);
      if (r.data.readUInt16BE(0) === 0) {
        size = r.data.readBigUInt64BE(2);
        flags = r.data.readUInt16BE(10);
      }
    }
    return { size, flags };
  }

  async simpleReply(): Promise<SimpleReply> {
    const h = await this.read(16);
    return { magic: h.readUInt32BE(0), error: h.readUInt32BE(4), cookie: h.readBigUInt64BE(8) };
  }
}
