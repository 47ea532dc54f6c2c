// CLI failures: a message for the user and the exit status (2 for usage, 1 otherwise). The
// failure behind it stays reachable: its code and errno, and the error itself as cause.
import { DetailedError, type FailureDetail } from '../errno';

export class CliError extends DetailedError {
  constructor(message: string, readonly exitCode = 1, detail: FailureDetail = {}) {
    super(message, detail);
  }
}

export class UsageError extends CliError {
  constructor(message: string) {
    super(message, 2);
    this.name = 'UsageError';
  }
}
