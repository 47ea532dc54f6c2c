// The README's reliability table, measured: every fault scenario of scenarios.ts against our
// ublk device and against the kernel's nbd client (nbd-client with and without -persist),
// on the same store, with ext4 and fio verify on the device. Needs the real kernel (run it
// in the test VM) and takes a while, so it is not part of `npm test`:
//
//   npm run build:ts && test/vm/run.sh --timeout 3000 -- node dist/test/faults/reliability.js
//   ... node dist/test/faults/reliability.js --clients ublk,nbd --faults store-restart,blackhole
//
// Each run prints its timeline as it finishes, then the table in Markdown.
import { parseArgs } from 'util';
import {
  CLIENT_TITLES, FAULT_TITLES, runScenario, summary, type ClientKind, type FaultKind, type Observation,
} from './scenarios';

const ALL_CLIENTS = Object.keys(CLIENT_TITLES) as ClientKind[];
const ALL_FAULTS = Object.keys(FAULT_TITLES) as FaultKind[];

async function main(): Promise<number> {
  const { values } = parseArgs({
    options: {
      clients: { type: 'string' },
      faults: { type: 'string' },
      'hang-after': { type: 'string' },
      repeat: { type: 'string' },
    },
  });
  const clients = (values.clients?.split(',') ?? ALL_CLIENTS) as ClientKind[];
  const faults = (values.faults?.split(',') ?? ALL_FAULTS) as FaultKind[];
  for (const c of clients) if (!ALL_CLIENTS.includes(c)) throw new Error(`unknown client ${c} (${ALL_CLIENTS.join(', ')})`);
  for (const f of faults) if (!ALL_FAULTS.includes(f)) throw new Error(`unknown fault ${f} (${ALL_FAULTS.join(', ')})`);
  const hangAfterMs = Number(values['hang-after'] ?? 60) * 1000;
  const repeat = Number(values.repeat ?? 1);
  const out = (s: string): void => { process.stdout.write(s + '\n'); };
  const results: Observation[] = [];
  let nbdIndex = 0;
  const began = Date.now();
  for (const f of faults) {
    for (const c of clients) {
      for (let round = 1; round <= repeat; round++) {
        const t = Date.now();
        const o = await runScenario(c, f, { nbdIndex: c === 'ublk' ? 0 : nbdIndex++ % 16, hangAfterMs, log: out });
        results.push(o);
        const which = repeat > 1 ? `, run ${round} of ${repeat}` : '';
        out(`\n### ${FAULT_TITLES[f]}: ${CLIENT_TITLES[c]}${o.settings ? ` ${o.settings}` : ''} (${((Date.now() - t) / 1000).toFixed(0)} s${which})`);
        out(`    ${summary(o)}`);
        if (!o.applicable) break; // the same answer every time
        out(o.timeline.text('    '));
        if (o.kernelNotes.length > 0) out(`    kernel log (first lines):\n${o.kernelNotes.map((l) => `      ${l}`).join('\n')}`);
        if (o.ioErrors > 0) out(`    kernel I/O error lines: ${o.ioErrors}`);
      }
    }
  }
  out(`\n## Reliability (measured ${new Date().toISOString().slice(0, 10)}, ${((Date.now() - began) / 60000).toFixed(0)} min)\n`);
  out(`| scenario | ${clients.map((c) => CLIENT_TITLES[c]).join(' | ')} |`);
  out(`|---|${clients.map(() => '---').join('|')}|`);
  for (const f of faults) {
    const cells = clients.map((c) => {
      // Runs that saw the same thing are counted together; differing runs are all listed.
      const seen = new Map<string, number>();
      for (const o of results.filter((r) => r.client === c && r.fault === f)) {
        const key = summary(o).replace(/\d+ s/g, 'N s');
        seen.set(key, (seen.get(key) ?? 0) + 1);
      }
      const runs = results.filter((r) => r.client === c && r.fault === f);
      const cell = [...seen.entries()].map(([key, n]) => {
        const example = summary(runs.find((o) => summary(o).replace(/\d+ s/g, 'N s') === key) as Observation);
        return runs.length > 1 && runs[0]?.applicable ? `${n} of ${runs.length} runs: ${example}` : example;
      });
      return cell.join('<br>').replace(/\|/g, '\\|');
    });
    out(`| ${FAULT_TITLES[f]} | ${cells.join(' | ')} |`);
  }
  return 0;
}

main().then((code) => process.exit(code), (err: unknown) => {
  process.stderr.write(`reliability: ${(err as Error).stack ?? String(err)}\n`);
  process.exit(1);
});
