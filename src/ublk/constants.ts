// ublk uAPI constants (Linux include/uapi/linux/ublk_cmd.h), in one place. Values
// are ABI; names follow the header so they can be grepped for there.

/** Control command numbers (the legacy opcode is the bare number). */
export const UblkCmd = {
  GET_QUEUE_AFFINITY: 0x01,
  GET_DEV_INFO: 0x02,
  ADD_DEV: 0x04,
  DEL_DEV: 0x05,
  START_DEV: 0x06,
  STOP_DEV: 0x07,
  SET_PARAMS: 0x08,
  GET_PARAMS: 0x09,
  START_USER_RECOVERY: 0x10,
  END_USER_RECOVERY: 0x11,
  GET_DEV_INFO2: 0x12,
  // The rest exist only ioctl-encoded (Linux >= 6.5, 6.9, 6.16).
  GET_FEATURES: 0x13,
  DEL_DEV_ASYNC: 0x14,
  UPDATE_SIZE: 0x15,
  QUIESCE_DEV: 0x16,
} as const;
export type UblkCmdName = keyof typeof UblkCmd;

/** I/O command numbers on /dev/ublkcN. */
export const UblkIoCmd = {
  FETCH_REQ: 0x20,
  COMMIT_AND_FETCH_REQ: 0x21,
  NEED_GET_DATA: 0x22,
} as const;

/** sizeof(struct ublksrv_ctrl_cmd) and sizeof(struct ublksrv_io_cmd). */
export const CTRL_CMD_SIZE = 32;
export const IO_CMD_SIZE = 16;

const IOC_WRITE = 1;
const IOC_READ = 2;
const IOC_TYPE_UBLK = 0x75; // 'u'

/** The generic Linux ioctl number layout: dir bits 30-31, size 16-29, type 8-15, nr 0-7. */
export function ioc(dir: number, type: number, nr: number, size: number): number {
  return ((dir << 30) | (size << 16) | (type << 8) | nr) >>> 0;
}

// Direction as declared in ublk_cmd.h (_IOR for queries, _IOWR otherwise). The driver
// dispatches on the number and checks only the type, but the values must match.
const CTRL_DIR: Record<UblkCmdName, number> = {
  GET_QUEUE_AFFINITY: IOC_READ,
  GET_DEV_INFO: IOC_READ,
  ADD_DEV: IOC_READ | IOC_WRITE,
  DEL_DEV: IOC_READ | IOC_WRITE,
  START_DEV: IOC_READ | IOC_WRITE,
  STOP_DEV: IOC_READ | IOC_WRITE,
  SET_PARAMS: IOC_READ | IOC_WRITE,
  GET_PARAMS: IOC_READ,
  START_USER_RECOVERY: IOC_READ | IOC_WRITE,
  END_USER_RECOVERY: IOC_READ | IOC_WRITE,
  GET_DEV_INFO2: IOC_READ,
  GET_FEATURES: IOC_READ,
  DEL_DEV_ASYNC: IOC_READ,
  UPDATE_SIZE: IOC_READ | IOC_WRITE,
  QUIESCE_DEV: IOC_READ | IOC_WRITE,
};

/** UBLK_U_CMD_<name>: the ioctl-encoded control opcode. */
export function ctrlOpEncoded(name: UblkCmdName): number {
  return ioc(CTRL_DIR[name], IOC_TYPE_UBLK, UblkCmd[name], CTRL_CMD_SIZE);
}

/** Commands that have no legacy opcode. */
export const ENCODED_ONLY: ReadonlySet<UblkCmdName> = new Set<UblkCmdName>([
  'GET_FEATURES',
  'DEL_DEV_ASYNC',
  'UPDATE_SIZE',
  'QUIESCE_DEV',
]);

/** The opcode for a control command, ioctl-encoded or legacy. */
export function ctrlOp(name: UblkCmdName, ioctlEncode: boolean): number {
  return ioctlEncode || ENCODED_ONLY.has(name) ? ctrlOpEncoded(name) : UblkCmd[name];
}

/** UBLK_U_IO_<name>. */
export function ioOpEncoded(name: keyof typeof UblkIoCmd): number {
  return ioc(IOC_READ | IOC_WRITE, IOC_TYPE_UBLK, UblkIoCmd[name], IO_CMD_SIZE);
}

/** UBLK_F_* device feature flags (ublksrv_ctrl_dev_info.flags, GET_FEATURES). */
export const UblkFlag = {
  SUPPORT_ZERO_COPY: 1n << 0n,
  URING_CMD_COMP_IN_TASK: 1n << 1n,
  NEED_GET_DATA: 1n << 2n,
  USER_RECOVERY: 1n << 3n,
  USER_RECOVERY_REISSUE: 1n << 4n,
  UNPRIVILEGED_DEV: 1n << 5n,
  CMD_IOCTL_ENCODE: 1n << 6n,
  USER_COPY: 1n << 7n,
  ZONED: 1n << 8n,
  USER_RECOVERY_FAIL_IO: 1n << 9n,
  UPDATE_SIZE: 1n << 10n,
  AUTO_BUF_REG: 1n << 11n,
  QUIESCE: 1n << 12n,
  PER_IO_DAEMON: 1n << 13n,
  BUF_REG_OFF_DAEMON: 1n << 14n,
  BATCH_IO: 1n << 15n,
  INTEGRITY: 1n << 16n,
  SAFE_STOP_DEV: 1n << 17n,
  NO_AUTO_PART_SCAN: 1n << 18n,
  SHMEM_ZC: 1n << 19n,
  IO_DESC_SIZE: 1n << 20n,
} as const;
export type UblkFlagName = keyof typeof UblkFlag;

/** Names of the flags set in a mask, lowest bit first; unknown bits as 'bit<N>'. */
export function flagNames(mask: bigint): string[] {
  const names: string[] = [];
  for (let bit = 0n; bit < 64n; bit++) {
    const v = 1n << bit;
    if ((mask & v) === 0n) continue;
    const name = (Object.keys(UblkFlag) as UblkFlagName[]).find((k) => UblkFlag[k] === v);
    names.push(name ?? `bit${bit}`);
  }
  return names;
}

/** A UBLK_F_* mask as logs, records and `list --json` show it. */
export interface FlagSet {
  /** The mask in hex, e.g. "0x1fffff". */
  mask: string;
  names: string[];
}

export function flagSet(mask: bigint): FlagSet {
  return { mask: `0x${mask.toString(16)}`, names: flagNames(mask) };
}

/** Device states (ublksrv_ctrl_dev_info.state). */
export const UblkState = {
  DEAD: 0,
  LIVE: 1,
  QUIESCED: 2,
  FAIL_IO: 3,
} as const;

/** Request operations: bits 0-7 of ublksrv_io_desc.op_flags. */
export const UblkIoOp = {
  READ: 0,
  WRITE: 1,
  FLUSH: 2,
  DISCARD: 3,
  WRITE_SAME: 4,
  WRITE_ZEROES: 5,
  ZONE_OPEN: 10,
  ZONE_CLOSE: 11,
  ZONE_FINISH: 12,
  ZONE_APPEND: 13,
  ZONE_RESET_ALL: 14,
  ZONE_RESET: 15,
  REPORT_ZONES: 18,
} as const;

/** Request flags: bits 8-31 of ublksrv_io_desc.op_flags, at their position there. */
export const UblkIoFlag = {
  FAILFAST_DEV: 1 << 8,
  FAILFAST_TRANSPORT: 1 << 9,
  FAILFAST_DRIVER: 1 << 10,
  META: 1 << 11,
  FUA: 1 << 13,
  NOUNMAP: 1 << 15,
  SWAP: 1 << 16,
  NEED_REG_BUF: 1 << 17,
  INTEGRITY: 1 << 18,
  SHMEM_ZC: 1 << 19,
} as const;

/** Results of FETCH/COMMIT completions. Only ABORT means: do not fetch again. */
export const UBLK_IO_RES_OK = 0;
export const UBLK_IO_RES_NEED_GET_DATA = 1;
export const UBLK_IO_RES_ABORT = -19; // -ENODEV

/** ublk_param_basic.attrs. */
export const UblkAttr = {
  READ_ONLY: 1 << 0,
  ROTATIONAL: 1 << 1,
  VOLATILE_CACHE: 1 << 2,
  FUA: 1 << 3,
} as const;

/** ublk_params.types. */
export const UblkParamType = {
  BASIC: 1 << 0,
  DISCARD: 1 << 1,
  DEVT: 1 << 2,
  ZONED: 1 << 3,
  DMA_ALIGN: 1 << 4,
  SEGMENT: 1 << 5,
  INTEGRITY: 1 << 6,
} as const;

/** Limits. */
export const UBLK_MAX_QUEUE_DEPTH = 4096;
export const UBLK_MAX_NR_QUEUES = 4096;
/** A request's buffer is addressed with 25 bits in the user-copy offset: 32 MiB. */
export const UBLK_MAX_IO_BUF_BYTES = 32 << 20;
/** Device ids are minors: 1 << MINORBITS. */
export const UBLK_MAX_UBLKS = 1 << 20;
/** dev_id for ADD_DEV asking the kernel to pick one. */
export const UBLK_DEV_ID_AUTO = 0xffffffff;
/** queue_id of commands that are not about one queue (ADD_DEV insists on it). */
export const UBLK_QUEUE_ID_NONE = 0xffff;
/** GET_FEATURES buffer length: exactly 8. */
export const UBLK_FEATURES_LEN = 8;
/** sizeof(struct ublksrv_io_desc). */
export const IO_DESC_SIZE = 24;
/** Sector size of every sector count in the uAPI, whatever the logical block size. */
export const SECTOR_SHIFT = 9;

/** Device node paths. */
export const UBLK_CONTROL_PATH = '/dev/ublk-control';
export const charDevPath = (devId: number): string => `/dev/ublkc${devId}`;
export const blockDevPath = (devId: number): string => `/dev/ublkb${devId}`;
