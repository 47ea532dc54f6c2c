// The server-wide byte budget: a waiter is woken once what it needs fits, not on every
// byte that comes back.
import * as assert from 'assert';
import { ByteBudget } from '../../src/server/byte-budget';

const turn = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('server: ByteBudget', function () {
  it('wakes a waiter once its need fits, each waiter by its own need', async function () {
    const b = new ByteBudget(100);
    b.take(100);
    const woken: string[] = [];
    b.wait(() => woken.push('big'), 60);
    b.wait(() => woken.push('small'), 10);
    b.give(5);
    await turn();
    assert.deepStrictEqual(woken, [], 'nothing fits yet');
    b.give(5);
    await turn();
    assert.deepStrictEqual(woken, ['small']);
    b.give(50);
    await turn();
    assert.deepStrictEqual(woken, ['small', 'big']);
    b.give(10);
    await turn();
    assert.deepStrictEqual(woken, ['small', 'big'], 'a woken waiter is not woken again');
  });

  it('a need above the whole budget is woken once nothing is held; a cancelled waiter never', async function () {
    const b = new ByteBudget(100);
    b.take(30);
    const woken: string[] = [];
    b.wait(() => woken.push('huge'), 1000);
    const gone = (): void => { woken.push('gone'); };
    b.wait(gone, 1);
    b.cancel(gone);
    b.give(20);
    await turn();
    assert.deepStrictEqual(woken, []);
    b.give(10);
    await turn();
    assert.deepStrictEqual(woken, ['huge']);
  });
});
