/*
 * The launcher's own freestanding runtime: process entry, raw Linux system calls (x86-64 and
 * arm64), the few string helpers the launcher needs and the stack protector's guard.
 *
 * Why not libc: a launcher runs once per CNI call, and a statically linked glibc does work
 * before main that the launcher does not need (CPU feature probing for its IFUNCs, where each
 * CPUID is a VM exit under a hypervisor; TLS, locale and stdio setup; page faults across a
 * much larger image), about as much again as the rest of an empty program's fork-to-exit.
 * Only the Linux UAPI headers and the compiler's freestanding headers are used; the build is
 * `-ffreestanding -nostdlib -static` (native/binding.gyp).
 *
 * System calls return the kernel's value: >= 0 on success, -errno on failure.
 */
#ifndef BERTH_LAUNCHER_RT_H
#define BERTH_LAUNCHER_RT_H

#include <asm/unistd.h>
#include <linux/errno.h>
#include <linux/fcntl.h>
#include <linux/memfd.h>
#include <linux/poll.h>
#include <linux/stat.h>
#include <linux/time_types.h>
#include <linux/uio.h>
#include <linux/un.h>
#include <stddef.h>
#include <stdint.h>

#ifndef S_IFMT
#error "S_IFMT must come from linux/stat.h: no libc header may be included here"
#endif

#if !defined(__x86_64__) && !defined(__aarch64__)
#error "the launcher's runtime knows the system call conventions of x86-64 and arm64 only"
#endif

typedef long ssize_t;

/* Socket ABI constants (identical on x86-64 and arm64; the UAPI headers leave them to libc). */
#define AF_UNIX 1
#define SOCK_STREAM 1
#define SOCK_CLOEXEC O_CLOEXEC
#define SOCK_NONBLOCK O_NONBLOCK
#define SOL_SOCKET 1
#define SO_ERROR 4
#define SO_SNDTIMEO_OLD 21
#define MSG_NOSIGNAL 0x4000
#define SIGPIPE 13
#define SIGKILL 9
#define SIGCHLD 17
#define PR_SET_PDEATHSIG 1
#define SIG_DFL_HANDLER 0UL
#define SIG_IGN_HANDLER 1UL
#define ARCH_SET_FS 0x1002
#define AT_RANDOM 25
#define R_OK 4

struct rt_msghdr {
  void *msg_name;
  int msg_namelen;
  struct iovec *msg_iov;
  size_t msg_iovlen;
  void *msg_control;
  size_t msg_controllen;
  unsigned msg_flags;
};

struct rt_timeval {
  long tv_sec;
  long tv_usec;
};

/* The kernel's struct sigaction (not libc's): handler, flags, restorer, mask. */
struct rt_sigaction {
  unsigned long handler;
  unsigned long flags;
  unsigned long restorer;
  unsigned long mask;
};

static inline long rt_syscall(long n, long a, long b, long c, long d, long e, long f) {
#if defined(__x86_64__)
  register long r10 __asm__("r10") = d;
  register long r8 __asm__("r8") = e;
  register long r9 __asm__("r9") = f;
  long ret;
  __asm__ volatile("syscall"
                   : "=a"(ret)
                   : "a"(n), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                   : "rcx", "r11", "memory");
  return ret;
#else
  register long x8 __asm__("x8") = n;
  register long x0 __asm__("x0") = a;
  register long x1 __asm__("x1") = b;
  register long x2 __asm__("x2") = c;
  register long x3 __asm__("x3") = d;
  register long x4 __asm__("x4") = e;
  register long x5 __asm__("x5") = f;
  __asm__ volatile("svc 0" : "+r"(x0) : "r"(x8), "r"(x1), "r"(x2), "r"(x3), "r"(x4), "r"(x5) : "memory", "cc");
  return x0;
#endif
}

#define SC0(n) rt_syscall(n, 0, 0, 0, 0, 0, 0)
#define SC1(n, a) rt_syscall(n, (long)(a), 0, 0, 0, 0, 0)
#define SC2(n, a, b) rt_syscall(n, (long)(a), (long)(b), 0, 0, 0, 0)
#define SC3(n, a, b, c) rt_syscall(n, (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define SC4(n, a, b, c, d) rt_syscall(n, (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define SC5(n, a, b, c, d, e) rt_syscall(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)
#define SC6(n, a, b, c, d, e, f) rt_syscall(n, (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

static inline ssize_t sys_read(int fd, void *buf, size_t len) { return SC3(__NR_read, fd, buf, len); }
static inline ssize_t sys_write(int fd, const void *buf, size_t len) { return SC3(__NR_write, fd, buf, len); }
static inline int sys_close(int fd) { return (int)SC1(__NR_close, fd); }
static inline int sys_socket(int domain, int type, int proto) { return (int)SC3(__NR_socket, domain, type, proto); }
static inline int sys_connect(int fd, const void *addr, unsigned len) { return (int)SC3(__NR_connect, fd, addr, len); }
static inline ssize_t sys_sendmsg(int fd, const struct rt_msghdr *m, int flags) { return SC3(__NR_sendmsg, fd, m, flags); }
static inline int sys_getsockopt(int fd, int level, int name, void *val, unsigned *len) {
  return (int)SC5(__NR_getsockopt, fd, level, name, val, len);
}
static inline int sys_setsockopt(int fd, int level, int name, const void *val, unsigned len) {
  return (int)SC5(__NR_setsockopt, fd, level, name, val, len);
}
static inline int sys_fcntl(int fd, int cmd, long arg) { return (int)SC3(__NR_fcntl, fd, cmd, arg); }
/* poll(2) by ppoll: arm64 has no poll. timeout_ms < 0 waits forever. */
static inline int sys_poll(struct pollfd *fds, unsigned n, int timeout_ms) {
  struct __kernel_timespec ts = {.tv_sec = timeout_ms / 1000, .tv_nsec = (long long)(timeout_ms % 1000) * 1000000};
  return (int)SC5(__NR_ppoll, fds, n, timeout_ms < 0 ? (void *)0 : &ts, 0, 8);
}
static inline int sys_statx_fd(int fd, unsigned mask, struct statx *st) {
  return (int)SC5(__NR_statx, fd, "", AT_EMPTY_PATH, mask, st);
}
static inline int sys_clock_gettime(int clock, struct __kernel_timespec *ts) { return (int)SC2(__NR_clock_gettime, clock, ts); }
static inline int sys_nanosleep(const struct __kernel_timespec *ts) { return (int)SC2(__NR_nanosleep, ts, 0); }
static inline ssize_t sys_readlink(const char *path, char *buf, size_t len) {
  return SC4(__NR_readlinkat, AT_FDCWD, path, buf, len);
}
static inline int sys_access(const char *path, int mode) { return (int)SC4(__NR_faccessat, AT_FDCWD, path, mode, 0); }
static inline int sys_memfd_create(const char *name, unsigned flags) { return (int)SC2(__NR_memfd_create, name, flags); }
static inline long sys_lseek(int fd, long off, int whence) { return SC3(__NR_lseek, fd, off, whence); }
static inline int sys_dup2(int from, int to) { return from == to ? to : (int)SC3(__NR_dup3, from, to, 0); }
static inline int sys_execve(const char *path, char *const argv[], char *const envp[]) {
  return (int)SC3(__NR_execve, path, argv, envp);
}
static inline void *sys_mmap_anon(size_t len) {
  /* PROT_READ|PROT_WRITE, MAP_PRIVATE|MAP_ANONYMOUS */
  long r = SC6(__NR_mmap, 0, len, 0x1 | 0x2, 0x02 | 0x20, -1, 0);
  return r < 0 && r > -4096 ? (void *)0 : (void *)r;
}
/* Sets `sig`'s disposition to `handler` (SIG_DFL_HANDLER or SIG_IGN_HANDLER), whatever was inherited. */
static inline void sys_set_handler(int sig, unsigned long handler) {
  struct rt_sigaction sa = {.handler = handler};
  SC4(__NR_rt_sigaction, sig, &sa, 0, 8);
}
static inline void sys_ignore_sigpipe(void) { sys_set_handler(SIGPIPE, SIG_IGN_HANDLER); }
static inline int sys_pipe2(int fds[2], int flags) { return (int)SC2(__NR_pipe2, fds, flags); }
/* fork(2) as clone(SIGCHLD): arm64 has no fork system call. The child gets 0. */
static inline int sys_fork(void) { return (int)SC5(__NR_clone, SIGCHLD, 0, 0, 0, 0); }
static inline int sys_wait4(int pid, int *status) { return (int)SC4(__NR_wait4, pid, status, 0, 0); }
static inline int sys_prctl(int option, unsigned long arg) { return (int)SC5(__NR_prctl, option, arg, 0, 0, 0); }
static inline int sys_getpid(void) { return (int)SC0(__NR_getpid); }
static inline int sys_getppid(void) { return (int)SC0(__NR_getppid); }
/*
 * Dies of `sig` as the default action would (unblocked, handler reset); returns if it did not.
 * Without a core file of its own: the process that crashed has already written one.
 */
static inline void sys_raise_default(int sig) {
  sys_set_handler(sig, SIG_DFL_HANDLER);
  struct {
    uint64_t cur, max;
  } no_core = {0, 0};
  SC4(__NR_prlimit64, 0, 4 /* RLIMIT_CORE */, &no_core, 0);
  unsigned long set = 1UL << (sig - 1);
  SC4(__NR_rt_sigprocmask, 1 /* SIG_UNBLOCK */, &set, 0, 8);
  SC2(__NR_kill, sys_getpid(), sig);
}
__attribute__((noreturn)) static inline void sys_exit(int code) {
  for (;;) SC1(__NR_exit_group, code);
}

/* ---- strings ---- */

/* Compiler-generated code may call these four by name; they must exist. */
void *memcpy(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  while (n--) *d++ = *s++;
  return dst;
}
void *memmove(void *dst, const void *src, size_t n) {
  unsigned char *d = dst;
  const unsigned char *s = src;
  if ((uintptr_t)d < (uintptr_t)s) {
    while (n--) *d++ = *s++;
  } else {
    while (n--) d[n] = s[n];
  }
  return dst;
}
void *memset(void *dst, int c, size_t n) {
  unsigned char *d = dst;
  while (n--) *d++ = (unsigned char)c;
  return dst;
}
int memcmp(const void *a, const void *b, size_t n) {
  const unsigned char *x = a, *y = b;
  for (; n; n--, x++, y++) {
    if (*x != *y) return *x - *y;
  }
  return 0;
}
static size_t rt_strlen(const char *s) {
  size_t n = 0;
  while (s[n]) n++;
  return n;
}
static int rt_strcmp(const char *a, const char *b) {
  while (*a && *a == *b) a++, b++;
  return (unsigned char)*a - (unsigned char)*b;
}
static int rt_startswith(const char *s, const char *prefix) {
  while (*prefix) {
    if (*s++ != *prefix++) return 0;
  }
  return 1;
}
static const char *rt_strrchr(const char *s, char c) {
  const char *last = 0;
  for (; *s; s++) {
    if (*s == c) last = s;
  }
  return last;
}

/* A bounded string builder: appends truncate, the buffer always ends in NUL. */
struct rt_buf {
  char *p;
  size_t cap; /* bytes of p, NUL included */
  size_t len;
  int truncated;
};

static void rt_put_n(struct rt_buf *b, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    if (b->len + 1 >= b->cap) {
      b->truncated = 1;
      break;
    }
    b->p[b->len++] = s[i];
  }
  b->p[b->len] = '\0';
}
static void rt_put(struct rt_buf *b, const char *s) { rt_put_n(b, s, rt_strlen(s)); }
static void rt_put_int(struct rt_buf *b, long v) {
  char digits[24];
  int i = sizeof digits;
  unsigned long u = v < 0 ? 0UL - (unsigned long)v : (unsigned long)v;
  do {
    digits[--i] = (char)('0' + u % 10);
    u /= 10;
  } while (u);
  if (v < 0) digits[--i] = '-';
  rt_put_n(b, digits + i, sizeof digits - (size_t)i);
}

/* strerror for the errors a launcher can meet; others print as "errno N". */
static void rt_put_errno(struct rt_buf *b, int err) {
  static const struct {
    int err;
    const char *text;
  } known[] = {
      {EPERM, "Operation not permitted"},
      {ENOENT, "No such file or directory"},
      {EINTR, "Interrupted system call"},
      {EIO, "Input/output error"},
      {ENXIO, "No such device or address"},
      {E2BIG, "Argument list too long"},
      {ENOEXEC, "Exec format error"},
      {EBADF, "Bad file descriptor"},
      {EAGAIN, "Resource temporarily unavailable"},
      {ENOMEM, "Cannot allocate memory"},
      {EACCES, "Permission denied"},
      {EFAULT, "Bad address"},
      {EBUSY, "Device or resource busy"},
      {ENOTDIR, "Not a directory"},
      {EISDIR, "Is a directory"},
      {EINVAL, "Invalid argument"},
      {ENFILE, "Too many open files in system"},
      {EMFILE, "Too many open files"},
      {ETXTBSY, "Text file busy"},
      {EFBIG, "File too large"},
      {ENOSPC, "No space left on device"},
      {EROFS, "Read-only file system"},
      {ENAMETOOLONG, "File name too long"},
      {ELOOP, "Too many levels of symbolic links"},
      {ENOSYS, "Function not implemented"},
      {ELIBBAD, "Accessing a corrupted shared library"},
  };
  for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
    if (known[i].err == err) {
      rt_put(b, known[i].text);
      return;
    }
  }
  rt_put(b, "errno ");
  rt_put_int(b, err);
}

/* ---- process entry ---- */

static char **rt_environ;

static const char *rt_getenv(const char *name) {
  size_t n = rt_strlen(name);
  for (char **e = rt_environ; *e; e++) {
    if (rt_startswith(*e, name) && (*e)[n] == '=') return *e + n + 1;
  }
  return 0;
}

int main(int argc, char **argv);

/*
 * The stack protector's guard, from the kernel's AT_RANDOM bytes (low byte zero, as libc does,
 * so that a string overflow cannot copy it). x86-64 reads it at %fs:0x28, so %fs gets a block
 * of its own; arm64 reads the global __stack_chk_guard.
 */
#if defined(__x86_64__)
static unsigned long rt_tcb[8];
#else
unsigned long __stack_chk_guard;
#endif

__attribute__((noreturn)) void __stack_chk_fail(void) {
  static const char msg[] = "berth launcher: stack smashing detected\n";
  sys_write(2, msg, sizeof msg - 1);
  sys_exit(127);
}

__attribute__((noreturn, used, no_stack_protector)) void rt_start(long *sp) {
  int argc = (int)sp[0];
  char **argv = (char **)(sp + 1);
  char **envp = argv + argc + 1;
  rt_environ = envp;
  char **e = envp;
  while (*e) e++;
  unsigned long guard = 0;
  for (unsigned long *aux = (unsigned long *)(e + 1); aux[0] != 0; aux += 2) {
    if (aux[0] == AT_RANDOM) memcpy(&guard, (const void *)aux[1], sizeof guard);
  }
  guard &= ~0xffUL;
#if defined(__x86_64__)
  rt_tcb[0] = (unsigned long)rt_tcb; /* the TCB's self pointer */
  rt_tcb[2] = (unsigned long)rt_tcb;
  rt_tcb[5] = guard; /* %fs:0x28 */
  if (SC2(__NR_arch_prctl, ARCH_SET_FS, rt_tcb) != 0) {
    static const char msg[] = "berth launcher: cannot set up its thread pointer (arch_prctl)\n";
    sys_write(2, msg, sizeof msg - 1);
    sys_exit(127);
  }
#else
  __stack_chk_guard = guard;
#endif
  sys_exit(main(argc, argv));
}

#if defined(__x86_64__)
__asm__(
    ".pushsection .text\n"
    ".global _start\n"
    ".type _start,@function\n"
    "_start:\n"
    "  xor %ebp, %ebp\n"
    "  mov %rsp, %rdi\n"
    "  and $-16, %rsp\n"
    "  call rt_start\n"
    "  hlt\n"
    ".popsection\n");
#else
__asm__(
    ".pushsection .text\n"
    ".global _start\n"
    ".type _start,%function\n"
    "_start:\n"
    "  mov x29, #0\n"
    "  mov x30, #0\n"
    "  mov x0, sp\n"
    "  bl rt_start\n"
    "  brk #0\n"
    ".popsection\n");
#endif

#endif
