// RingSocket: an NBD connection's data path on an io_uring of its own (NbdRing does the
// bytes), the ring fd polled by the libuv loop of the thread that created it. The socket
// stays owned by its Node handle (paused, never read or written by Node meanwhile); this
// class never closes it. TypeScript gets one call per wake-up with the reply headers that
// arrived (READ payloads already in place), and one call when the connection failed.
//
// Memory rule: a request's header, payload and destination are used by the kernel until
// its reply is published or the ring is quiesced. close() and every failure quiesce
// (cancel and reap every SQE in flight) before returning to JavaScript, which only then
// fails the requests and may let go of their buffers.
#include "ring-socket.h"

#include <liburing.h>

#include <cstring>
#include <memory>
#include <string>

#include "errors.h"
#include "js-call.h"
#include "nbd-ring.h"
#include "ring-poll.h"

namespace ublk {
namespace {

class RingSocket : public Napi::ObjectWrap<RingSocket>, public RingPoll::Owner {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "RingSocket",
                       {
                           InstanceMethod<&RingSocket::Start>("start"),
                           InstanceMethod<&RingSocket::Queue>("queue"),
                           InstanceMethod<&RingSocket::Flush>("flush"),
                           InstanceMethod<&RingSocket::Close>("close"),
                       });
  }

  explicit RingSocket(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingSocket>(info) {
    Napi::Env env = info.Env();
    if (!info[0].IsObject()) throw Napi::TypeError::New(env, "options must be an object");
    Napi::Object opts = info[0].As<Napi::Object>();
    int fd = static_cast<int>(UintOption(opts, "fd", 0, INT32_MAX));
    uint32_t slots = UintOption(opts, "slots", 1, 4096);
    nbd_ = std::make_unique<NbdRing>(fd, slots);
    // Room for a chain of every slot plus the receive: a chain is never split across two
    // submits (see nbd-ring.h).
    int rc = io_uring_queue_init(nbd_->MaxSqes() + 1, &ring_, 0);
    if (rc < 0) throw ErrnoError(env, -rc, "io_uring_setup");
    ringUp_ = true;
  }

  ~RingSocket() override {
    poll_.Close();
    Quiesce();
    if (ringUp_) io_uring_queue_exit(&ring_);
    if (envGone_) calls_.Abandon();
  }

 private:

  // start(onReplies, replies, onClosed): replies is a Buffer of (slots + 1) * 16 bytes.
  Napi::Value Start(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_ || started_) throw Napi::Error::New(env, closed_ ? "ring socket is closed" : "ring socket already started");
    if (!info[0].IsFunction() || !info[2].IsFunction())
      throw Napi::TypeError::New(env, "start(onReplies, replies, onClosed): callbacks must be functions");
    if (!info[1].IsBuffer()) throw Napi::TypeError::New(env, "replies must be a Buffer");
    Napi::Buffer<uint8_t> replies = info[1].As<Napi::Buffer<uint8_t>>();
    if (replies.Length() < (nbd_->slots() + 1) * NbdRing::kReplyBytes)
      throw Napi::RangeError::New(env, "replies must hold slots + 1 headers");
    poll_.Start(env, ring_.ring_fd, this);
    onReplies_ = Napi::Persistent(info[0].As<Napi::Function>());
    replies_ = Napi::Persistent(replies);
    onClosed_ = Napi::Persistent(info[2].As<Napi::Function>());
    calls_.Open(env, "nbd:ring-socket", Value());
    Ref();
    started_ = true;
    SubmitWork();
    return env.Undefined();
  }

  // queue(slot, gen, header, data, into): false once the connection has failed.
  Napi::Value Queue(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_ || !started_) throw Napi::Error::New(env, closed_ ? "ring socket is closed" : "ring socket not started");
    if (!info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsBuffer())
      throw Napi::TypeError::New(env, "queue(slot, gen, header, data, into)");
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

  // flush(): what queue() gathered leaves as one chain (after the chain in flight).
  Napi::Value Flush(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_ || !started_) return env.Undefined();
    int rc = SubmitWork();
    if (rc < 0) throw ErrnoError(env, -rc, "io_uring_enter");
    return env.Undefined();
  }

  // close(): no more I/O and none in flight; the socket itself is left to its owner.
  Napi::Value Close(const Napi::CallbackInfo& info) {
    Napi::Env env = info.Env();
    if (closed_) return env.Undefined();
    closed_ = true;
    poll_.Close();
    Quiesce();
    if (started_) Unref();
    onReplies_.Reset();
    onClosed_.Reset();
    replies_.Reset();
    calls_.Close();
    if (ringUp_) {
      io_uring_queue_exit(&ring_);
      ringUp_ = false;
    }
    return env.Undefined();
  }

  int SubmitWork() {
    if (nbd_->failed()) return 0;
    uint32_t n = nbd_->PrepareSends(&ring_) + nbd_->PrepareRecv(&ring_);
    if (n == 0) return 0;
    int rc;
    do {
      rc = io_uring_submit(&ring_);
    } while (rc == -EINTR);
    return rc;
  }

  // Cancels every SQE of this connection and reaps until none is in flight.
  void Quiesce() {
    if (!ringUp_) return;
    nbd_->Stop();
    if (nbd_->inFlight() == 0) return;
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe != nullptr) {
      io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);  // everything: the ring is this connection's
      io_uring_sqe_set_data64(sqe, 0);
      io_uring_submit(&ring_);
    }
    // Cancelled socket operations complete at once; the bound only guards against a
    // kernel that does not cancel them (then the ring's exit waits for them instead).
    for (int i = 0; i < 100 && nbd_->inFlight() > 0; i++) {
      io_uring_cqe* cqe = nullptr;
      __kernel_timespec ts{0, 50 * 1000 * 1000};
      int rc = io_uring_wait_cqe_timeout(&ring_, &cqe, &ts);
      if (rc < 0 && rc != -ETIME && rc != -EINTR) break;
      Reap();
    }
  }

  // Hands every CQE to NbdRing; returns whether replies arrived or the connection failed.
  bool Reap() {
    bool any = false;
    unsigned head, seen = 0;
    io_uring_cqe* cqe;
    io_uring_for_each_cqe(&ring_, head, cqe) {
      seen++;
      if ((cqe->user_data & NbdRing::kUserDataBit) == 0) continue;  // the cancel's own CQE
      if (nbd_->OnCqe(cqe) != NbdRing::Event::kNone) any = true;
    }
    io_uring_cq_advance(&ring_, seen);
    return any;
  }

  void OnEnvGone() override {
    envGone_ = true;
    Quiesce();
  }

  void OnReadable(int status) override {
    Napi::Env env = Env();
    Napi::HandleScope scope(env);
    if (status < 0) {
      poll_.Stop();
      Quiesce();
      Invoke(onClosed_, {Napi::Number::New(env, -status)});
      return;
    }
    // Receives that complete while being submitted (the bytes were already there) post
    // their CQE at once: keep reaping while that happens (bounded, to let the loop run).
    // Every reap is followed by a submit, so the next receive is always posted; CQEs left
    // after the last round keep the ring fd readable for the next wake-up.
    Reap();
    for (int round = 1; !nbd_->failed(); round++) {
      if (SubmitWork() < 0 || round == 64 || io_uring_cq_ready(&ring_) == 0) break;
      Reap();
    }
    bool failed = nbd_->failed();
    if (failed) {
      poll_.Stop();
      Quiesce();
    }
    uint32_t n = nbd_->replyCount();
    if (n > 0) {
      std::memcpy(replies_.Value().Data(), nbd_->replies(), n * NbdRing::kReplyBytes);
      nbd_->TakeReplies();
      Invoke(onReplies_, {Napi::Number::New(env, n)});
      if (closed_) return;
    }
    if (failed) Invoke(onClosed_, {Napi::Number::New(env, nbd_->failure())});
  }

  void Invoke(Napi::FunctionReference& fn, const std::initializer_list<napi_value>& args) {
    calls_.Invoke(Value(), fn, args);
  }

  std::unique_ptr<NbdRing> nbd_;
  io_uring ring_{};
  bool ringUp_ = false;
  RingPoll poll_;
  Napi::FunctionReference onReplies_;
  Napi::FunctionReference onClosed_;
  Napi::Reference<Napi::Buffer<uint8_t>> replies_;
  LoopCalls calls_;
  bool started_ = false;
  bool closed_ = false;
  bool envGone_ = false;
};

}  // namespace

Napi::Function DefineRingSocket(Napi::Env env) { return RingSocket::Define(env); }

}  // namespace ublk
