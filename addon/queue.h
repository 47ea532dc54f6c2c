#pragma once

#include <napi.h>

namespace ublk {

// The Queue class: one ublk queue, driven from the thread that creates it.
Napi::Function DefineQueue(Napi::Env env);

}  // namespace ublk
