// File I/O for the NBD store, beyond what Node's fs offers.
//
// FileRing: one io_uring per image file, driven from the JS thread. JS queues reads,
// writes, fdatasyncs and fallocates (one SQE each, identified by a JS-chosen id), then
// submits them all with one io_uring_enter per loop iteration. Why a ring and not fs.read
// on the libuv pool: a page-cached read completes inside that io_uring_enter, so the
// request never leaves the JS thread; the pool costs a queue lock, a futex wake of a
// worker and an async wake-up of the loop per request, which profiling showed to be most
// of the server's time. What cannot complete inline (a read from disk, fdatasync,
// fallocate, and buffered writes on filesystems without async buffered writes, such as
// ext4) runs in the kernel (async buffered read, io-wq worker) and posts its completion
// later; the ring fd is polled by libuv, and each wake-up reaps every completion and
// hands them to JS in one call. io_uring_enter starts disk I/O but never waits for it,
// so the loop does not stall on a cold cache.
//
// punchHole/zeroRange (free functions): fallocate(2) on the libuv pool, for a store that
// cannot have a ring (io_uring disabled by sysctl or seccomp).
#include <napi.h>

#include <fcntl.h>
#include <linux/falloc.h>
#include <liburing.h>
#include <sys/uio.h>
#include <uv.h>

#include <cerrno>
#include <climits>
#include <cstring>
#include <memory>
#include <vector>

#include "errors.h"
#include "ring-poll.h"

namespace {

using ublk::ErrnoError;
using ublk::RingPoll;

// Ids index a table of iovec arrays; JS reuses small ids, so this bound is generous.
constexpr uint32_t kMaxId = 1u << 20;

class FileRing : public Napi::ObjectWrap<FileRing>, public RingPoll::Owner {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FileRing",
                       {
                           InstanceMethod<&FileRing::Read>("read"),
                           InstanceMethod<&FileRing::ReadNowait>("readNowait"),
                           InstanceMethod<&FileRing::Write>("write"),
                           InstanceMethod<&FileRing::Writev>("writev"),
                           InstanceMethod<&FileRing::Fdatasync>("fdatasync"),
                           InstanceMethod<&FileRing::PunchHole>("punchHole"),
                           InstanceMethod<&FileRing::ZeroRange>("zeroRange"),
                           InstanceMethod<&FileRing::Submit>("submit"),
                           InstanceMethod<&FileRing::Close>("close"),
                       });
  }

  // new FileRing(fd, entries, results, onComplete)
  explicit FileRing(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FileRing>(info) {
    Napi::Env env = info.Env();
    if (info.Length() != 4 || !info[0].IsNumber() || !info[1].IsNumber() || !info[3].IsFunction())
      throw Napi::TypeError::New(env, "expected (fd, entries, results, onComplete)");
    if (!info[2].IsTypedArray() || info[2].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, "results must be an Int32Array");
    fd_ = info[0].As<Napi::Number>().Int32Value();
    int64_t entries = info[1].As<Napi::Number>().Int64Value();
    if (fd_ < 0) throw Napi::RangeError::New(env, "fd out of range");
    if (entries < 1 || entries > 4096) throw Napi::RangeError::New(env, "entries must be 1 to 4096");
    Napi::Int32Array results = info[2].As<Napi::Int32Array>();
    capacity_ = static_cast<uint32_t>(results.ElementLength() / 2);
    if (capacity_ == 0) throw Napi::RangeError::New(env, "results must hold at least one (id, result) pair");

    // The CQ is larger than the SQ: more requests may be in flight than fit one
    // submission batch, and a CQ overflow would make io_uring_enter fail with EBUSY.
    io_uring_params p{};
    p.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL;
    p.cq_entries = static_cast<uint32_t>(entries) * 8;
    int rc = io_uring_queue_init_params(static_cast<unsigned>(entries), &ring_, &p);
    if (rc < 0) throw ErrnoError(env, -rc, "io_uring_setup");
    ringUp_ = true;
    // A registered file saves an fget/fput per request; without it, plain fds work too.
    if (io_uring_register_files(&ring_, &fd_, 1) == 0) {
      sqeFd_ = 0;
      sqeFlags_ = IOSQE_FIXED_FILE;
    } else {
      sqeFd_ = fd_;
    }

    try {
      poll_.Start(env, ring_.ring_fd, this);
    } catch (...) {
      Teardown();
      throw;
    }
    // An idle ring must not keep the process alive; Track() refs the handle while
    // requests are in flight.
    poll_.Unref();

    results_ = Napi::Persistent(results);
    // The callback (and through it the caller's state, buffers included) is held by a
    // property of this object, not by a strong native reference: an idle ring its owner
    // dropped can then be collected with the owner, cycle and all. While requests are in
    // flight, Track keeps this object, so the callback too, alive.
    Napi::Function onComplete = info[3].As<Napi::Function>();
    Value().DefineProperty(Napi::PropertyDescriptor::Value("onComplete", onComplete, napi_default));
    onComplete_ = Napi::Weak(onComplete);
    asyncContext_ = std::make_unique<Napi::AsyncContext>(env, "netdisk:file-ring");
  }

  ~FileRing() override {
    // Reached by garbage collection of an idle ring never closed (in-flight requests
    // keep the object referenced, see Track), or at environment teardown (after
    // OnEnvGone, which leaves no poll open).
    poll_.Close();
    Teardown();
    // napi_async_destroy is not safe while the environment is being torn down.
    if (envGone_) static_cast<void>(asyncContext_.release());
  }

 private:
  // read(id, buf, bufOffset, length, position): length bytes at position into buf.
  Napi::Value Read(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    uint8_t* data;
    uint32_t length;
    uint64_t position;
    Span(info, &id, &data, &length, &position);
    io_uring_sqe* sqe = Sqe(env, id);
    io_uring_prep_read(sqe, sqeFd_, data, length, position);
    sqe->flags |= sqeFlags_;
    return env.Undefined();
  }

  // readNowait(buf, bufOffset, length, position): preadv2 with RWF_NOWAIT, on this thread.
  // Returns the bytes read (page-cached data only, so possibly fewer than asked) or -errno:
  // -EAGAIN when nothing is cached, -EOPNOTSUPP where the filesystem cannot promise not to
  // block. It never waits for the disk, and a lone read saves the ring round trip.
  Napi::Value ReadNowait(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw Napi::Error::New(env, "ring is closed");
    uint8_t* data;
    uint32_t length;
    uint64_t position;
    BufferSpan(info, 0, &data, &length, &position);
    iovec iov{data, length};
    ssize_t n;
    do {
      n = preadv2(fd_, &iov, 1, static_cast<off_t>(position), RWF_NOWAIT);
    } while (n < 0 && errno == EINTR);
    return Napi::Number::New(env, n < 0 ? -errno : static_cast<double>(n));
  }

  // write(id, buf, bufOffset, length, position)
  Napi::Value Write(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id;
    uint8_t* data;
    uint32_t length;
    uint64_t position;
    Span(info, &id, &data, &length, &position);
    io_uring_sqe* sqe = Sqe(env, id);
    io_uring_prep_write(sqe, sqeFd_, data, length, position);
    sqe->flags |= sqeFlags_;
    return env.Undefined();
  }

  // writev(id, bufs, position): the buffers back to back at position. The iovec array
  // lives in iovs_[id] until the completion, as an async (io-wq) write reads it late.
  Napi::Value Writev(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id = Id(info);
    if (!info[1].IsArray()) throw Napi::TypeError::New(env, "bufs must be an array of Buffers");
    Napi::Array bufs = info[1].As<Napi::Array>();
    uint64_t position = Position(info[2]);
    uint32_t n = bufs.Length();
    if (n == 0 || n > IOV_MAX) throw Napi::RangeError::New(env, "writev takes 1 to IOV_MAX buffers");
    if (iovs_.size() <= id) iovs_.resize(id + 1);
    std::vector<iovec>& iov = iovs_[id];
    iov.resize(n);
    for (uint32_t i = 0; i < n; i++) {
      Napi::Value v = bufs[i];
      if (!v.IsTypedArray() || v.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
        throw Napi::TypeError::New(env, "bufs must be an array of Buffers");
      Napi::Uint8Array b = v.As<Napi::Uint8Array>();
      iov[i].iov_base = b.Data();
      iov[i].iov_len = b.ByteLength();
    }
    io_uring_sqe* sqe = Sqe(env, id);
    io_uring_prep_writev(sqe, sqeFd_, iov.data(), n, position);
    sqe->flags |= sqeFlags_;
    return env.Undefined();
  }

  // fdatasync(id): makes every write completed before it durable.
  Napi::Value Fdatasync(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    uint32_t id = Id(info);
    io_uring_sqe* sqe = Sqe(env, id);
    io_uring_prep_fsync(sqe, sqeFd_, IORING_FSYNC_DATASYNC);
    sqe->flags |= sqeFlags_;
    return env.Undefined();
  }

  // punchHole(id, offset, length): deallocates the range; it reads as zeros, size unchanged.
  Napi::Value PunchHole(const Napi::CallbackInfo& info) {
    return Fallocate(info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
  }

  // zeroRange(id, offset, length): zeros the range and keeps it allocated (NBD_CMD_FLAG_NO_HOLE).
  Napi::Value ZeroRange(const Napi::CallbackInfo& info) {
    return Fallocate(info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
  }

  Napi::Value Fallocate(const Napi::CallbackInfo& info, int mode) {
    Napi::Env env = info.Env();
    uint32_t id = Id(info);
    uint64_t offset = Position(info[1]);
    uint64_t length = Position(info[2]);
    io_uring_sqe* sqe = Sqe(env, id);
    io_uring_prep_fallocate(sqe, sqeFd_, mode, static_cast<off_t>(offset), static_cast<off_t>(length));
    sqe->flags |= sqeFlags_;
    return env.Undefined();
  }

  // submit(): one io_uring_enter for everything queued, then the completions already
  // posted (page-cached reads and writes finish inside the enter) are written to results
  // as (id, res) pairs; returns their count. Later completions arrive through onComplete.
  Napi::Value Submit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw Napi::Error::New(env, "ring is closed");
    int rc = Flush();
    if (rc < 0) throw ErrnoError(env, -rc, "io_uring_enter");
    return Napi::Number::New(env, Reap());
  }

  // close(): stops polling and exits the ring. Requests still in flight are cancelled
  // by the kernel; the store closes only once its requests are done.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return env.Undefined();
    closed_ = true;
    poll_.Close();
    if (inflight_ > 0) Unref();
    inflight_ = 0;
    onComplete_.Reset();
    results_.Reset();
    if (invoking_ == 0) asyncContext_.reset();
    Teardown();
    return env.Undefined();
  }

  uint32_t Id(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw Napi::Error::New(env, "ring is closed");
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "id must be a number");
    int64_t id = info[0].As<Napi::Number>().Int64Value();
    if (id < 0 || id >= kMaxId) throw Napi::RangeError::New(env, "id out of range");
    return static_cast<uint32_t>(id);
  }

  static uint64_t Position(const Napi::Value& v) {
    if (!v.IsNumber()) throw Napi::TypeError::New(v.Env(), "offsets and lengths must be numbers");
    double d = v.As<Napi::Number>().DoubleValue();
    // Exact integers only: 2^53 is far beyond any file size.
    if (!(d >= 0 && d <= 9007199254740991.0) || d != static_cast<double>(static_cast<uint64_t>(d)))
      throw Napi::RangeError::New(v.Env(), "offsets and lengths must be non-negative integers");
    return static_cast<uint64_t>(d);
  }

  // (id, buf, bufOffset, length, position) with the span checked against the buffer.
  void Span(const Napi::CallbackInfo& info, uint32_t* id, uint8_t** data, uint32_t* length, uint64_t* position) {
    *id = Id(info);
    BufferSpan(info, 1, data, length, position);
  }

  // (buf, bufOffset, length, position) from info[first...]: the bytes of buf to use, checked
  // to lie inside it, and the file position.
  static void BufferSpan(const Napi::CallbackInfo& info, size_t first, uint8_t** data, uint32_t* length,
                         uint64_t* position) {
    Napi::Env env = info.Env();
    if (!info[first].IsTypedArray() || info[first].As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array)
      throw Napi::TypeError::New(env, "buf must be a Buffer");
    Napi::Uint8Array buf = info[first].As<Napi::Uint8Array>();
    uint64_t off = Position(info[first + 1]);
    uint64_t len = Position(info[first + 2]);
    if (off > buf.ByteLength() || len > buf.ByteLength() - off || len > INT32_MAX)
      throw Napi::RangeError::New(env, "span outside the buffer");
    *data = buf.Data() + off;
    *length = static_cast<uint32_t>(len);
    *position = Position(info[first + 3]);
  }

  // A free SQE tagged with id. A full SQ is submitted first: its completions are reaped
  // by the next submit() or wake-up, like any other.
  io_uring_sqe* Sqe(Napi::Env env, uint32_t id) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) {
      int rc = Flush();
      if (rc < 0) throw ErrnoError(env, -rc, "io_uring_enter");
      sqe = io_uring_get_sqe(&ring_);
      if (sqe == nullptr) throw ErrnoError(env, EBUSY, "io_uring_get_sqe");
    }
    Track(1);
    // io_uring_prep_* set every field but user_data (and reset flags).
    io_uring_sqe_set_data64(sqe, id);
    return sqe;
  }

  // While requests are in flight the poll handle keeps the loop alive and the JS object
  // (with its callback and, through it, every buffer the kernel may still touch) stays
  // referenced; an idle ring holds neither.
  void Track(int delta) {
    uint32_t before = inflight_;
    inflight_ += delta;
    if (before == 0 && inflight_ > 0) {
      Ref();
      poll_.Ref();
    } else if (before > 0 && inflight_ == 0) {
      poll_.Unref();
      Unref();
    }
  }

  // Submits what is queued. EBUSY/EAGAIN (completions must be reaped first) leave the
  // SQEs queued for the next call, made after the wake-up that reaps them.
  int Flush() {
    if (io_uring_sq_ready(&ring_) == 0) return 0;
    int rc;
    do {
      rc = io_uring_submit(&ring_);
    } while (rc == -EINTR);
    if (rc == -EBUSY || rc == -EAGAIN) return 0;
    return rc;
  }

  // Moves up to capacity completions into results; returns how many.
  uint32_t Reap() {
    int32_t* out = results_.Value().Data();
    uint32_t n = 0;
    unsigned head;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      if (n == capacity_) break;
      out[2 * n] = static_cast<int32_t>(cqe->user_data);
      out[2 * n + 1] = cqe->res;
      n++;
    }
    io_uring_cq_advance(&ring_, n);
    if (n > 0) Track(-static_cast<int>(n));
    return n;
  }

  // The environment is going away with the ring open (worker exit).
  void OnEnvGone() override {
    envGone_ = true;
    Teardown();
  }

  // One wake-up: queued SQEs held back by EBUSY go in, then every completion is handed
  // to JS, capacity at a time, one call each.
  void OnReadable(int status) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    // A local handle first: reaping the last request in flight drops the strong
    // reference (Track), and this object must survive until the callback has run.
    Napi::Object self = Value();
    if (status < 0) {
      // Not seen in practice: polling the ring fd failed, so no completion would ever
      // arrive and every request in flight would hang. Fail loudly instead.
      poll_.Stop();
      napi_fatal_exception(env, ErrnoError(env, -status, "uv_poll").Value());
      return;
    }
    int rc = Flush();
    if (rc < 0) {
      napi_fatal_exception(env, ErrnoError(env, -rc, "io_uring_enter").Value());
      return;
    }
    for (;;) {
      uint32_t n = Reap();
      if (n == 0) return;
      invoking_++;
      try {
        // MakeCallback, not Call: entered from the event loop, this runs the nextTick
        // queue afterwards, where the connections uncork the replies the callbacks wrote.
        onComplete_.MakeCallback(self, {Napi::Number::New(env, n)}, *asyncContext_);
      } catch (const Napi::Error& e) {
        napi_fatal_exception(env, e.Value());
      }
      invoking_--;
      if (closed_) {
        if (invoking_ == 0) asyncContext_.reset();
        return;
      }
      if (n < capacity_) return;
    }
  }

  void Teardown() {
    if (ringUp_) {
      io_uring_queue_exit(&ring_);
      ringUp_ = false;
    }
  }

  int fd_ = -1;
  int sqeFd_ = -1;
  uint8_t sqeFlags_ = 0;
  io_uring ring_{};
  bool ringUp_ = false;
  uint32_t capacity_ = 0;
  uint32_t inflight_ = 0;
  std::vector<std::vector<iovec>> iovs_;
  RingPoll poll_;
  Napi::Reference<Napi::Int32Array> results_;
  Napi::FunctionReference onComplete_;
  std::unique_ptr<Napi::AsyncContext> asyncContext_;
  int invoking_ = 0;
  bool closed_ = false;
  bool envGone_ = false;
};

// ---- fallocate on the libuv pool (stores without a ring) ----

class FallocateWorker : public Napi::AsyncWorker {
 public:
  FallocateWorker(Napi::Env env, int fd, int mode, int64_t offset, int64_t length)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd), mode_(mode), offset_(offset), length_(length) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int r;
    do {
      r = fallocate(fd_, mode_, offset_, length_);
    } while (r < 0 && errno == EINTR);
    err_ = r < 0 ? errno : 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ == 0) {
      deferred_.Resolve(env.Undefined());
      return;
    }
    deferred_.Reject(ErrnoError(env, err_, "fallocate").Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  int mode_;
  int64_t offset_;
  int64_t length_;
  int err_ = 0;
};

Napi::Value RunFallocate(const Napi::CallbackInfo& info, int mode) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "expected (fd, offset, length)");
  }
  auto* w = new FallocateWorker(env, info[0].As<Napi::Number>().Int32Value(), mode,
                                info[1].As<Napi::Number>().Int64Value(),
                                info[2].As<Napi::Number>().Int64Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  return RunFallocate(info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
}

Napi::Value ZeroRange(const Napi::CallbackInfo& info) {
  return RunFallocate(info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("FileRing", FileRing::Define(env));
  exports.Set("punchHole", Napi::Function::New(env, PunchHole));
  exports.Set("zeroRange", Napi::Function::New(env, ZeroRange));
  return exports;
}

}  // namespace

NODE_API_MODULE(fileops, Init)
