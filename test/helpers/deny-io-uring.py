#!/usr/bin/env python3
# deny-io-uring.py COMMAND [ARG]...: runs COMMAND under a seccomp filter that fails
# io_uring_setup with EPERM, as a container runtime's default profile does. Everything
# else is allowed. io_uring_setup is syscall 425 on every Linux architecture (the
# unified table, Linux 5.1+).
import ctypes
import os
import struct
import sys

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
NR_IO_URING_SETUP = 425
EPERM = 1

BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15     # BPF_JMP | BPF_JEQ | BPF_K
BPF_RET_K = 0x06     # BPF_RET | BPF_K
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000


def insn(code, jt, jf, k):
    return struct.pack('HBBI', code, jt, jf, k)


prog = b''.join([
    insn(BPF_LD_W_ABS, 0, 0, 0),                      # A = seccomp_data.nr
    insn(BPF_JEQ_K, 0, 1, NR_IO_URING_SETUP),         # io_uring_setup?
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ERRNO | EPERM),
    insn(BPF_RET_K, 0, 0, SECCOMP_RET_ALLOW),
])
buf = ctypes.create_string_buffer(prog, len(prog))


class SockFprog(ctypes.Structure):
    _fields_ = [('len', ctypes.c_ushort), ('filter', ctypes.c_void_p)]


fprog = SockFprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p, ctypes.c_ulong, ctypes.c_ulong]
if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, None, 0, 0) != 0:
    sys.exit('prctl(PR_SET_NO_NEW_PRIVS): ' + os.strerror(ctypes.get_errno()))
if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
    sys.exit('prctl(PR_SET_SECCOMP): ' + os.strerror(ctypes.get_errno()))
os.execvp(sys.argv[1], sys.argv[1:])
