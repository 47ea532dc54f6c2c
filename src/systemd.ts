// systemd's readiness protocol (sd_notify(3)): a service of Type=notify says READY=1 once it
// does its job, STATUS=... lines as its state changes and STOPPING=1 when it begins to stop.
// Each is one datagram on the socket $NOTIFY_SOCKET names; without it (not under systemd)
// nothing is sent. A failed send is logged, never fatal: the service itself still works.
import type { Logger } from './log';
import { loadSdNotify } from './native/load';

export class SystemdNotifier {
  private readonly socket: string | undefined;

  constructor(private readonly log: Logger, env: NodeJS.ProcessEnv = process.env) {
    const s = env.NOTIFY_SOCKET;
    this.socket = s === undefined || s === '' ? undefined : s;
    // Loaded now: a missing build is one clear error at start-up, not at READY time.
    if (this.socket !== undefined) loadSdNotify();
  }

  get enabled(): boolean {
    return this.socket !== undefined;
  }

  /** The service does its job now: a unit ordered after it may start. */
  ready(status: string): void {
    this.send(`READY=1\nSTATUS=${oneLine(status)}`);
  }

  status(status: string): void {
    this.send(`STATUS=${oneLine(status)}`);
  }

  stopping(status: string): void {
    this.send(`STOPPING=1\nSTATUS=${oneLine(status)}`);
  }

  private send(message: string): void {
    if (this.socket === undefined) return;
    try {
      loadSdNotify().notify(this.socket, message);
    } catch (err) {
      this.log.warn({ err: (err as Error).message, socket: this.socket }, 'cannot notify systemd');
    }
  }
}

/** A STATUS= value ends at the newline: keep it to one line. */
function oneLine(s: string): string {
  return s.replace(/\s*\n\s*/g, ' ');
}
