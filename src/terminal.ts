// Terminal conventions shared by logs and commands.

/**
 * Whether to colour what goes to this stream: only a terminal, and never when NO_COLOR is
 * set to anything but the empty string (no-color.org).
 */
export function useColor(stream: { isTTY?: boolean }): boolean {
  return stream.isTTY === true && (process.env.NO_COLOR ?? '') === '';
}
