// An NBD connection's bytes as io_uring SQEs: request sends and reply receives on a ring
// that may also carry other work (the ublk queue's FETCH/COMMIT commands). It owns no
// ring: the caller prepares its SQEs into one, submits, and hands it every CQE whose
// user_data has kUserDataBit set.
//
// Where NBD knowledge crosses into C++ (everything else stays in TypeScript, which books
// requests, writes their headers, matches replies to requests, maps errors and decides
// when the connection is dead): the 16-byte simple reply (magic, error, cookie) and the
// rule that a successful READ's reply is followed by exactly the request's length of data.
// That is enough to receive a READ's payload straight into its destination, without a
// round trip to JavaScript between header and data. For this the cookie's low 32 bits are
// the request's slot (< slots) and its high 32 bits a generation, as src/nbd/request.ts
// assigns them; a reply that names no request sent here stops reception, and
// TypeScript, seeing its header, ends the connection.
//
// Sends go out in order: one sendmsg (header + payload) per request, linked
// (IOSQE_IO_LINK) into one chain per batch, and at most one chain in flight. A second
// chain submitted while the first waits for socket room could otherwise interleave its
// bytes with the first's rest (links order SQEs within a submission, never across two).
// MSG_WAITALL makes io_uring retry short sends and receives on a stream socket, so a
// short result is an error.
#pragma once

#include <liburing.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

namespace ublk {

class NbdRing {
 public:
  static constexpr uint64_t kUserDataBit = 1ull << 63;
  static constexpr uint32_t kReplyBytes = 16;
  static constexpr uint32_t kRequestHeaderBytes = 28;

  // What a CQE did, for the owner to act on.
  enum class Event { kNone, kReplies, kFailed };

  NbdRing(int fd, uint32_t slots) : fd_(fd), slots_(slots), slot_(slots), replies_((slots + 1) * kReplyBytes) {}

  uint32_t slots() const { return slots_; }
  // Reply headers published since the last TakeReplies, kReplyBytes each.
  const uint8_t* replies() const { return replies_.data(); }
  uint32_t replyCount() const { return nReplies_; }
  void TakeReplies() { nReplies_ = 0; }
  // Why reception or sending stopped: a positive errno, or 0 for the peer's EOF.
  int failure() const { return failure_; }
  bool failed() const { return failed_; }
  // SQEs this connection has in the kernel; Quiesce waits for them.
  uint32_t inFlight() const { return inFlight_; }
  // SQEs a PrepareSends can need at most (a chain of every slot) plus the receive.
  uint32_t MaxSqes() const { return slots_ + 1; }

  // Queues the request in `slot` for the next chain. header: kRequestHeaderBytes; data
  // (WRITE) or into (READ: where its payload lands, `len` bytes) may be null. The memory
  // must stay valid until the request's reply has been published or the connection
  // quiesced. Returns false for a slot out of range or still busy.
  bool Queue(uint32_t slot, uint32_t gen, const uint8_t* header, const uint8_t* data, uint32_t dataLen,
             uint8_t* into, uint32_t intoLen) {
    if (slot >= slots_ || failed_) return false;
    Slot& s = slot_[slot];
    if (s.busy) return false;
    s.busy = true;
    s.gen = gen;
    s.into = into;
    s.intoLen = intoLen;
    s.iov[0] = {const_cast<uint8_t*>(header), kRequestHeaderBytes};
    s.iov[1] = {const_cast<uint8_t*>(data), dataLen};
    std::memset(&s.msg, 0, sizeof s.msg);
    s.msg.msg_iov = s.iov;
    s.msg.msg_iovlen = data != nullptr && dataLen > 0 ? 2 : 1;
    s.sendBytes = kRequestHeaderBytes + (s.msg.msg_iovlen == 2 ? dataLen : 0);
    next_.push_back(slot);
    return true;
  }

  bool HasQueued() const { return !next_.empty(); }

  // Prepares the queued sends as one linked chain unless a chain is in flight (then they
  // wait for it: call again after its last CQE). Returns the SQEs used; the caller
  // submits them in one go, before any other submit on the ring.
  uint32_t PrepareSends(io_uring* ring) {
    if (chainLeft_ > 0 || next_.empty() || failed_) return 0;
    io_uring_sqe* last = nullptr;
    uint32_t n = 0;
    for (uint32_t slot : next_) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      if (sqe == nullptr) break;  // cannot happen with a ring of MaxSqes() spare entries
      io_uring_prep_sendmsg(sqe, fd_, &slot_[slot].msg, MSG_WAITALL | MSG_NOSIGNAL);
      sqe->flags |= IOSQE_IO_LINK;
      // The length travels with the SQE: the slot may be reused before this CQE is reaped.
      io_uring_sqe_set_data64(sqe, UserData(kSend, slot_[slot].sendBytes));
      last = sqe;
      n++;
    }
    if (last != nullptr) last->flags &= ~IOSQE_IO_LINK;
    next_.erase(next_.begin(), next_.begin() + n);
    chainLeft_ = n;
    inFlight_ += n;
    return n;
  }

  // Prepares the receive of the next reply bytes, unless one is posted or reception
  // stopped. Returns the SQEs used (0 or 1).
  uint32_t PrepareRecv(io_uring* ring) {
    if (recvPosted_ || failed_ || stopped_) return 0;
    io_uring_sqe* sqe = io_uring_get_sqe(ring);
    if (sqe == nullptr) return 0;
    uint8_t* at;
    uint32_t len;
    if (payloadSlot_ < 0) {
      at = hdr_ + got_;
      len = kReplyBytes - got_;
    } else {
      Slot& s = slot_[payloadSlot_];
      at = s.into + got_;
      len = s.intoLen - got_;
    }
    io_uring_prep_recv(sqe, fd_, at, len, MSG_WAITALL);
    io_uring_sqe_set_data64(sqe, UserData(kRecv, 0));
    recvPosted_ = true;
    inFlight_++;
    return 1;
  }

  // One CQE of ours (user_data & kUserDataBit).
  Event OnCqe(const io_uring_cqe* cqe) {
    inFlight_--;
    uint64_t ud = cqe->user_data;
    if (static_cast<uint32_t>(ud >> 56 & 0x7f) == kSend) {
      chainLeft_--;
      // A link broken by an earlier failure completes with ECANCELED: already failed.
      if (cqe->res < 0) return Fail(-cqe->res);
      if (static_cast<uint64_t>(cqe->res) != (ud & 0xffffffff)) return Fail(EPIPE);
      return Event::kNone;
    }
    recvPosted_ = false;
    if (cqe->res < 0) return Fail(-cqe->res);
    if (cqe->res == 0) return Fail(0);  // the peer closed
    got_ += static_cast<uint32_t>(cqe->res);
    if (payloadSlot_ >= 0) {
      Slot& s = slot_[payloadSlot_];
      if (got_ < s.intoLen) return Event::kNone;
      Publish(s.replyHeader);
      s.busy = false;
      payloadSlot_ = -1;
      got_ = 0;
      return Event::kReplies;
    }
    if (got_ < kReplyBytes) return Event::kNone;
    got_ = 0;
    return OnHeader();
  }

  // Drops what is queued and marks the connection failed (no more SQEs are prepared).
  void Stop() {
    stopped_ = true;
    failed_ = true;
    next_.clear();
  }

 private:
  enum Kind : uint32_t { kSend = 1, kRecv = 2 };

  static uint64_t UserData(Kind kind, uint32_t value) { return kUserDataBit | uint64_t{kind} << 56 | value; }

  struct Slot {
    bool busy = false;
    uint32_t gen = 0;
    uint8_t* into = nullptr;
    uint32_t intoLen = 0;
    uint32_t sendBytes = 0;
    iovec iov[2]{};
    msghdr msg{};
    uint8_t replyHeader[kReplyBytes]{};
  };

  static uint32_t Be32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  }

  Event OnHeader() {
    static constexpr uint32_t kSimpleReplyMagic = 0x67446698;  // proto.md "Simple reply message"
    uint32_t magic = Be32(hdr_);
    uint32_t error = Be32(hdr_ + 4);
    uint32_t gen = Be32(hdr_ + 8);
    uint32_t slot = Be32(hdr_ + 12);
    bool known = magic == kSimpleReplyMagic && slot < slots_ && slot_[slot].busy && slot_[slot].gen == gen;
    if (!known) {
      // Not a reply to a request sent here: whatever follows cannot be framed. Publish it
      // for TypeScript to name, receive nothing more.
      Publish(hdr_);
      stopped_ = true;
      return Event::kReplies;
    }
    Slot& s = slot_[slot];
    if (error == 0 && s.into != nullptr && s.intoLen > 0) {
      std::memcpy(s.replyHeader, hdr_, kReplyBytes);
      payloadSlot_ = static_cast<int32_t>(slot);
      return Event::kNone;
    }
    Publish(hdr_);
    s.busy = false;
    return Event::kReplies;
  }

  void Publish(const uint8_t* header) {
    // Bounded: each slot publishes once per send, plus one unknown header that stops reception.
    if (nReplies_ > slots_) return;
    std::memcpy(replies_.data() + nReplies_ * kReplyBytes, header, kReplyBytes);
    nReplies_++;
  }

  Event Fail(int err) {
    if (failed_) return Event::kNone;
    failure_ = err;
    Stop();
    return Event::kFailed;
  }

  int fd_;
  uint32_t slots_;
  std::vector<Slot> slot_;
  std::vector<uint32_t> next_;
  std::vector<uint8_t> replies_;
  uint32_t nReplies_ = 0;
  uint32_t chainLeft_ = 0;
  uint32_t inFlight_ = 0;
  bool recvPosted_ = false;
  bool stopped_ = false;
  bool failed_ = false;
  int failure_ = 0;
  uint8_t hdr_[kReplyBytes]{};
  uint32_t got_ = 0;
  int32_t payloadSlot_ = -1;
};

}  // namespace ublk
