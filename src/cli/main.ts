// Entry point: dispatches to one command per file and turns failures into exit codes.
import { CliError } from './errors';
import { EXIT_CODES, version } from './help';

const USAGE = `usage: netdisk-ublk COMMAND [OPTIONS]
commands:
  serve IMAGE [--listen HOST:PORT|unix:PATH|URI] [--tls off|on|require] [--size SIZE] [--name EXPORT] [--read-only]
  add --remote URI|HOST[:PORT] [--export NAME] [--id N] [--queues N] [--depth N] [--foreground] [--json]
  del ID | --all
  list [--json]
  stats [ID] [--json] [--watch [S]]
  recover ID [--remote URI|HOST[:PORT]] [--fail-after S]
  bench [--quick] [--runs N] [--seconds S] [--stores serve,nbdkit] [--cases LIST] [--queues N] ...
  --version, -V  print the version
Run "netdisk-ublk COMMAND --help" (or "netdisk-ublk help COMMAND") for a command's options.
example:
  netdisk-ublk serve /srv/disk.img --size 10G & netdisk-ublk add --remote 127.0.0.1:10809
${EXIT_CODES}`;

type Command = (argv: string[]) => Promise<number>;

const COMMANDS: Record<string, () => Promise<Command>> = {
  serve: async () => (await import('./serve')).serve,
  add: async () => (await import('./add')).add,
  del: async () => (await import('./del')).del,
  list: async () => (await import('./list')).list,
  stats: async () => (await import('./stats')).stats,
  recover: async () => (await import('./recover')).recover,
  bench: async () => (await import('./bench')).bench,
};

export async function run(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-V') {
    process.stdout.write(`netdisk-ublk ${version()}\n`);
    return 0;
  }
  if (name === 'help' && rest[0] !== undefined && rest[0] in COMMANDS) return run([rest[0], '--help']);
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    // Without a command it is a usage error: the usage goes where errors go.
    (name === undefined ? process.stderr : process.stdout).write(USAGE + '\n');
    return name === undefined ? 2 : 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    process.stderr.write(`netdisk-ublk: unknown command "${name}"\n${USAGE}\n`);
    return 2;
  }
  try {
    return await (await load())(rest);
  } catch (err) {
    if (err instanceof CliError) {
      // Messages name their command ("add: ..."); shared parsers' do not, so name it here.
      const msg = err.message.startsWith(`${name}:`) ? err.message : `${name}: ${err.message}`;
      process.stderr.write(`netdisk-ublk ${msg}\n`);
      return err.exitCode;
    }
    process.stderr.write(`netdisk-ublk: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
}

export function main(argv: string[]): void {
  // More libuv pool threads than the default 4: every store read and write runs there.
  process.env.UV_THREADPOOL_SIZE ??= '16';
  run(argv).then(
    (code) => {
      process.exitCode = code;
    },
    (err: unknown) => {
      process.stderr.write(`netdisk-ublk: ${String(err)}\n`);
      process.exitCode = 1;
    },
  );
}
