// netdisk-ublk serve IMAGE [--listen HOST:PORT] [--size SIZE] [--name EXPORT] [--read-only]
import { createLogger } from '../log';
import { FileStore, FileStoreError } from '../server/file-store';
import { NbdServer } from '../server/server';
import { parseSize } from '../size';
import { parse, parseHostPort } from './args';
import { CliError, UsageError } from './errors';

export const SERVE_USAGE = `usage: netdisk-ublk serve IMAGE [--listen HOST:PORT] [--size SIZE] [--name EXPORT] [--read-only]
  Serves IMAGE over NBD. Listens on 127.0.0.1:10809 unless --listen says otherwise.
  --size SIZE   create IMAGE, or grow it (sparse), to SIZE (1440K, 64M, 10G or bytes)
  --name NAME   the export's name (default: "", the default export)
  --read-only   refuse writes`;

export async function serve(argv: string[]): Promise<number> {
  const { values, positionals } = parse(argv, {
    listen: { type: 'string', short: 'l' },
    size: { type: 'string', short: 's' },
    name: { type: 'string', short: 'n' },
    'read-only': { type: 'boolean', short: 'r' },
    help: { type: 'boolean', short: 'h' },
  }, 'serve');
  if (values.help) {
    process.stdout.write(SERVE_USAGE + '\n');
    return 0;
  }
  if (positionals.length !== 1) throw new UsageError(`serve: expected one IMAGE argument\n${SERVE_USAGE}`);
  const image = positionals[0] as string;
  const listen = parseHostPort(values.listen ?? '127.0.0.1', '127.0.0.1', 'serve: --listen');
  let size: number | undefined;
  if (values.size !== undefined) {
    try {
      size = parseSize(values.size);
    } catch (err) {
      throw new UsageError(`serve: --size: ${(err as Error).message}`);
    }
  }
  const log = createLogger('netdisk-serve');
  let store: FileStore;
  try {
    store = FileStore.open(image, { size, readOnly: values['read-only'] ?? false });
  } catch (err) {
    if (err instanceof FileStoreError) throw new CliError(`serve: ${err.message}`);
    throw err;
  }
  const server = new NbdServer({ exports: [{ name: values.name ?? '', store }], log });
  try {
    await server.listen(listen.host, listen.port);
  } catch (err) {
    await store.close();
    const e = err as NodeJS.ErrnoException;
    throw new CliError(`serve: cannot listen on ${listen.host}:${listen.port}: ${e.code ?? e.message}`);
  }
  const addr = server.address();
  log.info({ image, size: store.size, export: values.name ?? '', readOnly: store.readOnly, listen: `${addr.address}:${addr.port}` }, 'serving');
  await new Promise<void>((resolve) => {
    const stop = (sig: string): void => {
      log.info({ signal: sig, connections: server.connections }, 'shutting down');
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
      resolve();
    };
    process.on('SIGINT', stop);
    process.on('SIGTERM', stop);
  });
  await server.close();
  log.info('stopped');
  return 0;
}
