// Bytes held by all of the server's connections against the server-wide budget
// (ServerSettings.serverBytes). A connection that finds the budget spent waits here and
// is woken, with every other waiter, as soon as bytes come back.
export class ByteBudget {
  used = 0;
  private readonly waiting = new Set<() => void>();

  constructor(readonly limit: number) {}

  fits(n: number): boolean {
    return this.used + n <= this.limit;
  }

  take(n: number): void {
    this.used += n;
  }

  give(n: number): void {
    this.used -= n;
    if (this.waiting.size !== 0 && this.used < this.limit) {
      const wake = [...this.waiting];
      this.waiting.clear();
      // Not from inside another connection's callback: each waiter runs on its own turn.
      setImmediate(() => { for (const w of wake) w(); });
    }
  }

  /** Calls wake once bytes come back (a waiter that still does not fit waits again). */
  wait(wake: () => void): void {
    this.waiting.add(wake);
  }

  cancel(wake: () => void): void {
    this.waiting.delete(wake);
  }
}
