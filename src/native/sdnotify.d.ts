// The contract of the sdnotify addon (build/Release/sdnotify.node, addon/sd-notify.cc).
export interface SdNotifyNative {
  /**
   * Sends `message` as one datagram to the unix socket at `socketPath` ('@' first: the
   * abstract namespace). Throws a NativeErrnoError (syscall 'sendto ...') when it cannot.
   */
  notify(socketPath: string, message: string): void;
}
