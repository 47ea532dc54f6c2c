// Bytes held by all of the server's connections against the server-wide budget
// (ServerSettings.serverBytes). A connection that finds the budget spent waits here with
// what it needs, and is woken once that fits: not on every byte that comes back, which under
// a connection doing small requests would wake every waiter per request.
export class ByteBudget {
  used = 0;
  private readonly waiting = new Map<() => void, number>();

  constructor(readonly limit: number) {}

  fits(n: number): boolean {
    return this.used + n <= this.limit;
  }

  take(n: number): void {
    this.used += n;
  }

  give(n: number): void {
    this.used -= n;
    if (this.waiting.size === 0) return;
    const wake: (() => void)[] = [];
    for (const [w, need] of this.waiting) {
      if (this.fits(need)) {
        wake.push(w);
        this.waiting.delete(w);
      }
    }
    // Not from inside another connection's callback: each waiter runs on its own turn, and
    // one that finds the room taken waits again.
    if (wake.length !== 0) setImmediate(() => { for (const w of wake) w(); });
  }

  /** Calls wake once `need` bytes fit (or nothing is held, for a need above the limit). */
  wait(wake: () => void, need: number): void {
    this.waiting.set(wake, Math.min(need, this.limit));
  }

  cancel(wake: () => void): void {
    this.waiting.delete(wake);
  }
}
