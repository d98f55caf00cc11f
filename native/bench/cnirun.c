// berth_cnirun: runs CNI plugin executables the way a container runtime does (fork, exec with
// the CNI_* environment, config on stdin, wait) and times each one from fork to reaped exit
// with CLOCK_MONOTONIC. The benchmark uses it so that what it measures is the plugin, not the
// ~2-5 ms that Node's own child_process.spawn adds to every call on a small VM (for the
// reference and for berth alike, which squeezes every ratio towards 1).
//
//   berth_cnirun SPEC OUTDIR PARALLEL
//
// SPEC holds jobs back to back, each as NUL-terminated fields:
//   exe \0 envcount \0 (NAME=value \0){envcount} stdinlen \0 <stdinlen bytes>
// Job i's stdin is served from OUTDIR/i.in (written before any timing starts); its stdout and
// stderr go to OUTDIR/i.out and OUTDIR/i.err. At most PARALLEL jobs run at once. Printed on
// stdout, one line per job in job order: "i exit CODE START_NS END_NS" or "i signal SIG ...",
// then "wall NS" (first fork to last reap).
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct job {
  const char *exe;
  char **env;
  const char *in;
  size_t inlen;
  int fds[3];
  pid_t pid;
  int status;
  long long start, end;
};

static void die(const char *what) {
  fprintf(stderr, "berth_cnirun: %s: %s\n", what, strerror(errno));
  exit(2);
}

static void bad_spec(const char *why) {
  fprintf(stderr, "berth_cnirun: bad spec: %s\n", why);
  exit(2);
}

static long long now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (long long)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static char *read_all(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) die(path);
  struct stat st;
  if (fstat(fd, &st) < 0) die(path);
  char *buf = malloc((size_t)st.st_size + 1);
  if (!buf) die("malloc");
  size_t have = 0;
  while (have < (size_t)st.st_size) {
    ssize_t n = read(fd, buf + have, (size_t)st.st_size - have);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die(path);
    have += (size_t)n;
  }
  close(fd);
  buf[have] = 0;
  *len = have;
  return buf;
}

/** The next NUL-terminated field at *p (advanced past it). */
static const char *field(char **p, const char *end) {
  char *s = *p;
  char *nul = memchr(s, 0, (size_t)(end - s));
  if (!nul) bad_spec("unterminated field");
  *p = nul + 1;
  return s;
}

static size_t number(char **p, const char *end) {
  const char *s = field(p, end);
  char *e;
  errno = 0;
  unsigned long long v = strtoull(s, &e, 10);
  if (errno || *s == 0 || *e != 0) bad_spec("not a number");
  return (size_t)v;
}

static int open_out(const char *dir, size_t i, const char *ext, int flags) {
  char path[4096];
  snprintf(path, sizeof path, "%s/%zu.%s", dir, i, ext);
  int fd = open(path, flags | O_CLOEXEC, 0600);
  if (fd < 0) die(path);
  return fd;
}

static void start(struct job *j) {
  j->start = now_ns();
  pid_t pid = fork();
  if (pid < 0) die("fork");
  if (pid == 0) {
    for (int k = 0; k < 3; k++) {
      if (dup2(j->fds[k], k) < 0) _exit(126);
    }
    char *argv[] = {(char *)j->exe, NULL};
    execve(j->exe, argv, j->env);
    _exit(127);
  }
  j->pid = pid;
}

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: berth_cnirun SPEC OUTDIR PARALLEL\n");
    return 2;
  }
  const char *outdir = argv[2];
  long parallel = strtol(argv[3], NULL, 10);
  if (parallel < 1) parallel = 1;

  size_t len;
  char *spec = read_all(argv[1], &len);
  char *p = spec, *end = spec + len;
  size_t cap = 16, n = 0;
  struct job *jobs = calloc(cap, sizeof *jobs);
  if (!jobs) die("calloc");
  while (p < end) {
    if (n == cap) {
      cap *= 2;
      jobs = realloc(jobs, cap * sizeof *jobs);
      if (!jobs) die("realloc");
    }
    struct job *j = &jobs[n];
    memset(j, 0, sizeof *j);
    j->exe = field(&p, end);
    size_t envc = number(&p, end);
    j->env = calloc(envc + 1, sizeof(char *));
    if (!j->env) die("calloc");
    for (size_t k = 0; k < envc; k++) j->env[k] = (char *)field(&p, end);
    j->inlen = number(&p, end);
    if ((size_t)(end - p) < j->inlen) bad_spec("stdin runs past the end");
    j->in = p;
    p += j->inlen;
    n++;
  }

  // Every file is opened before the first fork: the timed window holds only the plugin.
  for (size_t i = 0; i < n; i++) {
    int w = open_out(outdir, i, "in", O_WRONLY | O_CREAT | O_TRUNC);
    size_t off = 0;
    while (off < jobs[i].inlen) {
      ssize_t k = write(w, jobs[i].in + off, jobs[i].inlen - off);
      if (k < 0 && errno == EINTR) continue;
      if (k <= 0) die("write stdin file");
      off += (size_t)k;
    }
    close(w);
    jobs[i].fds[0] = open_out(outdir, i, "in", O_RDONLY);
    jobs[i].fds[1] = open_out(outdir, i, "out", O_WRONLY | O_CREAT | O_TRUNC);
    jobs[i].fds[2] = open_out(outdir, i, "err", O_WRONLY | O_CREAT | O_TRUNC);
  }

  size_t next = 0, done = 0;
  long running = 0;
  long long first = now_ns(), last = first;
  while (done < n) {
    while (next < n && running < parallel) {
      start(&jobs[next++]);
      running++;
    }
    int status;
    pid_t pid = waitpid(-1, &status, 0);
    long long t = now_ns();
    if (pid < 0) {
      if (errno == EINTR) continue;
      die("waitpid");
    }
    for (size_t i = 0; i < n; i++) {
      if (jobs[i].pid == pid && jobs[i].end == 0) {
        jobs[i].end = t;
        jobs[i].status = status;
        for (int k = 0; k < 3; k++) close(jobs[i].fds[k]);
        running--;
        done++;
        last = t;
        break;
      }
    }
  }
  for (size_t i = 0; i < n; i++) {
    const struct job *j = &jobs[i];
    if (WIFSIGNALED(j->status)) printf("%zu signal %d %lld %lld\n", i, WTERMSIG(j->status), j->start - first, j->end - first);
    else printf("%zu exit %d %lld %lld\n", i, WEXITSTATUS(j->status), j->start - first, j->end - first);
  }
  printf("wall %lld\n", last - first);
  return 0;
}
