"""The seccomp profile of every job: an allowlist equivalent to Docker's default.

Anything not listed fails with EPERM. Left out, as Docker leaves them out for a container without capabilities:
namespaces (`unshare`, `setns`, `clone` with a CLONE_NEW* flag), mounts (`mount`, `umount2`, `pivot_root`, the
new mount API), `bpf`, the kernel keyring (`keyctl`, `add_key`, `request_key`), `io_uring_*`, kernel modules,
`kexec_*`, setting clocks, `perf_event_open`, `userfaultfd`, `open_by_handle_at`, `reboot`, `swapon`/`swapoff`,
`acct`, `quotactl`, `syslog`, `ioperm`/`iopl`, NUMA memory policy calls and the obsolete ones. `clone3` answers
ENOSYS, so glibc falls back to `clone`, whose flags the filter can see (clone3 passes them in memory).
Syscalls newer than libseccomp knows are answered ENOSYS by runc, so programs probing them fall back too.
"""

from __future__ import annotations

import errno
import platform
from typing import Any

# clone(2) flags that make new namespaces: CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC,
# CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET.
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000

# personality(2) values Docker allows: PER_LINUX, PER_LINUX32, UNAME26, UNAME26|PER_LINUX32, and the query.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# This machine's architecture and its 32-bit compat one, in libseccomp's names. Not x32 (Docker lists it): Debian's
# kernels leave that ABI off, libseccomp refuses its syscalls when it is not listed, and listing it made runc's
# start about 20 ms slower here.
ARCHITECTURES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
}
ARCH_SPECIFIC = {
    "x86_64": ["arch_prctl", "modify_ldt"],
    "aarch64": ["arm_fadvise64_64", "arm_sync_file_range", "sync_file_range2", "breakpoint", "cacheflush", "set_tls"],
}

_ALLOWED_NAMES = """
accept accept4 access alarm bind brk capget capset chdir chmod chown chown32 clock_getres clock_getres_time64
clock_gettime clock_gettime64 clock_nanosleep clock_nanosleep_time64 close close_range connect copy_file_range
creat dup dup2 dup3 epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2 epoll_wait
epoll_wait_old eventfd eventfd2 execve execveat exit exit_group faccessat faccessat2 fadvise64 fadvise64_64
fallocate fanotify_mark fchdir fchmod fchmodat fchown fchown32 fchownat fcntl fcntl64 fdatasync fgetxattr
flistxattr flock fork fremovexattr fsetxattr fstat fstat64 fstatat64 fstatfs fstatfs64 fsync ftruncate
ftruncate64 futex futex_time64 futex_waitv futimesat get_robust_list get_thread_area getcpu getcwd getdents
getdents64 getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getitimer getpeername
getpgid getpgrp getpid getppid getpriority getrandom getresgid getresgid32 getresuid getresuid32 getrlimit
getrusage getsid getsockname getsockopt gettid gettimeofday getuid getuid32 getxattr inotify_add_watch
inotify_init inotify_init1 inotify_rm_watch io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64
io_setup io_submit ioctl ioprio_get ioprio_set ipc kcmp kill landlock_add_rule landlock_create_ruleset
landlock_restrict_self lchown lchown32 lgetxattr link linkat listen listxattr llistxattr _llseek lremovexattr
lseek lsetxattr lstat lstat64 madvise membarrier memfd_create memfd_secret mincore mkdir mkdirat mknod mknodat
mlock mlock2 mlockall mmap mmap2 mprotect mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64
mq_timedsend mq_timedsend_time64 mq_unlink mremap msgctl msgget msgrcv msgsnd msync munlock munlockall munmap
name_to_handle_at nanosleep newfstatat _newselect open openat openat2 pause pidfd_open pidfd_send_signal pipe pipe2
pkey_alloc pkey_free pkey_mprotect poll ppoll ppoll_time64 prctl pread64 preadv preadv2 prlimit64
process_mrelease process_vm_readv process_vm_writev pselect6 pselect6_time64 ptrace pwrite64 pwritev pwritev2 read
readahead readlink readlinkat readv recv recvfrom recvmmsg recvmmsg_time64 recvmsg remap_file_pages removexattr
rename renameat renameat2 restart_syscall rmdir rseq rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo
rt_sigreturn rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sched_get_priority_max
sched_get_priority_min sched_getaffinity sched_getattr sched_getparam sched_getscheduler sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield seccomp
select semctl semget semop semtimedop semtimedop_time64 send sendfile sendfile64 sendmmsg sendmsg sendto
set_robust_list set_thread_area set_tid_address setfsgid setfsgid32 setfsuid setfsuid32 setgid setgid32 setgroups
setgroups32 setitimer setpgid setpriority setregid setregid32 setresgid setresgid32 setresuid setresuid32 setreuid
setreuid32 setrlimit setsid setsockopt setuid setuid32 setxattr shmat shmctl shmdt shmget shutdown sigaltstack
signalfd signalfd4 sigpending sigprocmask sigreturn socket socketcall socketpair splice stat stat64 statfs statfs64
statx symlink symlinkat sync sync_file_range syncfs sysinfo tee tgkill time timer_create timer_delete
timer_getoverrun timer_gettime timer_gettime64 timer_settime timer_settime64 timerfd_create timerfd_gettime
timerfd_gettime64 timerfd_settime timerfd_settime64 times tkill truncate truncate64 ugetrlimit umask uname unlink
unlinkat utime utimensat utimensat_time64 utimes vfork vmsplice wait4 waitid waitpid write writev
"""
ALLOWED = tuple(_ALLOWED_NAMES.split())


def _arg_rule(name: str, op: str, value: int, value_two: int = 0) -> dict[str, Any]:
    arg = {"index": 0, "value": value, "valueTwo": value_two, "op": op}
    return {"names": [name], "action": "SCMP_ACT_ALLOW", "args": [arg]}


def default_profile(machine: str | None = None) -> dict[str, Any]:
    """The OCI `linux.seccomp` of a job on this machine (`platform.machine()` unless given)."""
    arch = machine or platform.machine()
    rules: list[dict[str, Any]] = [
        {"names": sorted([*ALLOWED, *ARCH_SPECIFIC.get(arch, [])]), "action": "SCMP_ACT_ALLOW"},
        # clone without a namespace flag: (flags & CLONE_NAMESPACE_FLAGS) == 0
        _arg_rule("clone", "SCMP_CMP_MASKED_EQ", CLONE_NAMESPACE_FLAGS, 0),
        {"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS},
    ]
    rules += [_arg_rule("personality", "SCMP_CMP_EQ", value) for value in PERSONALITIES]
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": list(ARCHITECTURES.get(arch, [])),
        "syscalls": rules,
    }
