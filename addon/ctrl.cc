// Control commands on /dev/ublk-control: one io_uring (SQE128) per command, on a
// thread of its own.
//
// Why a thread per command and not Napi::AsyncWorker: START_DEV waits until every
// tag of every queue has a FETCH outstanding and DEL_DEV waits until /dev/ublkcN
// is released; both can wait for as long as the caller gets something wrong. An
// AsyncWorker would park a libuv pool thread meanwhile, and four such waits would
// stall every fs call of the process (including the ones that would unblock
// them). Control commands are rare, so the thread and ring set-up cost nothing
// that matters.
#include "ctrl.h"

#include <fcntl.h>
#include <liburing.h>
#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <memory>
#include <system_error>
#include <thread>
#include <vector>

#include "errors.h"
#include "uapi/ublk_cmd.h"

namespace ublk {
namespace {

constexpr const char* kControlPath = "/dev/ublk-control";

struct CtrlJob {
  uint32_t op = 0;
  uint32_t devId = 0;
  uint16_t queueId = 0;
  uint64_t data0 = 0;
  // The kernel reads and writes this copy, never the caller's Buffer: the thread
  // must not depend on JS memory whose owner may be collected or torn down.
  std::vector<uint8_t> buf;
  bool hasBuf = false;
  napi_deferred deferred = nullptr;
  napi_ref bufRef = nullptr;  // caller's Buffer, refilled from buf on success
  int res = 0;
  int err = 0;  // positive errno
  const char* syscall = "";
};

void Fail(CtrlJob& job, int err, const char* syscall) {
  job.err = err;
  job.syscall = syscall;
}

void RunCommand(CtrlJob& job) {
  // Signals meant for the process (Node's SIGCHLD handling, for one) must not
  // land here and interrupt the waits below.
  sigset_t all;
  sigfillset(&all);
  pthread_sigmask(SIG_BLOCK, &all, nullptr);

  int fd = open(kControlPath, O_RDWR | O_CLOEXEC);
  if (fd < 0) return Fail(job, errno, "open /dev/ublk-control");

  io_uring ring;
  io_uring_params params{};
  // The control payload is 32 bytes; only 128-byte SQEs carry it, and the
  // driver refuses commands that arrive without IO_URING_F_SQE128.
  params.flags = IORING_SETUP_SQE128;
  int rc = io_uring_queue_init_params(2, &ring, &params);
  if (rc < 0) {
    close(fd);
    return Fail(job, -rc, "io_uring_setup");
  }

  io_uring_sqe* sqe = io_uring_get_sqe(&ring);
  if (sqe == nullptr) {
    io_uring_queue_exit(&ring);
    close(fd);
    return Fail(job, EBUSY, "io_uring_get_sqe");
  }
  std::memset(sqe, 0, 128);  // an SQE128 slot
  sqe->opcode = IORING_OP_URING_CMD;
  sqe->fd = fd;
  sqe->cmd_op = job.op;
  sqe->user_data = 1;
  uapi::CtrlCmd cmd{};
  cmd.dev_id = job.devId;
  cmd.queue_id = job.queueId;
  if (job.hasBuf) {
    cmd.len = static_cast<uint16_t>(job.buf.size());
    cmd.addr = reinterpret_cast<uintptr_t>(job.buf.data());
  }
  cmd.data[0] = job.data0;
  std::memcpy(sqe->cmd, &cmd, sizeof cmd);

  do {
    rc = io_uring_submit(&ring);
  } while (rc == -EINTR);
  if (rc != 1) {
    Fail(job, rc < 0 ? -rc : EIO, "io_uring_enter");
  } else {
    // The driver returns -EAGAIN to non-blocking issue, so io_uring runs every
    // control command on an io-wq worker; this wait is where START_DEV and
    // DEL_DEV block.
    io_uring_cqe* cqe = nullptr;
    do {
      rc = io_uring_wait_cqe(&ring, &cqe);
    } while (rc == -EINTR);
    if (rc < 0) {
      Fail(job, -rc, "io_uring_enter");
    } else {
      if (cqe->res < 0)
        Fail(job, -cqe->res, "io_uring_cmd");
      else
        job.res = cqe->res;
      io_uring_cqe_seen(&ring, cqe);
    }
  }
  io_uring_queue_exit(&ring);
  close(fd);
}

void Complete(Napi::Env env, Napi::Function, void*, CtrlJob* raw) {
  std::unique_ptr<CtrlJob> job(raw);
  // A null env means the environment is being torn down: the promise and the
  // reference die with it.
  if (env == nullptr) return;
  Napi::HandleScope scope(env);
  if (job->bufRef != nullptr) {
    napi_value value;
    if (job->err == 0 && napi_get_reference_value(env, job->bufRef, &value) == napi_ok &&
        value != nullptr) {
      Napi::Buffer<uint8_t> out(env, value);
      std::memcpy(out.Data(), job->buf.data(), std::min(out.Length(), job->buf.size()));
    }
    napi_delete_reference(env, job->bufRef);
  }
  if (job->err != 0)
    napi_reject_deferred(env, job->deferred, ErrnoError(env, job->err, job->syscall).Value());
  else
    napi_resolve_deferred(env, job->deferred, Napi::Number::New(env, job->res));
}

using CompletionFn = Napi::TypedThreadSafeFunction<void, CtrlJob, Complete>;

uint32_t Uint32Arg(const Napi::CallbackInfo& info, size_t i, const char* name, uint32_t max) {
  Napi::Value v = info[i];
  if (!v.IsNumber()) throw Napi::TypeError::New(info.Env(), std::string(name) + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= 0 && d <= max) || d != static_cast<double>(static_cast<uint64_t>(d)))
    throw Napi::RangeError::New(info.Env(), std::string(name) + " out of range");
  return static_cast<uint32_t>(d);
}

}  // namespace

Napi::Value CtrlCommand(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  auto job = std::make_unique<CtrlJob>();
  job->op = Uint32Arg(info, 0, "op", UINT32_MAX);
  job->devId = Uint32Arg(info, 1, "devId", UINT32_MAX);
  job->queueId = static_cast<uint16_t>(Uint32Arg(info, 2, "queueId", UINT16_MAX));
  if (!info[3].IsBigInt()) throw Napi::TypeError::New(env, "data0 must be a bigint");
  bool lossless = false;
  job->data0 = info[3].As<Napi::BigInt>().Uint64Value(&lossless);
  if (!lossless) throw Napi::RangeError::New(env, "data0 must fit in 64 bits unsigned");
  Napi::Value bufArg = info[4];
  if (bufArg.IsBuffer()) {
    Napi::Buffer<uint8_t> buf = bufArg.As<Napi::Buffer<uint8_t>>();
    if (buf.Length() > UINT16_MAX) throw Napi::RangeError::New(env, "buf longer than 65535 bytes");
    job->buf.assign(buf.Data(), buf.Data() + buf.Length());
    job->hasBuf = true;
  } else if (!bufArg.IsNull() && !bufArg.IsUndefined()) {
    throw Napi::TypeError::New(env, "buf must be a Buffer or null");
  }

  napi_value promise;
  NAPI_THROW_IF_FAILED(env, napi_create_promise(env, &job->deferred, &promise), Napi::Value());
  if (job->hasBuf) NAPI_THROW_IF_FAILED(env, napi_create_reference(env, bufArg, 1, &job->bufRef), Napi::Value());

  // Keeps the event loop alive until the command completes, like a pending fs call.
  CompletionFn done = CompletionFn::New(env, "ublk:ctrlCommand", 0, 1);
  CtrlJob* raw = job.get();
  try {
    std::thread([done, raw]() mutable {
      RunCommand(*raw);
      if (done.BlockingCall(raw) != napi_ok) delete raw;
      done.Release();
    }).detach();
    job.release();
  } catch (const std::system_error& e) {
    done.Release();
    if (job->bufRef != nullptr) napi_delete_reference(env, job->bufRef);
    napi_reject_deferred(env, job->deferred, ErrnoError(env, e.code().value(), "pthread_create").Value());
  }
  return Napi::Value(env, promise);
}

}  // namespace ublk
