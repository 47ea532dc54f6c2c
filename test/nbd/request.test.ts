// RequestTable: the one booking of a request, from submit to its callback.
import * as assert from 'assert';
import { RequestState, RequestTable } from '../../src/nbd/request';
import { NbdConnectionError, type NbdError } from '../../src/nbd/errors';

describe('RequestTable', () => {
  it('books a request as pending, with its op and defaults', () => {
    const t = new RequestTable();
    const into = Buffer.alloc(8);
    const r = t.add({ type: 0, offset: 4096, length: 8, into }, 'ctx', () => undefined);
    assert.strictEqual(r.state, RequestState.Pending);
    assert.deepStrictEqual([r.type, r.flags, r.offset, r.length, r.intoOffset], [0, 0, 4096, 8, 0]);
    assert.strictEqual(r.into, into);
    assert.strictEqual(r.data, null);
    assert.strictEqual(t.size, 1);
  });

  it('matches a cookie only to a sent request of the same generation', () => {
    const t = new RequestTable();
    const r = t.add({ type: 1 }, null, () => undefined);
    assert.strictEqual(t.sent(r.gen, r.idx), undefined, 'pending, not sent');
    r.state = RequestState.Sent;
    assert.strictEqual(t.sent(r.gen, r.idx), r);
    assert.strictEqual(t.sent(r.gen + 1, r.idx), undefined, 'another generation');
    assert.strictEqual(t.sent(r.gen, r.idx + 1), undefined, 'no such slot');
    const gen = r.gen;
    t.finish(r, null);
    const again = t.add({ type: 1 }, null, () => undefined);
    assert.strictEqual(again.idx, r.idx, 'the slot is reused');
    again.state = RequestState.Sent;
    assert.strictEqual(t.sent(gen, again.idx), undefined, 'a reply to the earlier use is stale');
  });

  it('runs the callback once, with its context, and frees the slot first', () => {
    const t = new RequestTable();
    const calls: Array<[NbdError | null, number, number]> = [];
    const r = t.add({ type: 0 }, 7, (err, ctx) => calls.push([err, ctx, t.size]));
    const err = new NbdConnectionError('gone');
    t.finish(r, err);
    t.finish(r, null);
    assert.deepStrictEqual(calls, [[err, 7, 0]]);
    assert.strictEqual(r.state, RequestState.Done);
  });

  it('lists live requests oldest first, a snapshot that survives finishing while walking it', () => {
    const t = new RequestTable();
    const order: number[] = [];
    const rs = [0, 1, 2, 3].map((i) => t.add({ type: 0 }, i, (_e, ctx) => order.push(ctx)));
    t.finish(rs[1]!, null); // frees slot 1: the next request reuses it but is newer
    const late = t.add({ type: 0 }, 4, (_e, ctx) => order.push(ctx));
    assert.strictEqual(late.idx, rs[1]!.idx);
    order.length = 0;
    for (const r of t.list(() => true)) t.finish(r, null);
    assert.deepStrictEqual(order, [0, 2, 3, 4]);
    assert.strictEqual(t.size, 0);
    assert.ok(!t.some(() => true));
  });
});
