// N-API registration only. NODE_API_MODULE registers through NAPI_MODULE_INIT, so
// the module is context-aware and loads in worker threads; it keeps no global
// JS state.
#include <napi.h>

#include "ctrl.h"
#include "fixed-buffer-probe.h"
#include "queue.h"

static Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("ctrlCommand", Napi::Function::New(env, ublk::CtrlCommand, "ctrlCommand"));
  exports.Set("Queue", ublk::DefineQueue(env));
  exports.Set("probeFixedBufferIo", Napi::Function::New(env, ublk::ProbeFixedBufferIo, "probeFixedBufferIo"));
  return exports;
}

NODE_API_MODULE(ublk, Init)
