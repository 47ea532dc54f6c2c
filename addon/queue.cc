// One ublk queue: the descriptor array mmapped from /dev/ublkcN, one buffer per
// tag, one io_uring carrying FETCH_REQ/COMMIT_AND_FETCH_REQ and, once a socket is
// attached, the NBD connection's sends and receives (nbd-ring.h), and the ring fd
// polled by the libuv loop of the thread that created the queue. One wake-up reaps
// both kinds of completion and makes one JS call; one commit() submits a tick's
// commits and sends with one io_uring_enter.
//
// Kernel rules this file is shaped by (Documentation/block/ublk.rst, ublk_drv.c):
// - The task that issues a queue's FETCH_REQs becomes the queue's daemon; every
//   later command for the queue must come from that task (EINVAL otherwise). A
//   Queue therefore lives and dies on one thread: it is created, started,
//   committed and polled on the JS thread that constructed it, with no helper
//   threads.
// - Requests reach the daemon as io_uring task_work on that task, which copies
//   WRITE data into the tag's buffer and posts the CQE. The ring is created
//   without COOP_TASKRUN/DEFER_TASKRUN, so io_uring notifies with TWA_SIGNAL:
//   a thread asleep in epoll_wait is woken, runs the task_work on its way back
//   to user space, and the posted CQE makes the ring fd readable for libuv.
//   (With COOP_TASKRUN the task_work would wait for the thread's next syscall.)
// - Only UBLK_IO_RES_ABORT (-ENODEV) means a tag is finished; every other
//   completion carries a request (0) or reports a refused command.
// - Zero copy (a device added with UBLK_F_AUTO_BUF_REG): the kernel copies nothing into
//   the tag buffers. Each FETCH/COMMIT_AND_FETCH names fixed buffer index = tag, where the
//   kernel registers the tag's next request's pages in this ring's sparse buffer table
//   before the CQE, and unregisters them at that request's commit. The tag buffers stay
//   mapped but untouched (no memory behind them): an attached socket reads their
//   addresses as the fixed buffer of that tag (nbd-ring.h), so JS keeps passing
//   buffer(tag) views and a reconnect's resend finds the same pages until the commit.
#include "queue.h"

#include <liburing.h>
#include <sys/mman.h>
#include <unistd.h>
#include <uv.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "errors.h"
#include "js-call.h"
#include "nbd-ring.h"
#include "ring-poll.h"
#include "uapi/ublk_cmd.h"

namespace ublk {
namespace {

// A mapping shared by the Queue and the ArrayBuffer over it; unmapped when both
// have let go, so JS can never read unmapped memory through a stale Buffer.
struct Region {
  void* addr;
  size_t len;
  int refs;

  void Release() {
    if (--refs == 0) {
      munmap(addr, len);
      delete this;
    }
  }
};

void ReleaseRegion(Napi::Env, void*, Region* region) { region->Release(); }

enum TagState : uint8_t {
  kIdle,      // not yet fetched
  kInKernel,  // a FETCH or COMMIT_AND_FETCH is outstanding
  kOwned,     // a request was handed to JS and awaits its commit
  kAborted,   // completed with UBLK_IO_RES_ABORT: the device is stopping
  kFailed,    // the kernel refused the command; nothing is outstanding
};

size_t PageSize() { return static_cast<size_t>(sysconf(_SC_PAGESIZE)); }
size_t RoundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

class Queue : public Napi::ObjectWrap<Queue>, public RingPoll::Owner {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "Queue",
                       {
                           InstanceMethod<&Queue::Start>("start"),
                           InstanceMethod<&Queue::Commit>("commit"),
                           InstanceMethod<&Queue::Close>("close"),
                           InstanceMethod<&Queue::AttachSocket>("attachSocket"),
                           InstanceMethod<&Queue::SendRequest>("sendRequest"),
                           InstanceMethod<&Queue::DetachSocket>("detachSocket"),
                       });
  }

  explicit Queue(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Queue>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    Napi::Object opts = info[0].As<Napi::Object>();
    qid_ = static_cast<uint16_t>(UintOption(opts, "qid", 0, 4095));
    depth_ = UintOption(opts, "depth", 1, uapi::kMaxQueueDepth);
    bufBytes_ = UintOption(opts, "bufBytes", 1, 32u << 20);
    charFd_ = static_cast<int>(UintOption(opts, "charFd", 0, INT32_MAX));
    socketSlots_ = opts.Has("socketSlots") ? UintOption(opts, "socketSlots", 0, 4096) : 0;
    if (opts.Has("zeroCopy")) {
      Napi::Value zc = opts.Get("zeroCopy");
      if (!zc.IsBoolean()) throw Napi::TypeError::New(env, "options.zeroCopy must be a boolean");
      zeroCopy_ = zc.As<Napi::Boolean>().Value();
    }
    if (opts.Has("userCopy")) {
      Napi::Value uc = opts.Get("userCopy");
      if (!uc.IsBoolean()) throw Napi::TypeError::New(env, "options.userCopy must be a boolean");
      userCopy_ = uc.As<Napi::Boolean>().Value();
    }
    // Only a socket on this ring can reach the registered pages.
    if (zeroCopy_ && socketSlots_ == 0) throw Napi::TypeError::New(env, "options.zeroCopy needs socketSlots");
    if (userCopy_ && !zeroCopy_) throw Napi::TypeError::New(env, "options.userCopy needs zeroCopy");
    Napi::Value encode = opts.Get("ioctlEncode");
    if (!encode.IsBoolean()) throw Napi::TypeError::New(env, "options.ioctlEncode must be a boolean");
    bool ioctlEncode = encode.As<Napi::Boolean>().Value();
    fetchOp_ = ioctlEncode ? uapi::kIoFetchReqEncoded : uapi::kIoFetchReq;
    commitOp_ = ioctlEncode ? uapi::kIoCommitAndFetchReqEncoded : uapi::kIoCommitAndFetchReq;

    try {
      Setup(env);
    } catch (...) {
      ReleaseKernel();
      if (descs_ != nullptr) descs_->Release();
      if (tags_ != nullptr) tags_->Release();
      descs_ = tags_ = nullptr;
      closed_ = true;
      throw;
    }
  }

  ~Queue() override {
    // Reached by garbage collection of a queue never started or already closed,
    // or at environment teardown. JS cannot run here, so the ArrayBuffers are
    // not detached; their own finalizers release the memory.
    poll_.Close();
    if (!closed_) {
      closed_ = true;
      ReleaseKernel();
      if (descs_ != nullptr) descs_->Release();
      if (tags_ != nullptr) tags_->Release();
    }
    // napi_async_destroy is not safe while the environment is being torn down.
    if (envGone_) calls_.Abandon();
  }

 private:
  void Setup(Napi::Env env) {
    const size_t page = PageSize();

    // The descriptor array: read-only (the driver refuses writable mappings),
    // exactly round_up(depth * 24, page) long, at this queue's slot of
    // round_up(UBLK_MAX_QUEUE_DEPTH * 24, page) bytes.
    size_t descLen = RoundUp(depth_ * sizeof(uapi::IoDesc), page);
    off_t descOff = static_cast<off_t>(uapi::kCmdBufOffset +
                                       qid_ * RoundUp(uapi::kMaxQueueDepth * sizeof(uapi::IoDesc), page));
    void* d = mmap(nullptr, descLen, PROT_READ, MAP_SHARED | MAP_POPULATE, charFd_, descOff);
    if (d == MAP_FAILED) throw ErrnoError(env, errno, "mmap /dev/ublkc");
    descs_ = new Region{d, descLen, 1};

    // Tag buffers, each page-aligned. In copy mode the kernel copies WRITE data
    // in before the request's CQE and READ data out when the commit arrives.
    stride_ = RoundUp(bufBytes_, page);
    size_t tagLen = stride_ * depth_;
    void* t = mmap(nullptr, tagLen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (t == MAP_FAILED) throw ErrnoError(env, errno, "mmap");
    tags_ = new Region{t, tagLen, 1};

    // SQ: one entry per tag (each tag has at most one command in flight), plus, with
    // a socket, a chain of sends for every slot and the receive (a chain is never split
    // across two submits: nbd-ring.h), plus a cancel and a wake-up NOP. CQ defaults to
    // twice that, so it cannot overflow. SUBMIT_ALL keeps one refused command from
    // holding back the rest of a batch.
    uint32_t entries = depth_ + (socketSlots_ > 0 ? NbdRing::MaxSqesFor(socketSlots_, zeroCopy_) + 2 : 0);
    int rc = io_uring_queue_init(entries, &ring_, IORING_SETUP_SUBMIT_ALL);
    if (rc < 0) throw ErrnoError(env, -rc, "io_uring_setup");
    ringUp_ = true;
    // A registered file saves a file-table lookup and refcount per command.
    rc = io_uring_register_files(&ring_, &charFd_, 1);
    if (rc < 0) throw ErrnoError(env, -rc, "io_uring_register");
    if (zeroCopy_) {
      // The table the kernel's auto registration fills: one empty slot per tag.
      rc = io_uring_register_buffers_sparse(&ring_, depth_);
      if (rc < 0) throw ErrnoError(env, -rc, "io_uring_register");
      fixed_ = FixedBuffers{static_cast<const uint8_t*>(tags_->addr), stride_, depth_, bufBytes_,
                            userCopy_ ? charFd_ : -1, qid_};
    }

    state_.assign(depth_, kIdle);
    errTags_.assign(depth_, 0);
    errResults_.assign(depth_, 0);

    // ArrayBuffers over both regions; Buffer views made by Buffer.from share
    // them, so close() detaching the two ArrayBuffers empties every view.
    descs_->refs++;
    Napi::ArrayBuffer descAb = Napi::ArrayBuffer::New(env, descs_->addr, descs_->len, ReleaseRegion, descs_);
    descAb_ = Napi::Persistent(descAb);
    tags_->refs++;
    Napi::ArrayBuffer tagAb = Napi::ArrayBuffer::New(env, tags_->addr, tags_->len, ReleaseRegion, tags_);
    tagAb_ = Napi::Persistent(tagAb);

    Napi::Object bufferCtor = env.Global().Get("Buffer").As<Napi::Object>();
    Napi::Function from = bufferCtor.Get("from").As<Napi::Function>();
    Napi::Array buffers = Napi::Array::New(env, depth_);
    for (uint32_t tag = 0; tag < depth_; tag++) {
      buffers.Set(tag, from.Call(bufferCtor, {tagAb, Napi::Number::New(env, static_cast<double>(tag * stride_)),
                                              Napi::Number::New(env, bufBytes_)}));
    }
    Napi::Object self = Value();
    self.Set("buffers", buffers);
    self.Set("descs", from.Call(bufferCtor, {descAb, Napi::Number::New(env, 0),
                                             Napi::Number::New(env, depth_ * sizeof(uapi::IoDesc))}));
  }

  // start(onEvents, readyTags, onStopped, onError): onEvents(requests, replies, socketFailure)
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw Napi::Error::New(env, "queue is closed");
    if (started_) throw Napi::Error::New(env, "queue already started");
    if (!info[0].IsFunction() || !info[2].IsFunction() || !info[3].IsFunction())
      throw Napi::TypeError::New(env, "start(onEvents, readyTags, onStopped, onError): callbacks must be functions");
    if (!info[1].IsTypedArray() || info[1].As<Napi::TypedArray>().TypedArrayType() != napi_uint16_array)
      throw Napi::TypeError::New(env, "readyTags must be a Uint16Array");
    Napi::Uint16Array ready = info[1].As<Napi::Uint16Array>();
    if (ready.ElementLength() < depth_) throw Napi::RangeError::New(env, "readyTags must hold depth entries");

    for (uint32_t tag = 0; tag < depth_; tag++) {
      if (!Prep(fetchOp_, static_cast<uint16_t>(tag), 0)) throw Napi::Error::New(env, "submission queue full");
      state_[tag] = kInKernel;
    }
    int rc = Submit();
    if (rc < 0) throw ErrnoError(env, -rc, "io_uring_enter");

    poll_.Start(env, ring_.ring_fd, this);
    polling_ = true;
    // IORING_FEAT_EXT_ARG: io_uring_enter waits with a timeout (liburing would otherwise
    // add a timeout SQE of its own to the ring).
    canLinger_ = napi_get_uv_event_loop(env, &loop_) == napi_ok && (ring_.features & IORING_FEAT_EXT_ARG) != 0;

    onRequests_ = Napi::Persistent(info[0].As<Napi::Function>());
    ready_ = Napi::Persistent(ready);
    readyData_ = ready.Data();
    onStopped_ = Napi::Persistent(info[2].As<Napi::Function>());
    onError_ = Napi::Persistent(info[3].As<Napi::Function>());
    calls_.Open(env, "ublk:queue", Value());
    // While polling, the loop references the queue; keep the object alive.
    Ref();
    started_ = true;
    return env.Undefined();
  }

  // commit(pairs, count): pairs[2i] = tag, pairs[2i+1] = result. One SQE per pair and
  // the socket's queued sends (and its next receive), one io_uring_enter for all of them.
  Napi::Value Commit(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_ || !started_) throw Napi::Error::New(env, closed_ ? "queue is closed" : "queue not started");
    if (!info[0].IsTypedArray() || info[0].As<Napi::TypedArray>().TypedArrayType() != napi_int32_array)
      throw Napi::TypeError::New(env, "pairs must be an Int32Array");
    Napi::Int32Array pairs = info[0].As<Napi::Int32Array>();
    if (!info[1].IsNumber()) throw Napi::TypeError::New(env, "count must be a number");
    int64_t count = info[1].As<Napi::Number>().Int64Value();
    if (count < 0 || static_cast<size_t>(count) * 2 > pairs.ElementLength())
      throw Napi::RangeError::New(env, "count exceeds pairs");

    const int32_t* p = pairs.Data();
    int64_t prepared = 0;
    const char* problem = nullptr;
    for (int64_t i = 0; i < count; i++) {
      int32_t tag = p[2 * i];
      if (tag < 0 || static_cast<uint32_t>(tag) >= depth_ || state_[tag] != kOwned) {
        problem = "commit of a tag that holds no request";
        break;
      }
      if (!Prep(commitOp_, static_cast<uint16_t>(tag), p[2 * i + 1])) {
        problem = "submission queue full";
        break;
      }
      state_[tag] = kInKernel;
      prepared++;
    }
    PrepareSocket();
    // Also what a wake-up prepared and left for this commit (the socket's receive). Called
    // from a wake-up that lingers, the submit is its wait's (Linger).
    if (!deferSubmit_ && (prepared > 0 || io_uring_sq_ready(&ring_) > 0)) {
      int rc = Submit();
      if (rc < 0) throw ErrnoError(env, -rc, "io_uring_enter");
      ReapSends();
    }
    if (problem != nullptr) throw Napi::RangeError::New(env, problem);
    return env.Undefined();
  }

  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return env.Undefined();
    closed_ = true;
    poll_.Close();
    if (started_) Unref();
    onRequests_.Reset();
    onStopped_.Reset();
    onError_.Reset();
    ready_.Reset();
    readyData_ = nullptr;
    replies_.Reset();
    calls_.Close();
    // Detach first: from here on every Buffer view has length 0, so no JS read
    // can reach the memory released below.
    for (Napi::Reference<Napi::ArrayBuffer>* ref : {&descAb_, &tagAb_}) {
      if (ref->IsEmpty()) continue;
      Napi::ArrayBuffer ab = ref->Value();
      if (!ab.IsDetached()) ab.Detach();
      ref->Reset();
    }
    ReleaseKernel();
    descs_->Release();
    tags_->Release();
    descs_ = tags_ = nullptr;
    return env.Undefined();
  }

  // attachSocket(fd, replies): from now on the connected stream socket fd (after its NBD
  // handshake; never closed here) is driven on this ring. replies: (socketSlots + 1) * 16
  // bytes, where each wake-up puts the reply headers it passes on.
  Napi::Value AttachSocket(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) throw Napi::Error::New(env, "queue is closed");
    if (socketSlots_ == 0) throw Napi::Error::New(env, "queue was made without socketSlots");
    if (nbd_ != nullptr) throw Napi::Error::New(env, "a socket is already attached");
    if (!info[0].IsNumber()) throw Napi::TypeError::New(env, "attachSocket(fd, replies)");
    int64_t fd = info[0].As<Napi::Number>().Int64Value();
    if (fd < 0 || fd > INT32_MAX) throw Napi::RangeError::New(env, "fd out of range");
    if (!info[1].IsBuffer()) throw Napi::TypeError::New(env, "replies must be a Buffer");
    Napi::Buffer<uint8_t> replies = info[1].As<Napi::Buffer<uint8_t>>();
    if (replies.Length() < (socketSlots_ + 1) * NbdRing::kReplyBytes)
      throw Napi::RangeError::New(env, "replies must hold socketSlots + 1 headers");
    nbd_ = std::make_unique<NbdRing>(static_cast<int>(fd), socketSlots_, ++connSeq_, zeroCopy_ ? &fixed_ : nullptr);
    failureReported_ = false;
    replies_ = Napi::Persistent(replies);
    if (nbd_->PrepareRecv(&ring_) > 0) {
      int rc = Submit();
      if (rc < 0) {
        DropSocket();
        throw ErrnoError(env, -rc, "io_uring_enter");
      }
    }
    // A queue whose tags all ended stopped polling; the socket's completions still need it.
    if (started_ && !polling_ && !poll_.Resume()) throw Napi::Error::New(env, "cannot poll the ring again");
    polling_ = polling_ || started_;
    return env.Undefined();
  }

  // sendRequest(slot, gen, header, data, into): queues a request for the next commit();
  // false once the connection has failed.
  Napi::Value SendRequest(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (nbd_ == nullptr) throw Napi::Error::New(env, closed_ ? "queue is closed" : "no socket attached");
    if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsBuffer())
      throw Napi::TypeError::New(env, "sendRequest(slot, gen, header, data, into)");
    uint32_t slot = info[0].As<Napi::Number>().Uint32Value();
    uint32_t gen = info[1].As<Napi::Number>().Uint32Value();
    Napi::Buffer<uint8_t> header = info[2].As<Napi::Buffer<uint8_t>>();
    if (header.Length() < NbdRing::kRequestHeaderBytes) throw Napi::RangeError::New(env, "header too short");
    const uint8_t* data = nullptr;
    uint32_t dataLen = 0;
    uint8_t* into = nullptr;
    uint32_t intoLen = 0;
    if (info[3].IsBuffer()) {
      Napi::Buffer<uint8_t> b = info[3].As<Napi::Buffer<uint8_t>>();
      data = b.Data();
      dataLen = static_cast<uint32_t>(b.Length());
    }
    if (info[4].IsBuffer()) {
      Napi::Buffer<uint8_t> b = info[4].As<Napi::Buffer<uint8_t>>();
      into = b.Data();
      intoLen = static_cast<uint32_t>(b.Length());
    }
    if (nbd_->failed()) return Napi::Boolean::New(env, false);
    if (!nbd_->Queue(slot, gen, header.Data(), data, dataLen, into, intoLen))
      throw Napi::RangeError::New(env, "slot out of range or still in flight");
    return Napi::Boolean::New(env, true);
  }

  // detachSocket(): every operation on the socket is cancelled and reaped (its memory is
  // free for JS again); the socket itself is left to its owner. Idempotent.
  Napi::Value DetachSocket(const Napi::CallbackInfo& info) {
    DropSocket();
    return info.Env().Undefined();
  }

  // Stops the attached connection: cancels its operations (by fd: the ublk commands on
  // the same ring stay) and reaps until none is in flight. One the kernel does not
  // cancel is retired, to be freed when its last CQE comes.
  void DropSocket() {
    if (nbd_ == nullptr) return;
    // Reaped while still attached, so its CQEs find it.
    if (ringUp_) WaitQuiet(nbd_.get());
    if (nbd_->inFlight() > 0) retired_.push_back(std::move(nbd_));
    nbd_.reset();
    // Requests the reaping took off the ring reach JS on the next wake-up: make one.
    if (nReady_ > 0 && ringUp_) Wake();
    if (finished_ == depth_ && polling_ && retired_.empty()) {
      polling_ = false;
      poll_.Stop();
    }
  }

  // Cancels n's operations and reaps (every CQE, the queue's too) until none is in flight.
  void WaitQuiet(NbdRing* n) {
    n->Stop();
    bool cancelled = false, shut = false;
    // Cancelled socket operations complete at once; the bound only guards against a
    // kernel that does not cancel them: then shutdown() ends them, and failing that
    // they stay retired until their last CQE.
    for (int i = 0; i < 100 && n->inFlight() > 0; i++) {
      if (!cancelled) {
        io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
        if (sqe != nullptr) {
          io_uring_prep_cancel_fd(sqe, n->fd(), IORING_ASYNC_CANCEL_ALL);
          io_uring_sqe_set_data64(sqe, kOwnUserData);
          cancelled = Submit() >= 0;
        }
      } else if (i == 20 && !shut) {
        shutdown(n->fd(), SHUT_RDWR);
        shut = true;
      }
      io_uring_cqe* cqe = nullptr;
      __kernel_timespec ts{0, 10 * 1000 * 1000};
      int rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
      if (rc < 0 && rc != -ETIME && rc != -EINTR) break;
      Reap();
    }
  }

  // A send to a socket with room completes inside the io_uring_enter that submitted it, its
  // CQE first in line. Taken here, such CQEs leave the ring fd unreadable, so the loop does
  // not wake up for them alone: one epoll_pwait and one loop turn less per request at QD1
  // (bench/results/profile-2026-11-30.md). Stops at the first other CQE (a request, a
  // receive): those make the wake-up that hands them to JS.
  void ReapSends() {
    for (int round = 0; round < 4 && nbd_ != nullptr && !nbd_->failed(); round++) {
      unsigned head, seen = 0;
      io_uring_cqe* cqe;
      io_uring_for_each_cqe(&ring_, head, cqe) {
        uint64_t ud = cqe->user_data;
        if ((ud & NbdRing::kUserDataBit) == 0 || !NbdRing::IsSend(ud) || NbdRing::ConnOf(ud) != nbd_->conn()) break;
        nbd_->OnCqe(cqe);
        seen++;
      }
      io_uring_cq_advance(&ring_, seen);
      if (seen == 0) return;
      if (nbd_->failed()) {
        // A failed send: JS must hear of it, and only a wake-up tells it.
        Wake();
        return;
      }
      // Sends that waited for the chain just completed go now (and may complete at once too).
      if (nbd_->PrepareSends(&ring_) == 0 || Submit() < 0) return;
    }
  }

  // Prepares the attached socket's next sends and receive, unless it failed.
  void PrepareSocket() {
    if (nbd_ == nullptr || nbd_->failed()) return;
    nbd_->PrepareSends(&ring_);
    nbd_->PrepareRecv(&ring_);
  }

  // Makes the ring fd readable (a NOP's CQE): the next loop turn runs OnReadable.
  void Wake() {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return;
    io_uring_prep_nop(sqe);
    io_uring_sqe_set_data64(sqe, kOwnUserData);
    Submit();
  }

  // Drops everything that holds /dev/ublkcN (the ring with its registered file
  // and in-flight commands, the descriptor mapping): DEL_DEV waits for that.
  // Runs without JS, from close(), the destructor or environment teardown.
  void ReleaseKernel() {
    // No request reaches JS any more; the array may be going away with the environment.
    readyData_ = nullptr;
    if (ringUp_) {
      // The socket's operations point into memory freed with it: none may outlive this.
      DropSocket();
      // A retired connection's socket may be closed and its number reused: it cannot be
      // cancelled by fd any more. The ring's exit ends its operations; their memory
      // (never expected to exist: see WaitQuiet) is left allocated rather than risked.
      for (std::unique_ptr<NbdRing>& n : retired_) static_cast<void>(n.release());
      retired_.clear();
      io_uring_queue_exit(&ring_);
      ringUp_ = false;
    }
    if (descs_ != nullptr && !descsUnlinked_) {
      // Replace the mapping of /dev/ublkcN with anonymous zero pages at the same
      // address: the file reference goes now, while a Buffer that could not be
      // detached (no JS here) still points at readable memory.
      void* r = mmap(descs_->addr, descs_->len, PROT_READ, MAP_FIXED | MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
      if (r == MAP_FAILED) {
        // Cannot keep the address: give it up; the region is not unmapped again.
        munmap(descs_->addr, descs_->len);
        descs_->len = 0;
      }
      descsUnlinked_ = true;
    }
  }

  bool Prep(uint32_t op, uint16_t tag, int32_t result) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe == nullptr) return false;
    std::memset(sqe, 0, sizeof *sqe);
    sqe->opcode = IORING_OP_URING_CMD;
    sqe->fd = 0;  // index in the registered files
    sqe->flags = IOSQE_FIXED_FILE;
    sqe->cmd_op = op;
    sqe->user_data = tag;
    uapi::IoCmd cmd{};
    cmd.q_id = qid_;
    cmd.tag = tag;
    cmd.result = result;
    if (zeroCopy_) {
      sqe->addr = uapi::AutoBufRegAddr(tag);
    } else {
      cmd.addr = reinterpret_cast<uintptr_t>(tags_->addr) + tag * stride_;
    }
    std::memcpy(sqe->cmd, &cmd, sizeof cmd);
    return true;
  }

  int Submit() {
    int rc;
    do {
      rc = io_uring_submit(&ring_);
    } while (rc == -EINTR);
    return rc;
  }

  // The environment (a worker, or the main thread at exit) is going away while
  // the queue is still open: release the kernel side; RingPoll closes the handle
  // and lets the environment finish once it is closed.
  void OnEnvGone() override {
    envGone_ = true;
    ReleaseKernel();
  }

  // Takes every CQE: tags become ready (or finished), socket completions go to their
  // connection. Runs in wake-ups and while a socket is being quiesced.
  void Reap() {
    uint16_t* ready = readyData_;
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      seen++;
      uint64_t ud = cqe->user_data;
      if ((ud & NbdRing::kUserDataBit) != 0) {
        OnSocketCqe(cqe);
        continue;
      }
      uint64_t tag = ud;
      if (tag >= depth_ || state_[tag] != kInKernel) continue;
      if (cqe->res == uapi::kIoResOk) {
        if (ready == nullptr) continue;  // not started: cannot happen (no fetch was issued)
        state_[tag] = kOwned;
        ready[nReady_++] = static_cast<uint16_t>(tag);
      } else if (cqe->res == uapi::kIoResAbort) {
        state_[tag] = kAborted;
        finished_++;
      } else {
        // A refused FETCH/COMMIT (EINVAL, EBUSY...) or NEED_GET_DATA, which we
        // never negotiate: nothing is outstanding for this tag any more.
        state_[tag] = kFailed;
        finished_++;
        errTags_[nErrors_] = static_cast<uint16_t>(tag);
        errResults_[nErrors_++] = cqe->res;
      }
    }
    io_uring_cq_advance(&ring_, seen);
    // Retired connections whose last operation ended are freed here, never while a
    // WaitQuiet may hold one.
    for (size_t i = retired_.size(); i-- > 0;) {
      if (retired_[i]->inFlight() == 0) retired_.erase(retired_.begin() + static_cast<ptrdiff_t>(i));
    }
  }

  void OnSocketCqe(const io_uring_cqe* cqe) {
    uint32_t conn = NbdRing::ConnOf(cqe->user_data);
    if (nbd_ != nullptr && nbd_->conn() == conn) {
      nbd_->OnCqe(cqe);
      return;
    }
    for (std::unique_ptr<NbdRing>& n : retired_) {
      if (n->conn() != conn) continue;
      n->OnCqe(cqe);
      return;
    }
  }

  // One wake-up: reap every CQE, then one call of onEvents (and of the rare others).
  void OnReadable(int status) override {
    Napi::Env env = Env();
    if (status < 0) {
      // The ring fd itself failed (not seen in practice): nothing more will
      // arrive through it, so report once and stop polling.
      Napi::HandleScope scope(env);
      poll_.Stop();
      Invoke(onError_, {Napi::Number::New(env, -1), Napi::Number::New(env, -status)});
      return;
    }
    if (Serve(env)) Linger(env);
  }

  // Whether a wake-up waits in the ring for the next CQE (Linger): only while a socket rides
  // on it, so that every completion the queue waits for (the kernel's requests, the store's
  // replies) arrives through the ring, and with a kernel whose io_uring_enter takes a timeout.
  bool Lingers() const {
    return canLinger_ && nbd_ != nullptr && !nbd_->failed() && polling_ && !stopped_ && !closed_;
  }

  // After a wake-up, the thread waits for the next CQE inside io_uring_enter, which also
  // submits what the wake-up's JS call prepared (its commits and sends), instead of going
  // back to the loop's epoll_wait: one system call per turn where the loop takes three or
  // four (io_uring_enter, epoll_pwait, and the io_uring_enter of the next send or commit),
  // and no loop turn. At QD1 that is the request's send and wait, then the commit and wait
  // (bench/results/profile-2026-11-30.md). The loop keeps its due: the wait ends by the
  // loop's next timer, and the loop runs at least every kLingerBudgetMs (its other handles:
  // the worker's messages), and not at all while it has immediate work.
  void Linger(Napi::Env env) {
    if (!Lingers()) return;
    uv_update_time(loop_);
    const uint64_t start = uv_now(loop_);
    for (;;) {
      int next = uv_backend_timeout(loop_);
      if (next == 0 || uv_now(loop_) - start >= kLingerBudgetMs || !Lingers()) break;
      int64_t ms = next > 0 && next < kLingerWaitMs ? next : kLingerWaitMs;
      __kernel_timespec ts{ms / 1000, (ms % 1000) * 1000 * 1000};
      io_uring_cqe* cqe = nullptr;
      int rc = io_uring_submit_and_wait_timeout(&ring_, &cqe, 1, &ts, nullptr);
      uv_update_time(loop_);
      if ((rc < 0 && rc != -ETIME && rc != -EINTR) || io_uring_cq_ready(&ring_) == 0) break;
      if (!Serve(env)) return;
    }
    // What is still prepared leaves now; the loop's epoll_wait takes over.
    if (io_uring_sq_ready(&ring_) > 0) {
      Napi::HandleScope scope(env);
      int rc = Submit();
      if (rc < 0) Invoke(onError_, {Napi::Number::New(env, -1), Napi::Number::New(env, -rc)});
      if (closed_) return;
      ReapSends();
    }
  }

  // One wake-up's work: reap, one call of onEvents (and of the rare others), submit. False
  // once a callback closed the queue (nothing may touch it then).
  bool Serve(Napi::Env env) {
    Napi::HandleScope scope(env);
    Reap();
    // The socket's next receive (and a send chain that waited for the one in flight) is
    // prepared now and submitted by the commit the JS call below makes, with the commits
    // and new sends: one io_uring_enter per wake-up. Without a JS call, or a commit in it,
    // it is submitted here.
    PrepareSocket();
    // Nothing for JS yet, but a receive is prepared: a zero-copy READ's payload after its
    // header, or the rest of a payload. Its bytes are usually in the socket already, so
    // submitted now it completes inside this io_uring_enter and the reply reaches JS in this
    // wake-up, not the next: one epoll_pwait and one loop turn less per such READ
    // (bench/results/profile-2026-11-30.md). No extra system call: the submit was due
    // anyway. Each further round needs a receive that completed at once.
    for (int round = 0; round < 4 && nReady_ == 0 && nErrors_ == 0 && nbd_ != nullptr && !nbd_->failed() &&
                        nbd_->replyCount() == 0 && io_uring_sq_ready(&ring_) > 0;
         round++) {
      if (Submit() < 0) break;
      Reap();
      PrepareSocket();
    }
    // -1: the socket is fine (or none is attached); else why it failed (0: the peer closed).
    int32_t failure = -1;
    uint32_t nReplies = 0;
    if (nbd_ != nullptr) {
      if (nbd_->failed() && !failureReported_) {
        failureReported_ = true;
        failure = nbd_->failure();
        // Nothing of this connection may stay in flight once JS hears of its end.
        WaitQuiet(nbd_.get());
      }
      nReplies = nbd_->replyCount();
      if (nReplies > 0) {
        std::memcpy(replies_.Value().Data(), nbd_->replies(), nReplies * NbdRing::kReplyBytes);
        nbd_->TakeReplies();
      }
    }
    uint32_t nReady = nReady_, nErrors = nErrors_;
    nReady_ = nErrors_ = 0;

    bool finished = finished_ == depth_ && !stopped_;
    if (finished) {
      stopped_ = true;
      if (nbd_ == nullptr && retired_.empty()) {
        polling_ = false;
        poll_.Stop();
      }
    }
    // Each callback may close the queue; stop touching it once it has.
    if (nReady > 0 || nReplies > 0 || failure >= 0) {
      // A commit in this call leaves with Linger's wait, if it waits.
      deferSubmit_ = Lingers();
      Invoke(onRequests_, {Napi::Number::New(env, nReady), Napi::Number::New(env, nReplies),
                           Napi::Number::New(env, failure)});
      deferSubmit_ = false;
      if (closed_) return false;
    }
    if (io_uring_sq_ready(&ring_) > 0 && !Lingers()) {
      int rc = Submit();
      if (rc < 0) Invoke(onError_, {Napi::Number::New(env, -1), Napi::Number::New(env, -rc)});
      if (closed_) return false;
      ReapSends();
    }
    for (uint32_t i = 0; i < nErrors; i++) {
      Invoke(onError_, {Napi::Number::New(env, errTags_[i]), Napi::Number::New(env, -errResults_[i])});
      if (closed_) return false;
    }
    if (finished) Invoke(onStopped_, {});
    return !closed_;
  }

  void Invoke(Napi::FunctionReference& fn, const std::initializer_list<napi_value>& args) {
    calls_.Invoke(Value(), fn, args);
  }

  uint16_t qid_ = 0;
  uint32_t depth_ = 0;
  uint32_t bufBytes_ = 0;
  size_t stride_ = 0;
  int charFd_ = -1;
  uint32_t socketSlots_ = 0;
  // The device has UBLK_F_AUTO_BUF_REG: requests' pages are this ring's fixed buffers.
  bool zeroCopy_ = false;
  // It also has UBLK_F_USER_COPY: small READ payloads are staged and written into the
  // requests' pages with pwrite (nbd-ring.h).
  bool userCopy_ = false;
  FixedBuffers fixed_;
  uint32_t fetchOp_ = 0;
  uint32_t commitOp_ = 0;

  io_uring ring_{};
  bool ringUp_ = false;
  Region* descs_ = nullptr;
  Region* tags_ = nullptr;
  bool descsUnlinked_ = false;
  Napi::Reference<Napi::ArrayBuffer> descAb_;
  Napi::Reference<Napi::ArrayBuffer> tagAb_;

  // Sized once to depth, so the per-wake-up path allocates nothing.
  std::vector<uint8_t> state_;
  std::vector<uint16_t> errTags_;
  std::vector<int32_t> errResults_;
  uint32_t finished_ = 0;
  // Reaped and not yet passed to JS (a socket's quiesce reaps outside a wake-up).
  uint32_t nReady_ = 0;
  uint32_t nErrors_ = 0;

  // The attached connection, and earlier ones with operations the kernel has not ended.
  std::unique_ptr<NbdRing> nbd_;
  std::vector<std::unique_ptr<NbdRing>> retired_;
  uint32_t connSeq_ = 0;
  bool failureReported_ = false;
  Napi::Reference<Napi::Buffer<uint8_t>> replies_;
  // user_data of the queue's own housekeeping SQEs (cancel, wake-up NOP): not a tag.
  static constexpr uint64_t kOwnUserData = 1ull << 62;

  RingPoll poll_;
  Napi::FunctionReference onRequests_;
  Napi::FunctionReference onStopped_;
  Napi::FunctionReference onError_;
  Napi::Reference<Napi::Uint16Array> ready_;
  // ready_'s elements, for reaping where no JS may run (teardown).
  uint16_t* readyData_ = nullptr;
  LoopCalls calls_;

  // The loop the ring is polled on; Linger waits for CQEs in place of its epoll_wait.
  uv_loop_t* loop_ = nullptr;
  bool canLinger_ = false;
  // A JS call made by a wake-up that lingers is running: its commits are submitted by the wait.
  bool deferSubmit_ = false;
  // Linger: the longest wait for a CQE, and how long the loop may go without a turn.
  static constexpr int64_t kLingerWaitMs = 10;
  static constexpr uint64_t kLingerBudgetMs = 20;

  bool started_ = false;
  bool polling_ = false;
  bool stopped_ = false;
  bool closed_ = false;
  bool envGone_ = false;
};

}  // namespace

Napi::Function DefineQueue(Napi::Env env) { return Queue::Define(env); }

}  // namespace ublk
