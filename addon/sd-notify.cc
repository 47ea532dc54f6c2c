// sd_notify(3) without libsystemd: one datagram on the unix socket $NOTIFY_SOCKET names.
// Node has no unix datagram sockets, hence this addon; which messages to send and when is
// decided in TypeScript (src/systemd.ts).
#include <napi.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstring>
#include <string>

#include "errors.h"

namespace {

// notify(socketPath, message): sends message as one datagram. A path starting with '@' is
// in the abstract namespace (systemd's convention: the '@' stands for the leading NUL).
Napi::Value Notify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "notify(socketPath: string, message: string)");
  }
  std::string path = info[0].As<Napi::String>();
  std::string msg = info[1].As<Napi::String>();
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof addr.sun_path || (path[0] != '/' && path[0] != '@')) {
    throw ublk::ErrnoError(env, EINVAL, "NOTIFY_SOCKET " + path);
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size());
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw ublk::ErrnoError(env, errno, "socket");
  ssize_t n = sendto(fd, msg.data(), msg.size(), MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
  int err = errno;
  close(fd);
  if (n < 0) throw ublk::ErrnoError(env, err, "sendto " + path);
  return env.Undefined();
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("notify", Napi::Function::New(env, Notify, "notify"));
  return exports;
}

}  // namespace

NODE_API_MODULE(sdnotify, Init)
