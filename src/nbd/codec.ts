// NBD framing: pure encoders and decoders shared by the server and the client.
// No I/O here; callers own sockets and buffering (see byte-queue.ts).

import * as C from './constants';

const TWO_32 = 4294967296;

/** Reads a u64 as a JS number. Values above 2^53 lose precision but stay above any real size. */
export function readU64(buf: Buffer, off: number): number {
  return buf.readUInt32BE(off) * TWO_32 + buf.readUInt32BE(off + 4);
}

export function writeU64(buf: Buffer, value: number, off: number): void {
  buf.writeUInt32BE(Math.floor(value / TWO_32) >>> 0, off);
  buf.writeUInt32BE(value >>> 0, off + 4);
}

// ---- handshake, server side ----

export const GREETING_BYTES = 18;

export function encodeGreeting(handshakeFlags: number): Buffer {
  const b = Buffer.allocUnsafe(GREETING_BYTES);
  b.writeBigUInt64BE(C.NBDMAGIC, 0);
  b.writeBigUInt64BE(C.IHAVEOPT, 8);
  b.writeUInt16BE(handshakeFlags, 16);
  return b;
}

export const OPTION_HEADER_BYTES = 16;

export interface OptionHeader {
  magic: bigint;
  option: number;
  length: number;
}

export function decodeOptionHeader(b: Buffer): OptionHeader {
  return { magic: b.readBigUInt64BE(0), option: b.readUInt32BE(8), length: b.readUInt32BE(12) };
}

export const OPTION_REPLY_HEADER_BYTES = 20;

export function encodeOptionReply(option: number, type: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + len);
  b.writeBigUInt64BE(C.OPTION_REPLY_MAGIC, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(type >>> 0, 12);
  b.writeUInt32BE(len, 16);
  if (data) data.copy(b, OPTION_REPLY_HEADER_BYTES);
  return b;
}

export function encodeInfoExport(size: number, transmissionFlags: number): Buffer {
  const b = Buffer.allocUnsafe(12);
  b.writeUInt16BE(C.INFO_EXPORT, 0);
  writeU64(b, size, 2);
  b.writeUInt16BE(transmissionFlags, 10);
  return b;
}

export function encodeInfoName(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(2 + n.length);
  b.writeUInt16BE(C.INFO_NAME, 0);
  n.copy(b, 2);
  return b;
}

export function encodeInfoBlockSize(min: number, preferred: number, max: number): Buffer {
  const b = Buffer.allocUnsafe(14);
  b.writeUInt16BE(C.INFO_BLOCK_SIZE, 0);
  b.writeUInt32BE(min, 2);
  b.writeUInt32BE(preferred, 6);
  b.writeUInt32BE(max, 10);
  return b;
}

export function encodeRepServer(name: string): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  return b;
}

export function encodeExportNameReply(size: number, transmissionFlags: number, noZeroes: boolean): Buffer {
  const b = Buffer.alloc(10 + (noZeroes ? 0 : C.EXPORT_NAME_PADDING));
  writeU64(b, size, 0);
  b.writeUInt16BE(transmissionFlags, 8);
  return b;
}

export interface GoRequest {
  name: string;
  infoRequests: number[];
}

/** Parses the payload of NBD_OPT_GO / NBD_OPT_INFO; null when its lengths do not add up. */
export function decodeGoData(data: Buffer): GoRequest | null {
  if (data.length < 6) return null;
  const nameLen = data.readUInt32BE(0);
  if (nameLen > data.length - 6) return null;
  const name = data.toString('utf8', 4, 4 + nameLen);
  const count = data.readUInt16BE(4 + nameLen);
  if (data.length !== 6 + nameLen + count * 2) return null;
  const infoRequests: number[] = [];
  for (let i = 0; i < count; i++) infoRequests.push(data.readUInt16BE(6 + nameLen + i * 2));
  return { name, infoRequests };
}

// ---- handshake, client side ----

export interface Greeting {
  handshakeFlags: number;
}

/** Parses the server's 18-byte greeting; throws on anything but fixed newstyle. */
export function decodeGreeting(b: Buffer): Greeting {
  const magic = b.readBigUInt64BE(0);
  if (magic !== C.NBDMAGIC) throw new Error(`not an NBD server (magic 0x${magic.toString(16)})`);
  const opt = b.readBigUInt64BE(8);
  if (opt !== C.IHAVEOPT) {
    throw new Error('server speaks oldstyle NBD negotiation, which is not supported');
  }
  return { handshakeFlags: b.readUInt16BE(16) };
}

export function encodeClientFlags(flags: number): Buffer {
  const b = Buffer.allocUnsafe(4);
  b.writeUInt32BE(flags >>> 0, 0);
  return b;
}

export function encodeOption(option: number, data?: Buffer): Buffer {
  const len = data ? data.length : 0;
  const b = Buffer.allocUnsafe(OPTION_HEADER_BYTES + len);
  b.writeBigUInt64BE(C.IHAVEOPT, 0);
  b.writeUInt32BE(option, 8);
  b.writeUInt32BE(len, 12);
  if (data) data.copy(b, OPTION_HEADER_BYTES);
  return b;
}

export function encodeGoData(name: string, infoRequests: number[]): Buffer {
  const n = Buffer.from(name, 'utf8');
  const b = Buffer.allocUnsafe(4 + n.length + 2 + 2 * infoRequests.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infoRequests.length, 4 + n.length);
  infoRequests.forEach((r, i) => b.writeUInt16BE(r, 6 + n.length + 2 * i));
  return b;
}

export interface OptionReplyHeader {
  magic: bigint;
  option: number;
  type: number;
  length: number;
}

export function decodeOptionReplyHeader(b: Buffer): OptionReplyHeader {
  return {
    magic: b.readBigUInt64BE(0),
    option: b.readUInt32BE(8),
    type: b.readUInt32BE(12),
    length: b.readUInt32BE(16),
  };
}

// ---- transmission ----

export interface RequestHeader {
  magic: number;
  flags: number;
  type: number;
  /** The cookie is opaque: kept as two halves so the server can echo it without BigInt. */
  cookieHi: number;
  cookieLo: number;
  offset: number;
  length: number;
}

export function decodeRequestHeader(b: Buffer, off = 0): RequestHeader {
  return {
    magic: b.readUInt32BE(off),
    flags: b.readUInt16BE(off + 4),
    type: b.readUInt16BE(off + 6),
    cookieHi: b.readUInt32BE(off + 8),
    cookieLo: b.readUInt32BE(off + 12),
    offset: readU64(b, off + 16),
    length: b.readUInt32BE(off + 24),
  };
}

export function writeRequestHeader(
  b: Buffer, flags: number, type: number, cookieHi: number, cookieLo: number, offset: number, length: number,
): void {
  b.writeUInt32BE(C.REQUEST_MAGIC, 0);
  b.writeUInt16BE(flags, 4);
  b.writeUInt16BE(type, 6);
  b.writeUInt32BE(cookieHi >>> 0, 8);
  b.writeUInt32BE(cookieLo >>> 0, 12);
  writeU64(b, offset, 16);
  b.writeUInt32BE(length >>> 0, 24);
}

export function writeSimpleReplyHeader(b: Buffer, off: number, error: number, cookieHi: number, cookieLo: number): void {
  b.writeUInt32BE(C.SIMPLE_REPLY_MAGIC, off);
  b.writeUInt32BE(error >>> 0, off + 4);
  b.writeUInt32BE(cookieHi >>> 0, off + 8);
  b.writeUInt32BE(cookieLo >>> 0, off + 12);
}
