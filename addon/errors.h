// errno -> JS Error carrying errno (positive), code ('ENOENT', ...) and syscall, so
// TypeScript can branch on err.code instead of parsing messages.
#pragma once

#include <napi.h>
#include <uv.h>

#include <cerrno>
#include <string>

namespace ublk {

// libuv's error codes are negated errno values on Linux, so its name and message
// tables double as errno tables. The _r variants do not leak for unknown codes.
inline std::string ErrnoName(int err) {
  // Linux has one value for both; the kernel (and ublk_drv) call it EOPNOTSUPP,
  // libuv ENOTSUP. The same rule as src/errno.ts, which names errnos for TypeScript.
  if (err == EOPNOTSUPP) return "EOPNOTSUPP";
  char buf[64];
  return uv_err_name_r(-err, buf, sizeof buf);
}

inline std::string ErrnoMessage(int err) {
  char buf[128];
  return uv_strerror_r(-err, buf, sizeof buf);
}

inline Napi::Error ErrnoError(Napi::Env env, int err, const std::string& syscall) {
  std::string code = ErrnoName(err);
  Napi::Error e = Napi::Error::New(env, syscall + ": " + ErrnoMessage(err) + " (" + code + ")");
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("code", Napi::String::New(env, code));
  e.Set("syscall", Napi::String::New(env, syscall));
  return e;
}

}  // namespace ublk
