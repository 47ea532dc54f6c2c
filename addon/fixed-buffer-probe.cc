// Whether plain IORING_OP_SEND and IORING_OP_RECV take registered buffers
// (IORING_RECVSEND_FIXED_BUF with sqe->buf_index; Linux 7.2; before, only SEND_ZC could):
// what zero copy on the queue's ring needs to move a request's pages, registered there
// by UBLK_F_AUTO_BUF_REG, to and from the NBD socket. Kernels without it refuse the flag
// (EINVAL), so the answer comes from a real send and receive over a socket pair, never
// from a version string.
#include "fixed-buffer-probe.h"

#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

namespace ublk {
namespace {

// One operation on buffer `index`, waited for: its result (bytes, or -errno).
int RunFixed(io_uring* ring, bool send, int fd, void* addr, unsigned len, unsigned index) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  if (sqe == nullptr) return -EBUSY;
  if (send) {
    io_uring_prep_send(sqe, fd, addr, len, MSG_NOSIGNAL);
  } else {
    io_uring_prep_recv(sqe, fd, addr, len, MSG_WAITALL);
  }
  sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
  sqe->buf_index = static_cast<uint16_t>(index);
  int rc = io_uring_submit(ring);
  if (rc < 0) return rc;
  io_uring_cqe* cqe = nullptr;
  rc = io_uring_wait_cqe(ring, &cqe);
  if (rc < 0) return rc;
  int res = cqe->res;
  io_uring_cqe_seen(ring, cqe);
  return res;
}

int Probe() {
  constexpr unsigned kBytes = 4096;
  io_uring ring{};
  int rc = io_uring_queue_init(4, &ring, 0);
  if (rc < 0) return -rc;
  int sv[2] = {-1, -1};
  int err = 0;
  std::vector<uint8_t> mem(2 * kBytes);
  for (unsigned i = 0; i < kBytes; i++) mem[i] = static_cast<uint8_t>(i * 7 + 1);
  iovec iov[2] = {{mem.data(), kBytes}, {mem.data() + kBytes, kBytes}};
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
    err = errno;
  } else if ((rc = io_uring_register_buffers(&ring, iov, 2)) < 0) {
    err = -rc;
  } else {
    rc = RunFixed(&ring, true, sv[0], iov[0].iov_base, kBytes, 0);
    if (rc >= 0 && rc != static_cast<int>(kBytes)) rc = -EIO;
    if (rc >= 0) rc = RunFixed(&ring, false, sv[1], iov[1].iov_base, kBytes, 1);
    if (rc >= 0 && (rc != static_cast<int>(kBytes) || std::memcmp(mem.data(), mem.data() + kBytes, kBytes) != 0)) rc = -EIO;
    if (rc < 0) err = -rc;
  }
  for (int fd : sv) {
    if (fd >= 0) close(fd);
  }
  io_uring_queue_exit(&ring);
  return err;
}

}  // namespace

Napi::Value ProbeFixedBufferIo(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), Probe());
}

}  // namespace ublk
