/*
 * berth CNI launcher: the executable a runtime runs as build/cni/berth-<type>.
 *
 * Starting Node costs ~30 ms per CNI call; the resident berth agent runs the same plugin
 * function in-process. So this program only forwards the invocation (plugin type =
 * basename(argv[0]), the CNI_* and BERTH_* environment, stdin) to the agent over a unix
 * socket and reproduces the agent's stdout, stderr and exit code. When no agent answers it
 * runs Node on the bundled plugin (<dir of this exe>/../cni-node/<type>.cjs, or the Node and
 * bundle directory `berth install` wrote into this copy; through boot.cjs and its V8 code
 * cache) with the same environment and stdin: the cold path, identical in
 * behaviour, only slower. Node runs as a child that reports its exit status before its
 * process is torn down (run_node_child).
 *
 * Socket, first found: $BERTH_CNI_SOCKET ("off" skips the agent), else the top-level string
 * key "berthSocket" or "agentSocket" of the stdin config, else /run/berth/cni.sock.
 *
 * Once the whole request has been written the agent may have acted on it, so a broken
 * connection after that point is reported as CNI error 11 (try again) and never retried on
 * the cold path. Wire format: wire.h.
 *
 * Freestanding and static (rt.h, binding.gyp): no libc and no dynamic loader run per call
 * (rt.h says why).
 */
#include "rt.h"
#include "wire.h"

#ifndef BERTH_NODE
#error "BERTH_NODE (absolute path of the Node binary) must be defined at build time"
#endif

/*
 * Paths `berth install` writes into its copy of this program (bin/install.ts, patchLauncher):
 * after the marker, "<absolute Node binary>\0<absolute directory of the plugin bundles>\0".
 * A copy in a CNI bin dir (/opt/cni/bin) then runs the Node it was installed with on the
 * bundles under the install prefix, whatever the runtime's PATH and wherever the bin dir is.
 * Left empty (the build tree, an unpacked release), the launcher uses the Node compiled in
 * and ../cni-node beside itself. Not const and not static: the compiler must read it.
 */
#define INSTALL_MARKER "BERTH-INSTALL-PATHS-V1"
char berth_install_paths[4096] = INSTALL_MARKER;

static const char *node_path(void) {
  const char *p = berth_install_paths + sizeof INSTALL_MARKER;
  return *p ? p : BERTH_NODE;
}

/* The directory of the plugin bundles when installed, else NULL. */
static const char *installed_bundle_dir(void) {
  const char *p = berth_install_paths + sizeof INSTALL_MARKER;
  if (!*p) return (const char *)0;
  p += rt_strlen(p) + 1;
  return *p ? p : (const char *)0;
}

#define DEFAULT_SOCKET "/run/berth/cni.sock"
/* The plugins' stdin limit is 1 MiB; one byte more lets the plugin report the size error. */
#define STDIN_LIMIT (1024u * 1024u + 1u)
#define CONNECT_TIMEOUT_MS 200
/* A live agent reads at once; a request it does not take within this is sent to the cold path. */
#define SEND_TIMEOUT_MS 5000
#define MAX_ENV_BYTES (256u * 1024u)
#define PATH_MAX 4096

static char stdin_buf[STDIN_LIMIT];
static size_t stdin_len;
/* stdin was a terminal or closed: the cold path gets it untouched (Node reads it as empty). */
static int stdin_untouched;
/* The request frame's header, type and environment (stdin follows as its own iovec). */
static unsigned char head_buf[BCNI_HEADER_BYTES + 4 + 256 + 4 + MAX_ENV_BYTES + 4];

static const char *const SUPPORTED_VERSIONS[] = {"0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"};

static int64_t now_ms(void) {
  struct __kernel_timespec ts;
  sys_clock_gettime(1 /* CLOCK_MONOTONIC */, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void put_u16(unsigned char *p, uint16_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
}

static void put_u32(unsigned char *p, uint32_t v) {
  p[0] = (unsigned char)v;
  p[1] = (unsigned char)(v >> 8);
  p[2] = (unsigned char)(v >> 16);
  p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* Writes all of buf to fd (a pipe may be non-blocking); gives up silently when the reader is gone. */
static void write_fd_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = sys_write(fd, buf, len);
    if (n == -EINTR) continue;
    if (n == -EAGAIN) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int r = sys_poll(&p, 1, -1);
      if (r < 0 && r != -EINTR) return;
      continue;
    }
    if (n < 0) return;
    buf += n;
    len -= (size_t)n;
  }
}

static void read_stdin(void) {
  struct statx st;
  int sr = sys_statx_fd(0, STATX_TYPE, &st);
  /* Closed, or a terminal. Any other failure (statx refused by an old kernel or a seccomp
   * filter): read it anyway, as the plugin would. */
  if (sr == -EBADF || (sr == 0 && (st.stx_mode & S_IFMT) == S_IFCHR)) {
    stdin_untouched = 1;
    return;
  }
  while (stdin_len < STDIN_LIMIT) {
    ssize_t n = sys_read(0, stdin_buf + stdin_len, STDIN_LIMIT - stdin_len);
    if (n == -EINTR) continue;
    if (n == -EAGAIN) { /* inherited O_NONBLOCK: wait instead of spinning */
      struct pollfd p = {.fd = 0, .events = POLLIN};
      int r = sys_poll(&p, 1, -1);
      if (r < 0 && r != -EINTR) return;
      continue;
    }
    if (n <= 0) return; /* EOF, or unreadable: forward what we have; the plugin reports a bad config */
    stdin_len += (size_t)n;
  }
}

/* Scans a JSON string starting after its opening quote; returns the index of the closing quote or -1. */
static ssize_t scan_string(const char *js, size_t len, size_t i, int *escaped) {
  *escaped = 0;
  for (; i < len; i++) {
    if (js[i] == '\\') {
      *escaped = 1;
      i++;
    } else if (js[i] == '"') {
      return (ssize_t)i;
    }
  }
  return -1;
}

static size_t skip_ws(const char *js, size_t len, size_t i) {
  while (i < len && (js[i] == ' ' || js[i] == '\t' || js[i] == '\n' || js[i] == '\r')) i++;
  return i;
}

/*
 * The string value of a top-level key of the JSON object in js, copied to out. Not a JSON
 * parser: it tracks nesting and strings only, so keys inside nested objects (prevResult, ipam)
 * never match. Values with escapes or longer than outsz-1 are ignored. The last occurrence
 * wins, as with JSON.parse. Returns 1 when found.
 */
static int top_level_string(const char *js, size_t len, const char *key, char *out, size_t outsz) {
  size_t keylen = rt_strlen(key);
  size_t i = skip_ws(js, len, 0);
  if (i >= len || js[i] != '{') return 0;
  int found = 0;
  int depth = 0;
  char prev = 0;
  while (i < len) {
    char c = js[i];
    if (c == '"') {
      int escaped;
      ssize_t end = scan_string(js, len, i + 1, &escaped);
      if (end < 0) return found;
      int is_key = depth == 1 && (prev == '{' || prev == ',');
      int match = is_key && !escaped && (size_t)end - (i + 1) == keylen && memcmp(js + i + 1, key, keylen) == 0;
      i = (size_t)end + 1;
      prev = 's';
      if (match) {
        size_t j = skip_ws(js, len, i);
        if (j >= len || js[j] != ':') return found;
        j = skip_ws(js, len, j + 1);
        if (j < len && js[j] == '"') {
          ssize_t vend = scan_string(js, len, j + 1, &escaped);
          if (vend < 0) return found;
          size_t vlen = (size_t)vend - (j + 1);
          if (!escaped && vlen < outsz) {
            memcpy(out, js + j + 1, vlen);
            out[vlen] = '\0';
            found = 1;
          }
          i = (size_t)vend + 1;
        } else {
          i = j;
        }
        prev = 'v';
      }
      continue;
    }
    switch (c) {
      case '{':
      case '[':
        depth++;
        prev = c;
        break;
      case '}':
      case ']':
        depth--;
        prev = 'v';
        if (depth == 0) return found;
        break;
      case ',':
      case ':':
        prev = c;
        break;
      case ' ':
      case '\t':
      case '\n':
      case '\r':
        break;
      default:
        prev = 'v';
    }
    i++;
  }
  return found;
}

/* The config's cniVersion when it is one we support, else the newest: what the plugins answer errors in. */
static const char *error_version(void) {
  static char v[16];
  if (stdin_len > 0 && stdin_len < STDIN_LIMIT && top_level_string(stdin_buf, stdin_len, "cniVersion", v, sizeof v)) {
    for (size_t k = 0; k < sizeof SUPPORTED_VERSIONS / sizeof SUPPORTED_VERSIONS[0]; k++) {
      if (rt_strcmp(v, SUPPORTED_VERSIONS[k]) == 0) return SUPPORTED_VERSIONS[k];
    }
  }
  return "1.1.0";
}

/* Appends s to b as JSON string content (no quotes). */
static void put_json_escaped(struct rt_buf *b, const char *s) {
  static const char hex[] = "0123456789abcdef";
  for (; *s && b->len + 7 < b->cap; s++) { /* whole escapes only, so truncation keeps the JSON valid */
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      rt_put_n(b, esc, 2);
    } else if (c < 0x20) {
      char esc[6] = {'\\', 'u', '0', '0', hex[c >> 4], hex[c & 15]};
      rt_put_n(b, esc, 6);
    } else {
      rt_put_n(b, (const char *)&c, 1);
    }
  }
}

/* Prints a CNI error (stdout) and a log line (stderr), then exits 1. */
__attribute__((noreturn)) static void fail(const char *type, int code, const char *msg) {
  char text[2048];
  struct rt_buf body = {text, sizeof text - 3, 0, 0};
  rt_put(&body, "{\"cniVersion\":\"");
  rt_put(&body, error_version());
  rt_put(&body, "\",\"code\":");
  rt_put_int(&body, code);
  rt_put(&body, ",\"msg\":\"");
  put_json_escaped(&body, msg);
  body.cap = sizeof text; /* room kept for the closing quote, brace and newline */
  rt_put(&body, "\"}\n");
  sys_ignore_sigpipe();
  write_fd_all(1, body.p, body.len);
  char line[1200];
  struct rt_buf l = {line, sizeof line - 1, 0, 0};
  rt_put(&l, type);
  rt_put(&l, ": error ");
  rt_put_int(&l, code);
  rt_put(&l, ": ");
  rt_put(&l, msg);
  l.cap = sizeof line;
  rt_put(&l, "\n");
  write_fd_all(2, l.p, l.len);
  sys_exit(1);
}

static const char *socket_path(void) {
  static char from_config[sizeof(((struct sockaddr_un *)0)->sun_path)];
  const char *env = rt_getenv("BERTH_CNI_SOCKET");
  if (env && *env) return env;
  if (stdin_len > 0 && stdin_len < STDIN_LIMIT &&
      (top_level_string(stdin_buf, stdin_len, "berthSocket", from_config, sizeof from_config) ||
       top_level_string(stdin_buf, stdin_len, "agentSocket", from_config, sizeof from_config)) &&
      from_config[0] != '\0') {
    return from_config;
  }
  return DEFAULT_SOCKET;
}

/* Connects to the agent within CONNECT_TIMEOUT_MS; returns a blocking, close-on-exec fd or -1. */
static int connect_agent(const char *path) {
  struct sockaddr_un sa = {.sun_family = AF_UNIX};
  size_t plen = rt_strlen(path);
  if (plen == 0 || plen >= sizeof sa.sun_path) return -1;
  memcpy(sa.sun_path, path, plen + 1);
  int fd = sys_socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -1;
  int64_t deadline = now_ms() + CONNECT_TIMEOUT_MS;
  for (;;) {
    int r = sys_connect(fd, &sa, sizeof sa);
    if (r == 0) break;
    if (r == -EINTR) continue;
    int64_t left = deadline - now_ms();
    if (r == -EAGAIN && left > 0) { /* listen backlog full: the agent is busy, not gone */
      struct __kernel_timespec pause = {.tv_sec = 0, .tv_nsec = 1000000};
      sys_nanosleep(&pause);
      continue;
    }
    if (r == -EINPROGRESS && left > 0) {
      struct pollfd p = {.fd = fd, .events = POLLOUT};
      int soerr = 0;
      unsigned sl = sizeof soerr;
      if (sys_poll(&p, 1, (int)left) == 1 && sys_getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0)
        break;
    }
    sys_close(fd);
    return -1;
  }
  int flags = sys_fcntl(fd, F_GETFL, 0);
  struct rt_timeval tv = {.tv_sec = SEND_TIMEOUT_MS / 1000, .tv_usec = (SEND_TIMEOUT_MS % 1000) * 1000};
  if (flags < 0 || sys_fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0 ||
      sys_setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO_OLD, &tv, sizeof tv) < 0) {
    sys_close(fd);
    return -1;
  }
  return fd;
}

/* Sends iov completely (partial writes, EINTR); returns 0, or the errno that stopped it. */
static int send_all(int fd, struct iovec *iov, int cnt) {
  while (cnt > 0) {
    struct rt_msghdr m = {.msg_iov = iov, .msg_iovlen = (size_t)cnt};
    ssize_t n = sys_sendmsg(fd, &m, MSG_NOSIGNAL);
    if (n == -EINTR) continue;
    if (n < 0) return (int)-n;
    while (cnt > 0 && (size_t)n >= iov->iov_len) {
      n -= (ssize_t)iov->iov_len;
      iov++;
      cnt--;
    }
    if (cnt > 0) {
      iov->iov_base = (char *)iov->iov_base + n;
      iov->iov_len -= (size_t)n;
    }
  }
  return 0;
}

/* Reads exactly len bytes; returns 0, or -1 on EOF or error. */
static int recv_all(int fd, void *buf, size_t len) {
  char *p = buf;
  while (len > 0) {
    ssize_t n = sys_read(fd, p, len);
    if (n == -EINTR) continue;
    if (n <= 0) return -1;
    p += n;
    len -= (size_t)n;
  }
  return 0;
}

static int is_forwarded(const char *kv) { return rt_startswith(kv, "CNI_") || rt_startswith(kv, "BERTH_"); }

/* Header, type and environment of the request frame into head_buf; NULL when too large. */
static unsigned char *request_head(const char *type, size_t *head_len) {
  size_t tlen = rt_strlen(type);
  size_t env_bytes = 0;
  uint32_t env_count = 0;
  for (char **e = rt_environ; *e; e++) {
    if (!is_forwarded(*e)) continue;
    env_bytes += 4 + rt_strlen(*e);
    env_count++;
    if (env_bytes > MAX_ENV_BYTES) return (unsigned char *)0;
  }
  size_t len = BCNI_HEADER_BYTES + 4 + tlen + 4 + env_bytes + 4;
  unsigned char *h = head_buf;
  unsigned char *p = h;
  memcpy(p, BCNI_MAGIC, 4);
  put_u16(p + 4, BCNI_VERSION);
  put_u16(p + 6, BCNI_KIND_REQUEST);
  put_u32(p + 8, (uint32_t)(len - BCNI_HEADER_BYTES + stdin_len));
  p += BCNI_HEADER_BYTES;
  put_u32(p, (uint32_t)tlen);
  memcpy(p + 4, type, tlen);
  p += 4 + tlen;
  put_u32(p, env_count);
  p += 4;
  for (char **e = rt_environ; *e; e++) {
    if (!is_forwarded(*e)) continue;
    size_t l = rt_strlen(*e);
    put_u32(p, (uint32_t)l);
    memcpy(p + 4, *e, l);
    p += 4 + l;
  }
  put_u32(p, (uint32_t)stdin_len);
  *head_len = len;
  return h;
}

/*
 * Reads the agent's response and replays it. Returns only when no complete response came
 * (then the caller decides between the cold path and error 11); otherwise exits.
 */
static void relay_response(int fd, const char *type, int request_sent) {
  unsigned char hdr[BCNI_HEADER_BYTES];
  if (recv_all(fd, hdr, sizeof hdr) < 0) return;
  uint32_t len = get_u32(hdr + 8);
  if (memcmp(hdr, BCNI_MAGIC, 4) != 0 || hdr[4] != BCNI_VERSION || hdr[5] != 0 || hdr[6] != BCNI_KIND_RESPONSE ||
      hdr[7] != 0 || len < 12 || len > BCNI_MAX_RESPONSE_BYTES) {
    if (request_sent) fail(type, 11, "berth agent sent a malformed reply (protocol version mismatch?); try again");
    return;
  }
  unsigned char *body = sys_mmap_anon(len);
  if (!body) fail(type, 11, "out of memory reading the berth agent's reply");
  if (recv_all(fd, body, len) < 0) return;
  int32_t code = (int32_t)get_u32(body);
  uint32_t out_len = get_u32(body + 4);
  if (out_len > len - 12 || get_u32(body + 8 + out_len) > len - 12 - out_len) {
    if (request_sent) fail(type, 11, "berth agent sent a malformed reply; try again");
    return;
  }
  uint32_t err_len = get_u32(body + 8 + out_len);
  sys_close(fd);
  sys_ignore_sigpipe(); /* a runtime that stopped reading must not turn our exit code into a signal */
  write_fd_all(1, (const char *)body + 8, out_len);
  write_fd_all(2, (const char *)body + 12 + out_len, err_len);
  sys_exit(code & 0xff);
}

/* "<why>; <what>: <strerror(err)>" as the message of fail(type, 999, ...). */
__attribute__((noreturn)) static void fail_errno(const char *type, const char *why, const char *what, int err) {
  char msg[1024];
  struct rt_buf b = {msg, sizeof msg, 0, 0};
  rt_put(&b, why);
  rt_put(&b, "; ");
  rt_put(&b, what);
  rt_put(&b, ": ");
  rt_put_errno(&b, err);
  fail(type, 999, msg);
}

/*
 * The cold path runs Node as this process's child and ends as soon as Node reports its exit
 * status, not when Node's process is gone. boot.cjs sends the status (one byte on the pipe
 * named by BERTH_STATUS_FD) as the last thing Node does before it ends, after every 'exit'
 * listener, with the plugin's output written and Node's stdout and stderr closed, so a runtime
 * has everything it would have had. What is left is the kernel tearing down a ~40 MB Node
 * process (unmapping it takes milliseconds), which no runtime needs to wait for. PR_SET_PDEATHSIG
 * ties Node to this process: a runtime that kills the launcher (a timeout) kills the plugin,
 * as before. A Node that dies without sending its status (a signal, an abort, an uncaught
 * error) closes the pipe by dying: its status is then the wait4() result, a signal reproduced
 * as the same signal.
 */
#define MAX_COLD_ENV 8192
static char *cold_env[MAX_COLD_ENV + 2];
static char status_var[32];

/*
 * Takes any BERTH_STATUS_FD of the runtime's own out of this process's environment, in place
 * (boot.cjs would write into that descriptor; Node reads the first of duplicate variables).
 * Returns the number of entries left.
 */
static size_t drop_status_fd_var(void) {
  size_t n = 0;
  for (char **e = rt_environ; *e; e++) {
    if (!rt_startswith(*e, "BERTH_STATUS_FD=")) rt_environ[n++] = *e;
  }
  rt_environ[n] = (char *)0;
  return n;
}

/* Moves a descriptor to 3 or above: with fds 0-2 closed by the runtime, pipe2 would hand out one of those. */
static int above_stdio(int fd) {
  if (fd > 2) return fd;
  int moved = sys_fcntl(fd, F_DUPFD_CLOEXEC, 3);
  sys_close(fd);
  return moved;
}

/* Returns only when Node cannot be started as a child (the caller then execs Node itself). */
static void run_node_child(char *const argv[], const char *type, const char *why, const char *what) {
  size_t n = drop_status_fd_var();
  if (n > MAX_COLD_ENV) return;
  int sp[2];
  if (sys_pipe2(sp, O_CLOEXEC) < 0) return;
  sp[0] = above_stdio(sp[0]);
  sp[1] = above_stdio(sp[1]);
  if (sp[0] < 0 || sp[1] < 0) {
    if (sp[0] >= 0) sys_close(sp[0]);
    if (sp[1] >= 0) sys_close(sp[1]);
    return;
  }
  for (size_t i = 0; i < n; i++) cold_env[i] = rt_environ[i];
  struct rt_buf sb = {status_var, sizeof status_var, 0, 0};
  rt_put(&sb, "BERTH_STATUS_FD=");
  rt_put_int(&sb, sp[1]);
  cold_env[n] = status_var;
  cold_env[n + 1] = (char *)0;
  /* A SIGCHLD the runtime left ignored would have the kernel reap Node before our wait4. */
  sys_set_handler(SIGCHLD, SIG_DFL_HANDLER);
  int parent = sys_getpid();
  int pid = sys_fork();
  if (pid < 0) {
    sys_close(sp[0]);
    sys_close(sp[1]);
    return;
  }
  if (pid == 0) {
    sys_close(sp[0]);
    /* Unchecked: without it only the kill-Node-with-the-launcher property is lost. */
    sys_prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (sys_getppid() != parent) sys_exit(1); /* the launcher was killed before prctl took */
    sys_fcntl(sp[1], F_SETFD, 0);             /* the status pipe, and only it, survives exec */
    fail_errno(type, why, what, -sys_execve(argv[0], argv, cold_env));
  }
  sys_close(sp[1]);
  for (;;) {
    unsigned char code;
    ssize_t r = sys_read(sp[0], &code, 1);
    if (r == 1) sys_exit(code);
    if (r != -EINTR) break;
  }
  int status = 0;
  int w;
  do w = sys_wait4(pid, &status);
  while (w == -EINTR);
  if (w < 0) {
    /* Node may have written its answer already: nothing more on stdout, only a log line. */
    static const char msg[] = "berth launcher: lost the exit status of the cold-path Node process\n";
    sys_write(2, msg, sizeof msg - 1);
    sys_exit(1);
  }
  if ((status & 0x7f) == 0) sys_exit((status >> 8) & 0xff);
  sys_raise_default(status & 0x7f);
  sys_exit(128 + (status & 0x7f));
}

/* The cold path: Node on the bundled plugin, same environment, stdin re-fed from memory. */
__attribute__((noreturn)) static void exec_cold_path(const char *type, const char *why) {
  char self[PATH_MAX];
  const char *dir = installed_bundle_dir();
  if (dir) {
    struct rt_buf sb = {self, sizeof self, 0, 0};
    rt_put(&sb, dir);
    if (sb.truncated) fail(type, 999, "cold path: bundle path too long");
  } else {
    ssize_t n = sys_readlink("/proc/self/exe", self, sizeof self - 1);
    if (n < 0) fail_errno(type, why, "cannot locate the launcher (/proc/self/exe)", (int)-n);
    self[n] = '\0';
    char *slash = (char *)rt_strrchr(self, '/');
    if (slash) *slash = '\0';
    struct rt_buf sb = {self + rt_strlen(self), sizeof self - rt_strlen(self), 0, 0};
    rt_put(&sb, "/../cni-node");
    if (sb.truncated) fail(type, 999, "cold path: bundle path too long");
  }
  char bundle[PATH_MAX + 64];
  struct rt_buf bb = {bundle, sizeof bundle, 0, 0};
  rt_put(&bb, self);
  rt_put(&bb, "/");
  rt_put(&bb, type);
  rt_put(&bb, ".cjs");
  if (bb.truncated) fail(type, 999, "cold path: bundle path too long");
  if (!stdin_untouched) {
    int mfd = sys_memfd_create("berth-cni-stdin", MFD_CLOEXEC);
    if (mfd < 0) fail_errno(type, why, "cold path: memfd_create", -mfd);
    size_t off = 0;
    while (off < stdin_len) {
      ssize_t w = sys_write(mfd, stdin_buf + off, stdin_len - off);
      if (w == -EINTR) continue;
      if (w < 0) fail_errno(type, why, "cold path: writing stdin copy", (int)-w);
      off += (size_t)w;
    }
    /* dup2 clears close-on-exec on fd 0, so only the copy survives exec. */
    long r = sys_lseek(mfd, 0, 0 /* SEEK_SET */);
    if (r >= 0) r = sys_dup2(mfd, 0);
    if (r < 0) fail_errno(type, why, "cold path: re-feeding stdin", (int)-r);
    sys_close(mfd);
  }
  /*
   * boot.cjs runs the bundle with a V8 code cache; without it, Node runs the bundle directly.
   * --preserve-symlinks-main: Node would otherwise realpath the main script, one lstat per
   * path component, before running a line of it.
   */
  char boot[PATH_MAX + 64];
  struct rt_buf bt = {boot, sizeof boot, 0, 0};
  rt_put(&bt, self);
  rt_put(&bt, "/boot.cjs");
  const char *node = node_path();
  char *with_boot[] = {(char *)node, "--preserve-symlinks-main", boot, bundle, (char *)0};
  char *direct[] = {(char *)node, "--preserve-symlinks-main", bundle, (char *)0};
  char what[PATH_MAX + 256];
  struct rt_buf wb = {what, sizeof what, 0, 0};
  rt_put(&wb, "cold path: cannot run ");
  rt_put(&wb, node);
  rt_put(&wb, " ");
  rt_put(&wb, bundle);
  /* Without boot.cjs nothing would send the status: Node then simply replaces this process. */
  int have_boot = sys_access(boot, R_OK) == 0;
  if (have_boot) run_node_child(with_boot, type, why, what);
  drop_status_fd_var();
  fail_errno(type, why, what, -sys_execve(node, have_boot ? with_boot : direct, rt_environ));
}

int main(int argc, char **argv) {
  const char *type = argc > 0 && argv[0] ? argv[0] : "berth";
  const char *slash = rt_strrchr(type, '/');
  if (slash) type = slash + 1;
  if (*type == '\0' || rt_strlen(type) > 255) type = "berth";

  read_stdin();
  const char *path = socket_path();
  if (rt_strcmp(path, "off") == 0) exec_cold_path(type, "fast path off (BERTH_CNI_SOCKET=off)");

  int fd = connect_agent(path);
  if (fd < 0) exec_cold_path(type, "no berth agent answered");

  size_t head_len = 0;
  unsigned char *head = request_head(type, &head_len);
  if (!head) {
    sys_close(fd);
    exec_cold_path(type, "environment too large for the fast path");
  }
  struct iovec iov[2] = {{head, head_len}, {stdin_buf, stdin_len}};
  int send_err = send_all(fd, iov, stdin_len > 0 ? 2 : 1);
  int sent = send_err == 0;
  /*
   * An agent that refused us early (peer check, size) has answered and closed: show its
   * answer. A send timeout means an agent that is not reading: do not wait for it.
   */
  if (sent || send_err == EPIPE || send_err == ECONNRESET) relay_response(fd, type, sent);
  if (!sent) {
    sys_close(fd);
    exec_cold_path(type, "berth agent went away before taking the request");
  }
  fail(type, 11, "berth agent connection lost during the request; try again");
  return 1;
}
