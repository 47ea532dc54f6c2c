// The data of one benchmark run, as written to results/*.json and read by the reports.
import type { Metric } from './cases';
import type { ClientKind, QueueSettings, UblkVariant } from './devices';
import type { Sample } from './fio';
import type { StoreKind } from './stores';
import type { DataTransport, ZeroCopyMode } from '../device/config';

export interface DeviceInfo {
  kind: ClientKind;
  /** What the report calls it: 'kernel nbd', 'netdisk-ublk', or with several of ours e.g. 'netdisk-ublk ring, zero copy'. */
  title: string;
  command: string;
  path: string;
  settings: QueueSettings;
  /** netdisk-ublk's data path as `list --json` shows it ('copy', 'zero copy'); absent for kernel nbd. */
  dataPath?: string;
  /** netdisk-ublk's transport and zero-copy setting (add --transport, --zero-copy). */
  transport?: DataTransport;
  zeroCopy?: ZeroCopyMode;
}

export interface StoreRun {
  store: StoreKind;
  command: string;
  /** By key ('ublk', or one per configuration of ours, e.g. 'ublk-ring'; 'nbd'), ours first. */
  devices: Record<string, DeviceInfo>;
  /** samples[caseId][device key] = one Sample per run, in run order. */
  samples: Record<string, Record<string, Sample[]>>;
}

export interface Environment {
  date: string;
  command: string;
  kernel: string;
  inVm: boolean;
  cpu: string;
  cpus: number;
  versions: Record<string, string>;
  /** 1-minute load average where the benchmark ran, at start and end. */
  load: { start: number[]; end: number[] };
  /** The machine that started the VM, when the benchmark ran in one. */
  host?: HostInfo;
}

export interface HostInfo {
  kernel: string;
  cpu: string;
  cpus: number;
  loadBefore: number[];
  loadAfter?: number[];
}

export interface BenchSettings {
  cases: string[];
  runs: number;
  warmupSeconds: number;
  seconds: number;
  rampSeconds: number;
  sizeBytes: number;
  /** As given to bench; undefined: `add`'s default (the devices' settings show the values). */
  queues?: number;
  depth?: number;
  maxIoBytes?: number;
  nbdConnections: number;
  nbdBlockSize: number;
  /** netdisk-ublk's connection used TLS (PSK); kernel nbd's did not. */
  tls?: 'psk';
  /** netdisk-ublk's configurations, each a device of its own (`add --transport`, `--zero-copy`; unset: add's default). */
  variants: UblkVariant[];
}

export interface BenchResults {
  env: Environment;
  settings: BenchSettings;
  stores: StoreRun[];
  /** The TypeScript part of the ublk path measured natively (CPU per request), when measured. */
  tsPath?: TsPathReport;
}

/** One workload of the TypeScript part of the ublk path, measured natively (bench/ts-path.ts). */
export interface TsPathResult {
  /** The case's title. */
  name: string;
  requests: number;
  seconds: number;
  iops: number;
  /** CPU time (user + system) of the measuring process per request, in microseconds: median slice. */
  cpuUsPerRequest: number;
  /** The same, least loaded slice. */
  minCpuUsPerRequest: number;
}

export interface TsPathReport {
  where: string;
  server: string;
  results: TsPathResult[];
}

export type { Metric };
