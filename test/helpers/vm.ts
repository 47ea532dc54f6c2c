// Runs commands under a real ublk/nbd-capable kernel from tests, through test/vm/run.sh.
// Tests that need /dev/ublk-control either run natively (ublkAvailable()) or re-run
// themselves inside the VM with runInVm().
import { spawn, spawnSync } from 'child_process';
import * as fs from 'fs';
import * as os from 'os';
import * as path from 'path';
import { packageRoot } from '../../src/native/load';
import { ublkAvailable } from '../../src/ublk/ctrl';

export interface VmOptions {
  /** Which kernel boots: '6.12', '7' (the newest of that line) or an exact version; run.sh's default (6.12) otherwise. */
  kernel?: string;
  /** Extra host directories shared read-write at their own paths (the repo always is). */
  shares?: string[];
  /** Seconds before the VM is killed; the result code is then 124. run.sh's default otherwise. */
  timeoutSec?: number;
  /** Working directory of the command inside the VM; the repository root by default. */
  cwd?: string;
  /** Guest memory in MB. */
  memMb?: number;
  /** Variables exported to the command (the guest does not inherit the host environment). */
  env?: Record<string, string>;
  /** Aborting kills the VM (e.g. from a test's teardown). */
  signal?: AbortSignal;
}

export interface VmResult {
  /** The command's exit code; 124 when the VM timed out, 125 when the harness failed. */
  code: number;
  stdout: string;
  stderr: string;
  /** The guest's kernel log, taken right after the command ended. */
  dmesg: string;
  /** The kernel that ran (the guest's uname -r); empty when the guest never ran the command. */
  kernel: string;
}

export const VM_TIMEOUT_CODE = 124;
export const VM_HARNESS_FAILURE_CODE = 125;

/** The repository checkout: the package the code under test comes from. */
export const repoRoot = packageRoot;

export function vmScript(): string {
  return path.join(repoRoot(), 'test', 'vm', 'run.sh');
}

/** True when this kernel has the ublk driver loaded, so device tests can run natively. */
export { ublkAvailable };

/** True inside the test VM (run.sh exports NETDISK_IN_VM=1); there is no nested VM. */
export function inVm(): boolean {
  return process.env.NETDISK_IN_VM === '1';
}

/**
 * Whether the VM can be started here (qemu, kernel, busybox present), without booting it.
 * Returns the reason when it cannot.
 */
export function vmCheck(kernel?: string): { ok: true; kernel: string } | { ok: false; reason: string } {
  if (inVm()) return { ok: false, reason: 'already inside the test VM' };
  const r = spawnSync(vmScript(), [...kernelArgs(kernel), '--check'], { encoding: 'utf8' });
  if (r.error) return { ok: false, reason: r.error.message };
  if (r.status !== 0) return { ok: false, reason: (r.stderr || r.stdout).trim() };
  const m = /kernel ([^\s)]+)/.exec(r.stdout);
  return { ok: true, kernel: m?.[1] ?? '' };
}

export function vmAvailable(): boolean {
  return vmCheck().ok;
}

function kernelArgs(kernel: string | undefined): string[] {
  return kernel === undefined ? [] : ['--kernel', kernel];
}

// run.sh's last stderr line names the kernel that ran.
const RAN_ON = /^netdisk-vm: ran on kernel (\S+)\n/m;

/**
 * Boots the VM, runs `command` with bash -c inside it and resolves with its exit code,
 * output and kernel log. Only one VM runs at a time on a machine; concurrent calls queue
 * on run.sh's lock. Never rejects for a failing command: look at `code`.
 */
export async function runInVm(command: string, opts: VmOptions = {}): Promise<VmResult> {
  const args: string[] = kernelArgs(opts.kernel);
  for (const s of opts.shares ?? []) args.push('--share', s);
  if (opts.timeoutSec !== undefined) args.push('--timeout', String(Math.max(1, Math.ceil(opts.timeoutSec))));
  if (opts.cwd !== undefined) args.push('--cwd', opts.cwd);
  if (opts.memMb !== undefined) args.push('--mem', String(opts.memMb));
  for (const [k, v] of Object.entries(opts.env ?? {})) args.push('--env', `${k}=${v}`);
  args.push('--', command);

  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'netdisk-vm-'));
  const dmesgFile = path.join(tmp, 'dmesg');
  try {
    const { code, stdout, stderr } = await new Promise<{ code: number; stdout: string; stderr: string }>(
      (resolve, reject) => {
        const child = spawn(vmScript(), args, {
          stdio: ['ignore', 'pipe', 'pipe'],
          env: { ...process.env, NETDISK_VM_DMESG: dmesgFile },
          ...(opts.signal ? { signal: opts.signal } : {}),
        });
        const out: Buffer[] = [];
        const err: Buffer[] = [];
        child.stdout.on('data', (b: Buffer) => out.push(b));
        child.stderr.on('data', (b: Buffer) => err.push(b));
        child.on('error', (e) => {
          // An abort still closes the child; report it through 'close' like any kill.
          if ((e as NodeJS.ErrnoException).name !== 'AbortError') reject(e);
        });
        child.on('close', (status, signal) => {
          let c = status;
          if (c === null) c = signal ? 128 + (os.constants.signals[signal] ?? 0) : VM_HARNESS_FAILURE_CODE;
          resolve({
            code: c,
            stdout: Buffer.concat(out).toString('utf8'),
            stderr: Buffer.concat(err).toString('utf8'),
          });
        });
      },
    );
    const dmesg = fs.existsSync(dmesgFile) ? fs.readFileSync(dmesgFile, 'utf8') : '';
    const ran = RAN_ON.exec(stderr);
    return { code, stdout, stderr: ran ? stderr.replace(RAN_ON, '') : stderr, dmesg, kernel: ran?.[1] ?? '' };
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
}
