#pragma once

#include <napi.h>

namespace ublk {

// ctrlCommand(op, devId, queueId, data0, buf): one command on /dev/ublk-control.
Napi::Value CtrlCommand(const Napi::CallbackInfo& info);

}  // namespace ublk
