// The part of the ublk uAPI (Linux include/uapi/linux/ublk_cmd.h) the addon needs:
// the two command payloads carried in an io_uring SQE, the per-tag I/O descriptor
// and the opcodes and results of the I/O commands. Kept here so a build never
// depends on the host's kernel headers. Layouts are fixed by the kernel ABI; the
// static_asserts pin them. Everything else (ADD_DEV/SET_PARAMS payloads, flags,
// control opcodes) is encoded in TypeScript (src/ublk/structs.ts, constants.ts).
#pragma once

#include <cerrno>
#include <cstddef>
#include <cstdint>

namespace ublk::uapi {

// Payload of a control command on /dev/ublk-control. At 32 bytes it does not fit
// the 16-byte command area of a 64-byte SQE, so the control ring needs
// IORING_SETUP_SQE128 (the driver rejects commands issued without it).
struct CtrlCmd {
  uint32_t dev_id;        // target device; UINT32_MAX asks ADD_DEV to pick one
  uint16_t queue_id;      // 0xffff unless the command is about one queue
  uint16_t len;           // length of the buffer at addr
  uint64_t addr;          // command buffer (in, out, or both)
  uint64_t data[1];       // inline argument: pid for START_DEV/END_USER_RECOVERY
  uint16_t dev_path_len;  // unprivileged devices only; always 0 here
  uint16_t pad;
  uint32_t reserved;
};
static_assert(sizeof(CtrlCmd) == 32);
static_assert(offsetof(CtrlCmd, addr) == 8);
static_assert(offsetof(CtrlCmd, data) == 16);
static_assert(offsetof(CtrlCmd, dev_path_len) == 24);

// Payload of an I/O command on /dev/ublkcN; fits a normal 64-byte SQE.
struct IoCmd {
  uint16_t q_id;
  uint16_t tag;
  int32_t result;  // COMMIT_AND_FETCH: bytes done, or -errno
  uint64_t addr;   // this tag's buffer in our address space (copy mode)
};
static_assert(sizeof(IoCmd) == 16);
static_assert(offsetof(IoCmd, addr) == 8);

// One entry of a queue's descriptor array, mmapped read-only from /dev/ublkcN and
// indexed by tag. Only its size matters here; JS reads the fields.
struct IoDesc {
  uint32_t op_flags;  // op in bits 0-7, UBLK_IO_F_* in bits 8-31
  uint32_t nr_sectors;
  uint64_t start_sector;
  uint64_t addr;
};
static_assert(sizeof(IoDesc) == 24);

// I/O command numbers. Legacy opcodes are the bare numbers; since Linux 6.4 the
// same commands are also accepted ioctl-encoded: _IOWR('u', nr, struct IoCmd).
// Devices added with UBLK_F_CMD_IOCTL_ENCODE expect the encoded form.
constexpr uint32_t kIoFetchReq = 0x20;
constexpr uint32_t kIoCommitAndFetchReq = 0x21;

constexpr uint32_t IocReadWrite(uint32_t nr, uint32_t size) {
  // _IOC(_IOC_READ|_IOC_WRITE, 'u', nr, size) with the generic ioctl layout:
  // dir in bits 30-31, size in 16-29, type in 8-15, nr in 0-7.
  return (3u << 30) | (size << 16) | (uint32_t{'u'} << 8) | nr;
}
constexpr uint32_t kIoFetchReqEncoded = IocReadWrite(kIoFetchReq, sizeof(IoCmd));
constexpr uint32_t kIoCommitAndFetchReqEncoded = IocReadWrite(kIoCommitAndFetchReq, sizeof(IoCmd));
static_assert(kIoFetchReqEncoded == 0xc0107520u);

// UBLK_F_AUTO_BUF_REG (Linux 6.16, Documentation/block/ublk.rst "Auto Buffer
// Registration"): struct ublk_auto_buf_reg { u16 index; u8 flags; u8 reserved0; u32
// reserved1; } travels in the FETCH/COMMIT_AND_FETCH SQE's own addr field (not IoCmd.addr,
// which then stays 0). Before handing the tag its next request the kernel registers the
// request's pages as fixed buffer `index` of the ring that issued the command (a sparse
// buffer table must exist there), and unregisters them when the request is committed.
// UBLK_AUTO_BUF_REG_FALLBACK (flags bit 0) is not used: nothing here registers by hand.
constexpr uint64_t AutoBufRegAddr(uint16_t index) { return uint64_t{index}; }

// UBLK_F_USER_COPY (Linux 6.5): pread/pwrite on /dev/ublkcN at this offset read a WRITE
// request's data or write a READ request's data, byte `offset` of the request that tag `tag`
// of queue `qid` holds (UBLKSRV_IO_BUF_OFFSET, UBLK_IO_BUF_BITS 25, UBLK_TAG_BITS 16). The
// kernel checks the direction and bounds the copy to the request's length.
constexpr uint64_t kUserCopyOffset = 0x80000000ull;
constexpr unsigned kUserCopyTagShift = 25;
constexpr unsigned kUserCopyQidShift = kUserCopyTagShift + 16;
constexpr uint64_t UserCopyPos(uint16_t qid, uint16_t tag, uint32_t offset) {
  return kUserCopyOffset + (uint64_t{qid} << kUserCopyQidShift) + (uint64_t{tag} << kUserCopyTagShift) + offset;
}

// Results of FETCH_REQ/COMMIT_AND_FETCH_REQ completions. Only ABORT means the
// tag is finished: the device is stopping and the command must not be re-issued.
constexpr int kIoResOk = 0;
constexpr int kIoResNeedGetData = 1;
constexpr int kIoResAbort = -ENODEV;

// Each queue's descriptor array sits at qid * (the array size for the largest
// possible depth, page-rounded) in /dev/ublkcN's mmap offset space.
constexpr uint32_t kMaxQueueDepth = 4096;
constexpr uint64_t kCmdBufOffset = 0;

}  // namespace ublk::uapi
