#pragma once

#include <napi.h>

namespace ublk {

// probeFixedBufferIo(): 0 when this kernel's io_uring sends from and receives into
// registered buffers, else the errno that says why not.
Napi::Value ProbeFixedBufferIo(const Napi::CallbackInfo& info);

}  // namespace ublk
