// The server's handshake and request decoder fed random and mutated byte streams.
//
// Two targets: ServerConnection in this process over an in-memory duplex and a recording
// store (thousands of streams a second: every store call and every reply is seen), and a
// spawned `serve` on a real image over TCP (fewer streams: the image on disk is what counts).
// Properties:
// - no crash: nothing throws out of the connection, `serve` stays up;
// - no hang: once the stream has ended, the connection closes within a bound;
// - no write outside a valid request: every change to the store is a WRITE, TRIM or
//   WRITE_ZEROES that the stream carried, after a successful handshake, within the export,
//   with exactly the stream's bytes, in the stream's order; and every request the server
//   acknowledged as done really was done;
// - replies only answer requests the stream made, and a READ reply carries the store's bytes.
// Which requests a stream carries is worked out here from the spec (proto.md), not with
// src/nbd/codec.
//
// Seeded: FUZZ_SEED=n reproduces a run, FUZZ_ITERATIONS=n (in-process streams) and
// FUZZ_SERVE_ITERATIONS=n (streams to `serve`) make it longer: `npm run fuzz`.
import * as assert from 'assert';
import * as fs from 'fs';
import * as net from 'net';
import { Duplex } from 'stream';
import { ServerConnection } from '../../src/server/connection';
import { serverSettings } from '../../src/server/settings';
import type { Done, Store } from '../../src/server/store/store';
import { silentLogger } from '../../src/log';
import { cleanupAfterAll } from '../helpers/procs';
import { makeImage, tempDir } from '../helpers/images';
import { HOST } from '../helpers/net';
import { MAGIC, goData, option, u16, u32, u64 } from '../helpers/raw-nbd';
import { serveImage, type Served } from '../helpers/serve';

const SEED = Number(process.env.FUZZ_SEED ?? 20261126) >>> 0;
const ITERATIONS = Number(process.env.FUZZ_ITERATIONS ?? 400);
const SERVE_ITERATIONS = Number(process.env.FUZZ_SERVE_ITERATIONS ?? Math.max(40, Math.ceil(ITERATIONS / 10)));
const SIZE = 256 * 1024;
const EXPORT = 'fuzz';
// After the stream ends, the connection must be closed within this (a guard, not a measurement).
const CLOSE_BOUND_MS = 5000;

const CMD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 };
const OPT = { EXPORT_NAME: 1, ABORT: 2, LIST: 3, STARTTLS: 5, INFO: 6, GO: 7, STRUCTURED_REPLY: 8 };
const MAX_PAYLOAD = 32 * 1024 * 1024;
const MAX_OPTION = 64 * 1024;

// ---------------------------------------------------------------- seeded randomness

class Rng {
  private s: number;
  constructor(seed: number) {
    this.s = seed >>> 0 || 1;
  }

  /** mulberry32 */
  u32(): number {
    this.s = (this.s + 0x6d2b79f5) >>> 0;
    let t = this.s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return (t ^ (t >>> 14)) >>> 0;
  }

  int(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }

  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }

  pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)] as T;
  }

  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

// ---------------------------------------------------------------- streams

const INTERESTING_32 = [0, 1, 0x7f, 0x80, 0xff, 0x100, 0x7fff, 0x8000, 0xffff, 0x10000, MAX_OPTION, MAX_OPTION + 1,
  SIZE - 1, SIZE, SIZE + 1, MAX_PAYLOAD, MAX_PAYLOAD + 1, 0x7fffffff, 0x80000000, 0xffffffff];

function request(rng: Rng, cookie: number, size: number, maxLen: number): Buffer {
  const type = rng.chance(0.9) ? rng.pick([CMD.READ, CMD.WRITE, CMD.WRITE, CMD.FLUSH, CMD.TRIM, CMD.WRITE_ZEROES])
    : rng.pick([CMD.CACHE, CMD.BLOCK_STATUS, CMD.DISC, 8 + rng.int(0xfff8)]);
  const flags = rng.chance(0.8) ? (rng.chance(0.3) ? 1 : 0) | (type === CMD.WRITE_ZEROES && rng.chance(0.3) ? 2 : 0) : rng.int(0x10000);
  let length = type === CMD.FLUSH ? 0 : rng.chance(0.8) ? 1 + rng.int(8192) : rng.pick([0, 4096, 65536, size, size + 1]);
  let offset = rng.chance(0.7) ? rng.int(size) : rng.pick([0, size - length, size - length + 1, size, 2 ** 40, 2 ** 53]);
  if (offset < 0) offset = 0;
  if (type === CMD.FLUSH && rng.chance(0.8)) offset = 0;
  if (type === CMD.WRITE && length > 65536) length = 65536; // keep the streams small
  length = Math.min(length, maxLen);
  const hdr = Buffer.concat([u32(MAGIC.REQUEST), u16(flags), u16(type), u64(cookie), u64(BigInt(offset)), u32(length)]);
  return type === CMD.WRITE ? Buffer.concat([hdr, rng.bytes(length)]) : hdr;
}

/** A plausible session: client flags, a few options, GO or EXPORT_NAME, then requests. */
function session(rng: Rng, size: number, maxLen: number): Buffer {
  const parts: Buffer[] = [u32(rng.chance(0.9) ? 3 : rng.pick([0, 1, 2]))];
  for (let i = rng.int(4); i > 0; i--) {
    parts.push(rng.pick([
      () => option(OPT.LIST),
      () => option(OPT.INFO, goData(rng.chance(0.5) ? EXPORT : 'nope', [0, 1, 3])),
      () => option(OPT.STRUCTURED_REPLY),
      () => option(OPT.STARTTLS),
      () => option(OPT.GO, goData('missing')),
      () => option(rng.int(64), rng.bytes(rng.int(32))),
    ])());
  }
  const name = rng.chance(0.8) ? EXPORT : '';
  parts.push(rng.chance(0.85) ? option(OPT.GO, goData(name, rng.chance(0.5) ? [3] : [])) : option(OPT.EXPORT_NAME, Buffer.from(name)));
  for (let i = rng.int(24), cookie = 1; i > 0; i--, cookie++) parts.push(request(rng, cookie, size, maxLen));
  if (rng.chance(0.3)) parts.push(Buffer.concat([u32(MAGIC.REQUEST), u16(0), u16(CMD.DISC), u64(0), u64(0), u32(0)]));
  return Buffer.concat(parts);
}

function mutate(rng: Rng, input: Buffer): Buffer {
  let b = Buffer.from(input);
  for (let n = 1 + rng.int(4); n > 0; n--) {
    const at = rng.int(b.length + 1);
    switch (rng.int(7)) {
      case 0: // flip a bit
        if (b.length > 0) b[at % b.length] = (b[at % b.length] as number) ^ (1 << rng.int(8));
        break;
      case 1: // an interesting 32-bit value over a field
        if (b.length >= 4) b.writeUInt32BE(rng.pick(INTERESTING_32) >>> 0, Math.min(at, b.length - 4));
        break;
      case 2: // insert random bytes
        b = Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.int(16)), b.subarray(at)]);
        break;
      case 3: // delete a range
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(32)))]);
        break;
      case 4: { // duplicate a range
        const len = 1 + rng.int(64);
        b = Buffer.concat([b.subarray(0, at + len), b.subarray(at, at + len), b.subarray(at + len)]);
        break;
      }
      case 5: // truncate
        b = b.subarray(0, at);
        break;
      case 6: // a random byte
        if (b.length > 0) b[at % b.length] = rng.int(256);
        break;
    }
  }
  return b;
}

/**
 * One stream. maxLen caps request lengths (TRIM and WRITE_ZEROES of the whole export
 * included otherwise).
 */
function stream(rng: Rng, size = SIZE, maxLen = Infinity): { kind: string; bytes: Buffer } {
  const r = rng.int(10);
  if (r === 0) return { kind: 'random', bytes: rng.bytes(rng.int(512)) };
  if (r === 1) {
    // Past the handshake quickly, then noise: the request decoder's turn.
    const hs = Buffer.concat([u32(3), option(OPT.GO, goData(EXPORT))]);
    return { kind: 'handshake+random', bytes: Buffer.concat([hs, rng.bytes(rng.int(1024))]) };
  }
  if (r <= 3) return { kind: 'session', bytes: session(rng, size, maxLen) };
  return { kind: 'mutated session', bytes: mutate(rng, session(rng, size, maxLen)) };
}

/** Random cut points: whole, byte by byte, or random chunks. */
function chunks(rng: Rng, b: Buffer): Buffer[] {
  const mode = rng.int(4);
  if (mode === 0 || b.length === 0) return [b];
  const out: Buffer[] = [];
  for (let i = 0; i < b.length;) {
    const n = mode === 1 && b.length < 400 ? 1 : 1 + rng.int(mode === 2 ? 64 : 4096);
    out.push(b.subarray(i, i + n));
    i += n;
  }
  return out;
}

// ---------------------------------------------------------------- the spec's reading of a stream

interface RefRequest {
  type: number;
  flags: number;
  cookie: bigint;
  offset: number;
  length: number;
  payload?: Buffer;
}

interface Reading {
  /** Requests after a successful handshake, in order (DISC ends the list). */
  requests: RefRequest[];
  end: string;
  /** How transmission was entered, if it was. */
  via?: 'go' | 'export_name';
  noZeroes: boolean;
}

interface ExportShape {
  size: number;
  readOnly: boolean;
  canTrim: boolean;
  canZero: boolean;
}

/** What a server following proto.md makes of the stream (the options it must accept, where transmission starts). */
function readStream(b: Buffer): Reading {
  let pos = 0;
  const out: Reading = { requests: [], end: '', noZeroes: false };
  const requests = out.requests;
  const stop = (end: string): Reading => {
    out.end = end;
    return out;
  };
  const take = (n: number): Buffer | null => {
    if (pos + n > b.length) return null;
    const chunk = b.subarray(pos, pos + n);
    pos += n;
    return chunk;
  };
  const flags = take(4);
  if (!flags) return stop('eof in client flags');
  if ((flags.readUInt32BE(0) & ~3) !== 0) return stop('unknown client flags');
  out.noZeroes = (flags.readUInt32BE(0) & 2) !== 0;
  for (;;) {
    const h = take(16);
    if (!h) return stop('eof in options');
    if (!h.subarray(0, 8).equals(MAGIC.IHAVEOPT)) return stop('bad option magic');
    const opt = h.readUInt32BE(8);
    const len = h.readUInt32BE(12);
    if (len > MAX_OPTION) return stop('oversized option');
    const data = take(len);
    if (!data) return stop('eof in option data');
    if (opt === OPT.ABORT) return stop('abort');
    if (opt === OPT.EXPORT_NAME) {
      if (!known(data.toString('utf8'))) return stop('unknown export');
      out.via = 'export_name';
      break;
    }
    if (opt === OPT.GO) {
      const name = goName(data);
      if (name !== null && known(name)) {
        out.via = 'go';
        break;
      }
    }
  }
  for (;;) {
    const h = take(28);
    if (!h) return stop('eof in transmission');
    if (h.readUInt32BE(0) !== MAGIC.REQUEST) return stop('bad request magic');
    const r: RefRequest = {
      flags: h.readUInt16BE(4), type: h.readUInt16BE(6), cookie: h.readBigUInt64BE(8),
      offset: Number(h.readBigUInt64BE(16)), length: h.readUInt32BE(24),
    };
    if (r.type === CMD.WRITE) {
      if (r.length > MAX_PAYLOAD) return stop('oversized write');
      const p = take(r.length);
      if (!p) return stop('eof in write payload');
      r.payload = p;
    }
    if (r.type === CMD.DISC) return stop('disc');
    requests.push(r);
  }
}

/**
 * The requests that the server's byte stream (as a client receives it) acknowledged with
 * error 0. Stops where the stream can no longer be followed (a cookie used twice for a READ).
 */
function acknowledged(out: Buffer, reading: Reading): Set<RefRequest> {
  const acked = new Set<RefRequest>();
  const byCookie = new Map<bigint, RefRequest[]>();
  for (const r of reading.requests) byCookie.set(r.cookie, [...(byCookie.get(r.cookie) ?? []), r]);
  let pos = 18; // the greeting
  let transmission = false;
  while (!transmission) {
    if (pos + 20 <= out.length && out.subarray(pos, pos + 8).equals(MAGIC.OPTION_REPLY)) {
      const opt = out.readUInt32BE(pos + 8);
      const type = out.readUInt32BE(pos + 12);
      pos += 20 + out.readUInt32BE(pos + 16);
      if (opt === OPT.GO && type === 1) transmission = true;
    } else if (reading.via === 'export_name' && pos < out.length) {
      pos += 10 + (reading.noZeroes ? 0 : 124);
      transmission = true;
    } else {
      return acked;
    }
  }
  while (pos + 16 <= out.length) {
    if (out.readUInt32BE(pos) !== MAGIC.SIMPLE_REPLY) return acked;
    const error = out.readUInt32BE(pos + 4);
    const rs = byCookie.get(out.readBigUInt64BE(pos + 8)) ?? [];
    pos += 16;
    const r = rs[0];
    if (rs.length !== 1 || r === undefined) {
      if (rs.some((q) => q.type === CMD.READ)) return acked;
      continue;
    }
    if (error === 0) {
      acked.add(r);
      if (r.type === CMD.READ) pos += r.length;
    }
  }
  return acked;
}

function known(name: string): boolean {
  return name === EXPORT || name === '';
}

/** The export name of NBD_OPT_GO data, or null when its lengths do not add up (proto.md). */
function goName(d: Buffer): string | null {
  if (d.length < 6) return null;
  const n = d.readUInt32BE(0);
  if (n > d.length - 6) return null;
  const count = d.readUInt16BE(4 + n);
  if (d.length !== 6 + n + count * 2) return null;
  return d.toString('utf8', 4, 4 + n);
}

const MUTATING = new Set([CMD.WRITE, CMD.TRIM, CMD.WRITE_ZEROES]);

/** A request that may change the store: right type for the export, inside it. */
function mayChange(r: RefRequest, e: ExportShape): boolean {
  if (!MUTATING.has(r.type) || e.readOnly) return false;
  if (r.type === CMD.TRIM && !e.canTrim) return false;
  if (r.type === CMD.WRITE_ZEROES && !e.canZero) return false;
  return r.offset + r.length <= e.size;
}

// ---------------------------------------------------------------- in-process target

interface StoreCall {
  op: 'read' | 'write' | 'trim' | 'zero' | 'flush';
  offset: number;
  length: number;
  data?: Buffer;
}

/** An in-memory store that records every call and finds fault with out-of-range ones. */
class RecordingStore implements Store {
  readonly disk: Buffer;
  readonly calls: StoreCall[] = [];
  readonly violations: string[] = [];
  constructor(readonly size: number, readonly readOnly: boolean, readonly canTrim: boolean, readonly canZero: boolean) {
    this.disk = Buffer.alloc(size);
  }

  private check(op: string, offset: number, length: number): boolean {
    if (!Number.isInteger(offset) || offset < 0 || length < 0 || offset + length > this.size) {
      this.violations.push(`${op} ${offset}+${length} outside the ${this.size}-byte store`);
      return false;
    }
    return true;
  }

  read(target: Buffer, targetOffset: number, length: number, offset: number, done: Done): void {
    if (this.check('read', offset, length)) {
      this.disk.copy(target, targetOffset, offset, offset + length);
      this.calls.push({ op: 'read', offset, length, data: Buffer.from(this.disk.subarray(offset, offset + length)) });
    }
    setImmediate(done, null);
  }

  write(chunks: Buffer[], offset: number, _fua: boolean, done: Done): void {
    const data = Buffer.concat(chunks);
    if (this.readOnly) this.violations.push('write to a read-only store');
    else if (this.check('write', offset, data.length)) {
      data.copy(this.disk, offset);
      this.calls.push({ op: 'write', offset, length: data.length, data });
    }
    setImmediate(done, null);
  }

  flush(done: Done): void {
    this.calls.push({ op: 'flush', offset: 0, length: 0 });
    setImmediate(done, null);
  }

  trim(offset: number, length: number, _fua: boolean, done: Done): void {
    if (!this.canTrim || this.readOnly) this.violations.push('trim on a store that cannot');
    else if (this.check('trim', offset, length)) {
      this.disk.fill(0, offset, offset + length);
      this.calls.push({ op: 'trim', offset, length });
    }
    setImmediate(done, null);
  }

  writeZeroes(offset: number, length: number, _noHole: boolean, _fua: boolean, done: Done): void {
    if (!this.canZero || this.readOnly) this.violations.push('write zeroes on a store that cannot');
    else if (this.check('zero', offset, length)) {
      this.disk.fill(0, offset, offset + length);
      this.calls.push({ op: 'zero', offset, length });
    }
    setImmediate(done, null);
  }

  close(): Promise<void> {
    return Promise.resolve();
  }
}

/** The server's end of an in-memory connection: what it writes is collected, chunk by chunk. */
class MemorySocket extends Duplex {
  readonly out: Buffer[] = [];
  constructor() {
    super({ allowHalfOpen: true });
  }

  override _read(): void {
    // bytes are pushed by the test
  }

  override _write(chunk: Buffer, _enc: BufferEncoding, cb: (err?: Error | null) => void): void {
    this.out.push(Buffer.from(chunk));
    cb();
  }
}

const OP_OF: Record<number, StoreCall['op']> = { [CMD.WRITE]: 'write', [CMD.TRIM]: 'trim', [CMD.WRITE_ZEROES]: 'zero' };

interface Outcome {
  closed: boolean;
  crash?: string;
}

async function runInProcess(rng: Rng, bytes: Buffer, shape: ExportShape): Promise<{ store: RecordingStore; sock: MemorySocket; outcome: Outcome }> {
  const store = new RecordingStore(shape.size, shape.readOnly, shape.canTrim, shape.canZero);
  const sock = new MemorySocket();
  const exp = { name: EXPORT, store };
  const conn = new ServerConnection(sock, {
    lookup: (n) => (known(n) ? exp : undefined), list: () => [exp], log: silentLogger,
    settings: serverSettings({ maxInFlight: 1 + rng.int(8) }),
  });
  const outcome: Outcome = { closed: false };
  void conn.closed.then(() => { outcome.closed = true; });
  try {
    for (const c of chunks(rng, bytes)) {
      if (sock.destroyed) break;
      sock.push(c);
      if (rng.chance(0.2)) await new Promise((r) => setImmediate(r));
    }
    if (!sock.destroyed) sock.push(null);
  } catch (err) {
    outcome.crash = (err as Error).stack ?? String(err);
  }
  const until = Date.now() + CLOSE_BOUND_MS;
  while (!outcome.closed && Date.now() < until) await new Promise((r) => setTimeout(r, 1));
  return { store, sock, outcome };
}

interface Reply {
  error: number;
  cookie: bigint;
  payload?: Buffer;
}

/**
 * The simple replies among the server's writes. Each write is one message (greeting, option
 * reply, export-name reply or a successful READ's reply with its data in the same buffer),
 * or replies without data, 16 bytes each, that the server gathered in one turn. A write is
 * taken for a READ's reply when it begins with a success for a cookie some READ used.
 */
function replies(out: Buffer[], readCookies: Set<bigint>): Reply[] {
  const rs: Reply[] = [];
  for (const m of out) {
    if (m.length < 16 || m.readUInt32BE(0) !== MAGIC.SIMPLE_REPLY) continue;
    if (m.readUInt32BE(4) === 0 && readCookies.has(m.readBigUInt64BE(8))) {
      rs.push({ error: 0, cookie: m.readBigUInt64BE(8), payload: m.length > 16 ? m.subarray(16) : undefined });
      continue;
    }
    let at = 0;
    for (; at + 16 <= m.length && m.readUInt32BE(at) === MAGIC.SIMPLE_REPLY; at += 16) {
      rs.push({ error: m.readUInt32BE(at + 4), cookie: m.readBigUInt64BE(at + 8) });
    }
    // Anything else in the write is bytes after a reply without data.
    if (at < m.length) (rs[rs.length - 1] as Reply).payload = m.subarray(at);
  }
  return rs;
}

/** Checks one in-process run against the spec's reading of its stream; returns what is wrong. */
function verdict(bytes: Buffer, shape: ExportShape, store: RecordingStore, sock: MemorySocket, outcome: Outcome): string[] {
  const bad: string[] = [];
  if (outcome.crash) bad.push(`the connection threw: ${outcome.crash}`);
  if (!outcome.closed) bad.push(`the connection was still open ${CLOSE_BOUND_MS} ms after the stream ended`);
  bad.push(...store.violations);
  const { requests } = readStream(bytes);
  // Every change is the next changing request of the stream, or a later one (the server may
  // refuse some, or stop reading), with the same range and, for a write, the same bytes.
  const changes = store.calls.filter((c) => c.op !== 'read' && c.op !== 'flush');
  let i = 0;
  for (const c of changes) {
    let found = false;
    while (i < requests.length && !found) {
      const r = requests[i++] as RefRequest & { applied?: boolean };
      if (mayChange(r, shape) && OP_OF[r.type] === c.op && r.offset === c.offset && r.length === c.length
        && (c.op !== 'write' || (r.payload as Buffer).equals(c.data as Buffer))) {
        r.applied = true;
        found = true;
      }
    }
    if (!found) {
      bad.push(`the store saw ${c.op} ${c.offset}+${c.length}, which no valid request of the stream asked for (in that order)`);
      return bad;
    }
  }
  // Replies answer the stream's requests; a successful one to a change means it was made,
  // and a READ's data is what the store held.
  const byCookie = new Map<bigint, RefRequest[]>();
  for (const r of requests) byCookie.set(r.cookie, [...(byCookie.get(r.cookie) ?? []), r]);
  const reads = store.calls.filter((c) => c.op === 'read');
  const readCookies = new Set(requests.filter((r) => r.type === CMD.READ).map((r) => r.cookie));
  for (const rep of replies(sock.out, readCookies)) {
    const rs = byCookie.get(rep.cookie);
    if (!rs) {
      bad.push(`a reply for cookie ${rep.cookie}, which no request had`);
      continue;
    }
    if (rs.length !== 1) continue; // a cookie used twice: which reply is whose is not knowable
    const r = rs[0] as RefRequest & { applied?: boolean };
    if (rep.error === 0 && MUTATING.has(r.type) && !r.applied) bad.push(`${OP_OF[r.type]} ${r.offset}+${r.length} acknowledged but never done`);
    if (rep.error === 0 && MUTATING.has(r.type) && !mayChange(r, shape)) bad.push(`an invalid ${OP_OF[r.type]} ${r.offset}+${r.length} acknowledged`);
    if (r.type === CMD.READ && rep.error === 0) {
      const p = rep.payload ?? Buffer.alloc(0);
      if (p.length !== r.length) bad.push(`a READ of ${r.length} bytes answered with ${p.length}`);
      else if (r.length > 0 && !reads.some((c) => c.offset === r.offset && c.length === r.length && (c.data as Buffer).equals(p))) {
        bad.push(`a READ ${r.offset}+${r.length} answered with bytes the store did not hold`);
      }
    }
    if (rep.payload && r.type !== CMD.READ) bad.push(`a reply to a non-READ request carries ${rep.payload.length} bytes`);
  }
  return bad;
}

// ---------------------------------------------------------------- tests

describe(`server fuzzing (seed ${SEED}; FUZZ_SEED, FUZZ_ITERATIONS, FUZZ_SERVE_ITERATIONS)`, function () {
  this.timeout(Math.max(120_000, ITERATIONS * 50 + SERVE_ITERATIONS * 2000));

  it(`ServerConnection: ${ITERATIONS} random and mutated streams; no throw, no hang, no change outside a valid request`, async function () {
    const rng = new Rng(SEED);
    const kinds = new Map<string, number>();
    const ends = new Map<string, number>();
    let changes = 0;
    for (let it = 0; it < ITERATIONS; it++) {
      const seed = rng.u32();
      const r = new Rng(seed);
      const shape: ExportShape = r.chance(0.85)
        ? { size: SIZE, readOnly: false, canTrim: true, canZero: true }
        : { size: SIZE, readOnly: r.chance(0.5), canTrim: r.chance(0.5), canZero: r.chance(0.5) };
      const { kind, bytes } = stream(r);
      kinds.set(kind, (kinds.get(kind) ?? 0) + 1);
      const end = readStream(bytes).end;
      ends.set(end, (ends.get(end) ?? 0) + 1);
      const { store, sock, outcome } = await runInProcess(r, bytes, shape);
      changes += store.calls.filter((c) => c.op !== 'read' && c.op !== 'flush').length;
      const bad = verdict(bytes, shape, store, sock, outcome);
      if (bad.length > 0) {
        assert.fail(`iteration ${it} (stream seed ${seed}, ${kind}, ${bytes.length} bytes: ${bytes.subarray(0, 96).toString('hex')}...):\n  ${bad.join('\n  ')}`);
      }
    }
    // The generator must reach every part of the decoder, or the run proves little.
    assert.ok((ends.get('eof in transmission') ?? 0) + (ends.get('disc') ?? 0) > ITERATIONS / 5, `too few streams reach transmission: ${JSON.stringify([...ends])}`);
    assert.ok(changes > ITERATIONS, `only ${changes} changes made in ${ITERATIONS} streams`);
    for (const e of ['bad request magic', 'bad option magic', 'unknown client flags']) {
      if (ITERATIONS >= 200) assert.ok((ends.get(e) ?? 0) > 0, `no stream ended with "${e}"`);
    }
  });

  describe('`serve` over TCP', function () {
    const cleanup = cleanupAfterAll();
    let srv: Served;
    let image = '';
    let initial = Buffer.alloc(0);
    // Room for the streams' writes to land mostly apart, so that most bytes can be checked exactly.
    const serveSize = Math.min(64 * 1024 * 1024, Math.max(SIZE, SERVE_ITERATIONS * 64 * 1024));

    before(async function () {
      const dir = tempDir(cleanup);
      image = makeImage(dir, 'fuzz.img', serveSize, 'random');
      initial = fs.readFileSync(image);
      srv = await serveImage(cleanup, image, { name: EXPORT });
    });

    it(`${SERVE_ITERATIONS} streams: serve stays up, every connection ends, the image changes only where valid requests wrote`, async function () {
      const rng = new Rng(SEED ^ 0x5e5e5e5e);
      const writes: RefRequest[] = [];
      const acked = new Set<RefRequest>();
      const shape: ExportShape = { size: serveSize, readOnly: false, canTrim: true, canZero: true };
      for (let it = 0; it < SERVE_ITERATIONS; it++) {
        const seed = rng.u32();
        const r = new Rng(seed);
        // Requests of at most 64 KiB: a single whole-export TRIM would leave no byte that only
        // one request touched, and nothing to check exactly.
        const { kind, bytes } = stream(r, serveSize, 65536);
        const reading = readStream(bytes);
        writes.push(...reading.requests.filter((q) => mayChange(q, shape)));
        const { closed, out } = await sendAndWait(srv.port, chunks(r, bytes));
        for (const q of acknowledged(out, reading)) acked.add(q);
        assert.ok(closed, `iteration ${it} (stream seed ${seed}, ${kind}): the connection was still open ${CLOSE_BOUND_MS} ms after the stream ended`);
        assert.strictEqual(srv.child.done, false, `serve died at iteration ${it} (stream seed ${seed}):\n${srv.child.stderr()}`);
      }
      // Requests of one connection may still be running when the next starts (a malformed
      // stream closes the connection at once), and the server may refuse a request (flags it
      // does not know, for one), so the image is checked loosely: a byte may only change
      // under some valid request, and the bytes that lie under exactly one request hold
      // either all of what it put there or all of what was there before.
      await new Promise((res) => setTimeout(res, 500));
      const now = fs.readFileSync(image);
      const cover = new Uint8Array(serveSize); // how many requests cover each byte (2 means "more than one")
      for (const w of writes) for (let i = w.offset; i < w.offset + w.length; i++) cover[i] = Math.min(2, (cover[i] as number) + 1);
      for (let i = 0; i < serveSize; i++) {
        if (cover[i] === 0 && now[i] !== initial[i]) assert.fail(`byte ${i} changed, but no valid request covers it`);
      }
      let checked = 0;
      for (const w of writes) {
        let done = 0;
        let untouched = 0;
        let alone = 0;
        for (let i = w.offset; i < w.offset + w.length; i++) {
          if (cover[i] !== 1) continue;
          alone++;
          const want = w.type === CMD.WRITE ? (w.payload as Buffer)[i - w.offset] : 0;
          if (now[i] === want) done++;
          if (now[i] === initial[i]) untouched++;
        }
        if (alone > 0 && done !== alone && untouched !== alone) {
          assert.fail(`${OP_OF[w.type]} ${w.offset}+${w.length} (flags 0x${w.flags.toString(16)}) is torn: of its ${alone} bytes no other request touched, `
            + `${done} hold its data and ${untouched} the old data`);
        }
        if (alone > 0 && acked.has(w) && done !== alone) {
          assert.fail(`${OP_OF[w.type]} ${w.offset}+${w.length} was acknowledged, but ${alone - done} of its bytes do not hold its data`);
        }
        if (alone > 0 && done === alone) checked++;
      }
      assert.ok(checked > 0, 'no byte was written by exactly one request: the run proves little');
      assert.ok([...acked].some((q) => MUTATING.has(q.type)), 'no change was acknowledged: the replies were not followed');
    });
  });
});

/**
 * Sends the chunks on a new connection and half-closes; resolves once the server has closed
 * (closed: true) or after the bound (false), with everything the server sent.
 */
function sendAndWait(port: number, parts: Buffer[]): Promise<{ closed: boolean; out: Buffer }> {
  return new Promise((resolve) => {
    const s = net.connect({ host: HOST, port, noDelay: true });
    const got: Buffer[] = [];
    let done = false;
    const finish = (closed: boolean): void => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      s.destroy();
      resolve({ closed, out: Buffer.concat(got) });
    };
    const timer = setTimeout(() => finish(false), CLOSE_BOUND_MS + 5000);
    s.on('error', () => undefined);
    s.on('data', (b: Buffer) => got.push(b));
    s.on('close', () => finish(true));
    s.once('connect', () => {
      for (const p of parts) s.write(p);
      s.end();
    });
  });
}
