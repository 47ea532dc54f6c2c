// The public face of src/ublk: what src/device and the CLI import.
export * from './constants';
export { UblkCtrl, ublkAvailable, type AddDevOptions } from './ctrl';
export { UblkError, codeForErrno, toUblkError, type UblkErrorCode } from './errors';
export { zeroCopySupport, type ZeroCopySupport } from './zero-copy';
export { UblkQueue, closeCharDev, openCharDev, type UblkQueueHandler, type UblkQueueOptions, type UblkSocketSink } from './queue';
export * from './structs';
