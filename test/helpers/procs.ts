// Child processes for tests: every child is tracked and killed by cleanup, by a test's
// teardown or, as a last resort, when the test process itself exits. A hung peer must
// never outlive the run or keep mocha from ending.
import { ChildProcess, spawn, SpawnOptions } from 'child_process';
import { inspect } from 'util';

export interface Exit {
  code: number | null;
  signal: NodeJS.Signals | null;
}

export interface Child {
  readonly proc: ChildProcess;
  readonly pid: number;
  /** Resolves when the process has exited and its pipes are closed. */
  readonly exited: Promise<Exit>;
  /** True once it has exited. */
  readonly done: boolean;
  stdout(): Buffer;
  stderr(): string;
  /** Sends sig unless it has already exited, then waits for the exit. */
  kill(sig?: NodeJS.Signals): Promise<Exit>;
}

const live = new Set<ChildProcess>();

process.on('exit', () => {
  for (const p of live) {
    try {
      p.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/** Spawns a tracked child with piped output (stdin ignored unless opts say otherwise). */
export function spawnChild(cmd: string, args: string[], opts: SpawnOptions = {}): Child {
  const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'], ...opts });
  live.add(proc);
  const out: Buffer[] = [];
  let err = '';
  proc.stdout?.on('data', (b: Buffer) => out.push(b));
  proc.stderr?.on('data', (b: Buffer) => (err += b.toString()));
  let done = false;
  const exited = new Promise<Exit>((resolve, reject) => {
    proc.once('error', (e) => {
      live.delete(proc);
      done = true;
      reject(new Error(`cannot run ${cmd}: ${e.message}`));
    });
    proc.once('close', (code, signal) => {
      live.delete(proc);
      done = true;
      resolve({ code, signal });
    });
  });
  exited.catch(() => undefined);
  return {
    proc,
    get pid() { return proc.pid ?? -1; },
    exited,
    get done() { return done; },
    stdout: () => Buffer.concat(out),
    stderr: () => err,
    kill: async (sig: NodeJS.Signals = 'SIGKILL') => {
      if (!done) proc.kill(sig);
      return exited;
    },
  };
}

export interface RunResult extends Exit {
  stdout: Buffer;
  stderr: string;
}

/**
 * Runs a command to completion without blocking the event loop (the server under test
 * may live in this process). `input` goes to its stdin.
 */
export async function run(cmd: string, args: string[], opts: SpawnOptions & { input?: Buffer | string } = {}): Promise<RunResult> {
  const { input, ...rest } = opts;
  const c = spawnChild(cmd, args, { ...rest, stdio: ['pipe', 'pipe', 'pipe'] });
  c.proc.stdin?.on('error', () => undefined);
  c.proc.stdin?.end(input);
  const e = await c.exited;
  return { ...e, stdout: c.stdout(), stderr: c.stderr() };
}

/** run(), failing with the command's stderr unless it exits 0. */
export async function runOk(cmd: string, args: string[], opts: SpawnOptions & { input?: Buffer | string } = {}): Promise<RunResult> {
  const r = await run(cmd, args, opts);
  if (r.code !== 0) {
    throw new Error(`${cmd} ${args.join(' ')} exited ${r.code ?? r.signal}:\n${r.stderr}${r.stdout.toString()}`);
  }
  return r;
}

// Runs argv on a pseudo-terminal (python's pty module: a real one, not a pipe that claims to
// be a terminal) or with one of its outputs on a pipe, reads that output until `until` has
// come `count` times, sends SIGINT, reads the rest and exits with the command's exit code.
const UNTIL_SEEN = `
import os, pty, signal, subprocess, sys
until, count, on, argv = sys.argv[1].encode(), int(sys.argv[2]), sys.argv[3], sys.argv[4:]
if on == 'pty':
    pid, fd = pty.fork()
    if pid == 0:
        os.execvp(argv[0], argv)
else:
    p = subprocess.Popen(argv, **{on: subprocess.PIPE})
    pid, fd = p.pid, getattr(p, on).fileno()
out = b''
stopped = False
while True:
    try:
        b = os.read(fd, 4096)
    except OSError:
        break
    if not b:
        break
    out += b
    if not stopped and out.count(until) >= count:
        os.kill(pid, signal.SIGINT)
        stopped = True
_, status = os.waitpid(pid, 0)
sys.stdout.buffer.write(out)
sys.exit(os.waitstatus_to_exitcode(status))
`;

/**
 * Runs a command until its output (a terminal's, or stdout or stderr on a pipe) has shown
 * `until` `count` times, then stops it with SIGINT as a user at a terminal would. The
 * result's stdout is all that output; its code is the command's exit code.
 */
export function runUntilSeen(argv: string[], opts: { until: string; count?: number; on: 'pty' | 'stdout' | 'stderr'; env?: NodeJS.ProcessEnv }): Promise<RunResult> {
  return run('python3', ['-c', UNTIL_SEEN, opts.until, String(opts.count ?? 1), opts.on, ...argv], { env: opts.env ?? process.env });
}

/** Cleanup steps run last-in first-out; every step runs even when one fails. */
export class Cleanup {
  private steps: Array<() => unknown> = [];

  add(step: () => unknown): void {
    this.steps.push(step);
  }

  /** Kills the child (SIGKILL) at cleanup unless it has already exited. */
  child(c: Child): Child {
    this.add(() => c.kill('SIGKILL'));
    return c;
  }

  async run(): Promise<void> {
    const steps = this.steps.reverse();
    this.steps = [];
    let first: Error | undefined;
    for (const s of steps) {
      try {
        await s();
      } catch (err) {
        first ??= err instanceof Error ? err : new Error(inspect(err));
      }
    }
    if (first !== undefined) throw first;
  }
}

/** A Cleanup run after each test of the calling describe block. */
export function cleanupAfterEach(): Cleanup {
  const c = new Cleanup();
  afterEach(() => c.run());
  return c;
}

/** A Cleanup run after all tests of the calling describe block. */
export function cleanupAfterAll(): Cleanup {
  const c = new Cleanup();
  after(() => c.run());
  return c;
}
