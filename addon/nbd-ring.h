// An NBD connection's bytes as io_uring SQEs: request sends and reply receives on the ublk
// queue's ring, beside its FETCH/COMMIT commands (queue.cc). It owns no ring: the queue
// prepares its SQEs with its own, submits them together, and hands it every CQE whose
// user_data has kUserDataBit set and names this connection (bits 32..55: a queue may hold
// an old connection's last operations while the next one runs).
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
// Sends go out in order: a batch's requests (header and payload each) leave as one
// sendmsg of up to kIovMax pieces, a longer batch as several linked (IOSQE_IO_LINK) into one
// chain, and at most one chain is in flight. A second chain submitted while the first waits
// for socket room could otherwise interleave its bytes with the first's rest (links order
// SQEs within a submission, never across two). One sendmsg per request instead cost twice
// the stream's CPU per request at QD32: a TCP push each. Every send of a chain but its last
// carries MSG_MORE, so TCP pushes once per chain, not once per SQE (zero copy has two per
// WRITE).
// MSG_WAITALL makes io_uring retry short sends on a stream socket, so a short result is
// an error.
//
// Receives take what the socket holds, up to kStageBytes, into a staging buffer and parse
// every whole reply in it, copying the READ payloads it holds to their destinations: one
// receive serves many replies, as one read() does for the stream transport (a receive per
// header cost twice the stream's CPU per request at QD32, bench/results/ts-path-transports-
// 2026-11-30.md). The rest of a payload that did not fit is received in place, MSG_WAITALL.
//
// Zero copy (FixedBuffers given: UBLK_F_AUTO_BUF_REG registered each request's pages as the
// ring's fixed buffer index = tag): a payload that points into the queue's tag region
// stands for that tag's fixed buffer at the same offset, whose pages are the request's
// own and not mapped here. A WRITE's payload leaves as a send from the fixed buffer
// (IORING_RECVSEND_FIXED_BUF) linked after the sendmsg carrying its header, in the same
// chain, so nothing can reorder the stream. No memcpy reaches a READ's pages, so replies
// are received one of two ways:
// - While a READ larger than kStagedReadMax is in flight: each reply header alone, exactly
//   16 bytes, and a READ's payload then in place, into the fixed buffer (no copy at all;
//   a receive per reply, which large payloads pay for).
// - Otherwise (the device also has UBLK_F_USER_COPY): into the staging buffer as in copy
//   mode, many replies per receive, and the payload bytes of a READ that landed there are
//   written into its request's pages with pwrite on /dev/ublkcN at the user-copy offset of
//   its tag (one copy, as the kernel's nbd client makes). Receiving each header alone cost
//   a receive per reply: 0.42x kernel nbd's 4 KiB QD32 read IOPS on 7.3.4; staged, 0.93x
//   in a first check (bench/results/zero-copy-staged-2026-11-30.md).
// The rule is checked when each receive is posted: a large READ sent while a staging
// receive is in flight may have its header and first bytes staged (and copied); the rest
// of it is received in place. Either way at most the request's own length is written into
// its pages (Parse bounds every copy by it; the kernel bounds user copy by the request).
#pragma once

#include <liburing.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <vector>

#include "uapi/ublk_cmd.h"

namespace ublk {

// Zero copy: where a queue's tag buffers are, which stand for the fixed buffers (index =
// tag) that hold the requests' own pages.
struct FixedBuffers {
  const uint8_t* base = nullptr;
  size_t stride = 0;
  uint32_t count = 0;
  // Usable bytes of each tag's buffer (max_io_buf_bytes).
  uint32_t bytes = 0;
  // The device also has UBLK_F_USER_COPY: pwrite on this fd (/dev/ublkcN) at
  // uapi::UserCopyPos(qid, tag, offset) writes into a READ request's pages. -1: it has not.
  int userCopyFd = -1;
  uint16_t qid = 0;

  // The fixed buffer and offset that [p, p + len) stands for; false for other memory.
  bool Find(const uint8_t* p, uint32_t len, uint16_t* index, uint32_t* offset) const {
    if (base == nullptr || p < base) return false;
    size_t at = static_cast<size_t>(p - base);
    size_t tag = at / stride;
    size_t off = at % stride;
    if (tag >= count || off + len > bytes) return false;
    *index = static_cast<uint16_t>(tag);
    *offset = static_cast<uint32_t>(off);
    return true;
  }
};

class NbdRing {
 public:
  static constexpr uint64_t kUserDataBit = 1ull << 63;
  static constexpr uint32_t kReplyBytes = 16;
  static constexpr uint32_t kRequestHeaderBytes = 28;

  // What a CQE did, for the owner to act on.
  enum class Event { kNone, kReplies, kFailed };

  // fixed: the queue's tag buffers in zero-copy mode, else null (copy mode).
  NbdRing(int fd, uint32_t slots, uint32_t conn, const FixedBuffers* fixed)
      : fd_(fd), slots_(slots), conn_(conn & kConnMask), fixed_(fixed), slot_(slots), replies_((slots + 1) * kReplyBytes) {}

  // The connection a CQE of ours belongs to.
  static uint32_t ConnOf(uint64_t userData) { return static_cast<uint32_t>(userData >> 32) & kConnMask; }
  // Whether a CQE of ours is a send's (a receive's otherwise).
  static bool IsSend(uint64_t userData) { return static_cast<uint32_t>(userData >> 56 & 0x7f) == kSend; }
  // SQEs a connection of `slots` can have prepared at once: a chain of every slot and the receive.
  static uint32_t MaxSqesFor(uint32_t slots, bool zeroCopy) { return MaxSendSqes(slots, zeroCopy) + 1; }

  int fd() const { return fd_; }
  uint32_t conn() const { return conn_; }
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
    s.intoBuf = -1;
    uint16_t index;
    uint32_t offset;
    if (into != nullptr && fixed_ != nullptr && fixed_->Find(into, intoLen, &index, &offset)) {
      s.intoBuf = index;
      s.into = reinterpret_cast<uint8_t*>(uintptr_t{offset});
      s.large = intoLen > kStagedReadMax;
      if (s.large) largeReads_++;
    }
    next_.push_back({const_cast<uint8_t*>(header), kRequestHeaderBytes});
    nextBuf_.push_back(-1);
    if (data != nullptr && dataLen > 0) {
      if (fixed_ != nullptr && fixed_->Find(data, dataLen, &index, &offset)) {
        // Within a fixed buffer, the address is the offset from its start.
        next_.push_back({reinterpret_cast<void*>(uintptr_t{offset}), dataLen});
        nextBuf_.push_back(index);
      } else {
        next_.push_back({const_cast<uint8_t*>(data), dataLen});
        nextBuf_.push_back(-1);
      }
    }
    return true;
  }

  bool HasQueued() const { return !next_.empty(); }

  // Prepares the queued sends as one linked chain unless a chain is in flight (then they
  // wait for it: call again after its last CQE). Returns the SQEs used; the caller
  // submits them in one go, before any other submit on the ring.
  uint32_t PrepareSends(io_uring* ring) {
    if (chainLeft_ > 0 || next_.empty() || failed_) return 0;
    chain_.swap(next_);
    next_.clear();
    chainBuf_.swap(nextBuf_);
    nextBuf_.clear();
    io_uring_sqe* last = nullptr;
    uint32_t n = 0;
    for (size_t at = 0; at < chain_.size(); n++) {
      io_uring_sqe* sqe = io_uring_get_sqe(ring);
      if (sqe == nullptr) break;  // cannot happen with a ring of MaxSqes() spare entries
      if (chainBuf_[at] >= 0) {
        // A payload in the request's own pages: fixed buffer chainBuf_[at].
        sendBytes_[n] = chain_[at].iov_len;
        io_uring_prep_send(sqe, fd_, chain_[at].iov_base, chain_[at].iov_len, kSendFlags);
        sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
        sqe->buf_index = static_cast<uint16_t>(chainBuf_[at]);
        at++;
      } else {
        // The pieces up to the next fixed one (or kIovMax of them) as one sendmsg.
        size_t pieces = 0;
        uint64_t bytes = 0;
        while (at + pieces < chain_.size() && pieces < kIovMax && chainBuf_[at + pieces] < 0) {
          bytes += chain_[at + pieces].iov_len;
          pieces++;
        }
        msghdr& m = msgs_[n];
        std::memset(&m, 0, sizeof m);
        m.msg_iov = chain_.data() + at;
        m.msg_iovlen = pieces;
        sendBytes_[n] = bytes;
        io_uring_prep_sendmsg(sqe, fd_, &m, kSendFlags);
        at += pieces;
      }
      sqe->flags |= IOSQE_IO_LINK;
      io_uring_sqe_set_data64(sqe, UserData(kSend, n));
      last = sqe;
    }
    if (last != nullptr) {
      last->flags &= ~IOSQE_IO_LINK;
      // The chain's last send pushes what the ones before it left corked (MSG_MORE).
      last->msg_flags &= ~static_cast<uint32_t>(MSG_MORE);
    }
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
    if (payloadSlot_ < 0 && fixed_ != nullptr && !StagesReplies()) {
      // Zero copy with a large READ in flight: the rest of one reply header, never a
      // payload byte (see the top).
      io_uring_prep_recv(sqe, fd_, stage_.data(), kReplyBytes - hdrGot_, MSG_WAITALL);
      io_uring_sqe_set_data64(sqe, UserData(kRecv, kIntoStage));
    } else if (payloadSlot_ < 0) {
      io_uring_prep_recv(sqe, fd_, stage_.data(), kStageBytes, 0);
      io_uring_sqe_set_data64(sqe, UserData(kRecv, kIntoStage));
    } else {
      Slot& s = slot_[payloadSlot_];
      io_uring_prep_recv(sqe, fd_, s.into + got_, s.intoLen - got_, MSG_WAITALL);
      if (s.intoBuf >= 0) {
        sqe->ioprio |= IORING_RECVSEND_FIXED_BUF;
        sqe->buf_index = static_cast<uint16_t>(s.intoBuf);
      }
      io_uring_sqe_set_data64(sqe, UserData(kRecv, kInPlace));
    }
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
      uint32_t piece = static_cast<uint32_t>(ud);
      if (piece >= sendBytes_.size() || static_cast<uint64_t>(cqe->res) != sendBytes_[piece]) return Fail(EPIPE);
      return Event::kNone;
    }
    recvPosted_ = false;
    if (cqe->res < 0) return Fail(-cqe->res);
    if (cqe->res == 0) return Fail(0);  // the peer closed
    uint32_t n = static_cast<uint32_t>(cqe->res);
    if ((ud & 0xffffffff) == kInPlace) {
      if (payloadSlot_ < 0) return Fail(EPROTO);  // cannot happen: only posted for a payload
      got_ += n;
      return PayloadDone() ? Event::kReplies : Event::kNone;
    }
    return Parse(stage_.data(), n);
  }

  // Drops what is queued and marks the connection failed (no more SQEs are prepared).
  void Stop() {
    stopped_ = true;
    failed_ = true;
    next_.clear();
    nextBuf_.clear();
  }

 private:
  enum Kind : uint32_t { kSend = 1, kRecv = 2 };
  // Where a receive goes (its user_data's low bits).
  static constexpr uint32_t kIntoStage = 0;
  static constexpr uint32_t kInPlace = 1;
  static constexpr uint32_t kStageBytes = 64 * 1024;
  // Zero copy with user copy: READs up to this size have their payload staged and copied
  // (one receive serves many replies); larger ones are received in place, with no copy.
  static constexpr uint32_t kStagedReadMax = 16 * 1024;
  // Every send but a chain's last carries MSG_MORE (cleared on the last in PrepareSends):
  // TCP coalesces the chain's headers and payloads into full segments and pushes once.
  static constexpr int kSendFlags = MSG_WAITALL | MSG_NOSIGNAL | MSG_MORE;

  static constexpr uint32_t kConnMask = 0xffffff;
  uint64_t UserData(Kind kind, uint32_t value) const {
    return kUserDataBit | uint64_t{kind} << 56 | uint64_t{conn_} << 32 | value;
  }

  struct Slot {
    bool busy = false;
    uint32_t gen = 0;
    // Where a READ's payload goes: memory, or (intoBuf >= 0) the offset in that fixed buffer.
    uint8_t* into = nullptr;
    uint32_t intoLen = 0;
    int32_t intoBuf = -1;
    // A READ into a fixed buffer larger than kStagedReadMax (counted in largeReads_).
    bool large = false;
    uint8_t replyHeader[kReplyBytes]{};
  };

  // Linux's IOV_MAX: the pieces one sendmsg takes.
  static constexpr size_t kIovMax = 1024;
  // Zero copy: a header's sendmsg and a payload's fixed send per request at most.
  static uint32_t MaxSendSqes(uint32_t slots, bool zeroCopy) {
    return zeroCopy ? 2 * slots : static_cast<uint32_t>((2 * size_t{slots} + kIovMax - 1) / kIovMax);
  }

  static uint32_t Be32(const uint8_t* p) {
    return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
  }

  // Consumes n received bytes: header bytes, whole replies, payload bytes for their place.
  Event Parse(const uint8_t* p, uint32_t n) {
    Event ev = Event::kNone;
    uint32_t pos = 0;
    while (pos < n && !stopped_) {
      if (payloadSlot_ >= 0) {
        Slot& s = slot_[payloadSlot_];
        uint32_t k = std::min(n - pos, s.intoLen - got_);
        if (s.intoBuf < 0) {
          std::memcpy(s.into + got_, p + pos, k);
        } else if (!CopyToRequest(s, p + pos, k)) {
          return Fail(failure_);
        }
        pos += k;
        got_ += k;
        if (PayloadDone()) ev = Event::kReplies;
        continue;
      }
      uint32_t k = std::min(n - pos, kReplyBytes - hdrGot_);
      std::memcpy(hdr_ + hdrGot_, p + pos, k);
      pos += k;
      hdrGot_ += k;
      if (hdrGot_ < kReplyBytes) break;
      hdrGot_ = 0;
      if (OnHeader() == Event::kReplies) ev = Event::kReplies;
    }
    return ev;
  }

  // Whether the payload being received is complete (then it is published and its slot freed).
  bool PayloadDone() {
    Slot& s = slot_[payloadSlot_];
    if (got_ < s.intoLen) return false;
    Publish(s.replyHeader);
    Release(s);
    payloadSlot_ = -1;
    got_ = 0;
    return true;
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
    if (error == 0 && (s.into != nullptr || s.intoBuf >= 0) && s.intoLen > 0) {
      std::memcpy(s.replyHeader, hdr_, kReplyBytes);
      payloadSlot_ = static_cast<int32_t>(slot);
      got_ = 0;
      return Event::kNone;
    }
    Publish(hdr_);
    Release(s);
    return Event::kReplies;
  }

  void Publish(const uint8_t* header) {
    // Bounded: each slot publishes once per send, plus one unknown header that stops reception.
    if (nReplies_ > slots_) return;
    std::memcpy(replies_.data() + nReplies_ * kReplyBytes, header, kReplyBytes);
    nReplies_++;
  }

  void Release(Slot& s) {
    s.busy = false;
    if (s.large) largeReads_--;
    s.large = false;
  }

  // Zero copy: replies go through the staging buffer (as in copy mode) while no large READ
  // is in flight, whose payload is better received in place; a small READ's payload bytes
  // are then written into its request's pages by user copy (CopyToRequest).
  bool StagesReplies() const { return fixed_->userCopyFd >= 0 && largeReads_ == 0; }

  // Writes k staged payload bytes of s (a READ into a fixed buffer) at its got_ offset into
  // the request's own pages. At most the request's own length (Parse bounds k to
  // intoLen - got_, and the kernel to the request). False with failure_ set when it fails.
  bool CopyToRequest(const Slot& s, const uint8_t* p, uint32_t k) {
    if (fixed_->userCopyFd < 0) {
      failure_ = EPROTO;  // cannot happen: without user copy no payload byte is staged
      return false;
    }
    uint64_t at = uapi::UserCopyPos(fixed_->qid, static_cast<uint16_t>(s.intoBuf),
                                    static_cast<uint32_t>(reinterpret_cast<uintptr_t>(s.into)) + got_);
    ssize_t w;
    do {
      w = pwrite(fixed_->userCopyFd, p, k, static_cast<off_t>(at));
    } while (w < 0 && errno == EINTR);
    if (w == static_cast<ssize_t>(k)) return true;
    failure_ = w < 0 ? errno : EIO;
    return false;
  }

  Event Fail(int err) {
    if (failed_) return Event::kNone;
    failure_ = err;
    Stop();
    return Event::kFailed;
  }

  int fd_;
  uint32_t slots_;
  uint32_t conn_;
  const FixedBuffers* fixed_;
  std::vector<Slot> slot_;
  // The pieces (header, payload) of the requests queued for the next chain, and of the
  // chain in flight, whose sendmsgs point into it until their CQEs; beside each, its
  // fixed buffer index, or -1 for memory.
  std::vector<iovec> next_;
  std::vector<iovec> chain_;
  std::vector<int32_t> nextBuf_;
  std::vector<int32_t> chainBuf_;
  std::vector<msghdr> msgs_ = std::vector<msghdr>(MaxSendSqes(slots_, fixed_ != nullptr));
  std::vector<uint64_t> sendBytes_ = std::vector<uint64_t>(MaxSendSqes(slots_, fixed_ != nullptr));
  std::vector<uint8_t> replies_;
  uint32_t nReplies_ = 0;
  uint32_t chainLeft_ = 0;
  uint32_t inFlight_ = 0;
  bool recvPosted_ = false;
  bool stopped_ = false;
  bool failed_ = false;
  int failure_ = 0;
  std::vector<uint8_t> stage_ = std::vector<uint8_t>(kStageBytes);
  uint8_t hdr_[kReplyBytes]{};
  uint32_t hdrGot_ = 0;
  // Payload bytes of payloadSlot_ in place so far.
  uint32_t got_ = 0;
  int32_t payloadSlot_ = -1;
  // Busy slots that are large READs into fixed buffers (Slot::large).
  uint32_t largeReads_ = 0;
};

}  // namespace ublk
