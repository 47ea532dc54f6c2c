#pragma once

#include <napi.h>

namespace ublk {

// The RingSocket class: an NBD connection's data path on an io_uring of its own.
Napi::Function DefineRingSocket(Napi::Env env);

}  // namespace ublk
