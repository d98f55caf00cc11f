// Netlink sockets: open one in any network namespace, send a request and collect
// every reply datagram for its sequence number (sync or on the libuv thread pool),
// and watch multicast groups with uv_poll. Encoding/decoding lives in TypeScript.
#include <fcntl.h>
#include <linux/netlink.h>
#include <sched.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>
#include <uv.h>

#include <vector>

#include "common.h"

#ifndef NETLINK_EXT_ACK
#define NETLINK_EXT_ACK 11
#endif
#ifndef NETLINK_CAP_ACK
#define NETLINK_CAP_ACK 10
#endif
#ifndef SOL_NETLINK
#define SOL_NETLINK 270
#endif

namespace berth {
namespace {

constexpr size_t kRecvBuf = 256 * 1024;

int OpenSocket(int protocol, uint32_t groups, int* err) {
  int fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, protocol);
  if (fd < 0) {
    *err = errno;
    return -1;
  }
  int one = 1;
  setsockopt(fd, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof(one));
  setsockopt(fd, SOL_NETLINK, NETLINK_CAP_ACK, &one, sizeof(one));
  int rcv = 4 * 1024 * 1024;
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcv, sizeof(rcv)) != 0) {
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof(rcv));
  }
  // A kernel that never answers must not hang the caller forever.
  struct timeval tv = {30, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  struct sockaddr_nl sa = {};
  sa.nl_family = AF_NETLINK;
  sa.nl_groups = groups;
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&sa), sizeof(sa)) != 0) {
    *err = errno;
    close(fd);
    return -1;
  }
  return fd;
}

// nlOpen(protocol, groups, nsFd?): socket bound to the netns nsFd (or the current one).
Napi::Value NlOpen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int protocol = IntArg(info, 0, "protocol");
  uint32_t groups = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Uint32Value() : 0;
  int nsFd = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int32Value() : -1;
  int err = 0;
  if (nsFd < 0) {
    int fd = OpenSocket(protocol, groups, &err);
    if (fd < 0) ThrowSys(env, err, "socket");
    return Napi::Number::New(env, fd);
  }
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) ThrowSys(env, errno, "open", "/proc/thread-self/ns/net");
  if (setns(nsFd, CLONE_NEWNET) != 0) {
    err = errno;
    close(self);
    ThrowSys(env, err, "setns");
  }
  int fd = OpenSocket(protocol, groups, &err);
  if (setns(self, CLONE_NEWNET) != 0) {
    fprintf(stderr, "berth: setns back to the original netns failed: %s\n", strerror(errno));
    abort();
  }
  close(self);
  if (fd < 0) ThrowSys(env, err, "socket");
  return Napi::Number::New(env, fd);
}

// Sends a request and receives until its reply is complete: NLMSG_DONE or NLMSG_ERROR (errors
// and ACKs), or a message without NLM_F_MULTI. A request with NLM_F_ACK waits for its ACK even
// past such a message: with NLM_F_ECHO the kernel sends the new object first, and a later step
// of the same request can still fail.
// `req` may hold several messages with consecutive sequence numbers (a batch): the kernel
// handles them in order and answers each, so the exchange ends with the last one's reply and
// `out` holds the replies of all of them. Returns 0 or an errno.
int Transact(int fd, const uint8_t* req, size_t len, std::vector<uint8_t>* out) {
  if (len < sizeof(struct nlmsghdr)) return EINVAL;
  uint32_t first = reinterpret_cast<const struct nlmsghdr*>(req)->nlmsg_seq;
  const struct nlmsghdr* last_req = reinterpret_cast<const struct nlmsghdr*>(req);
  for (size_t off = 0; off + sizeof(struct nlmsghdr) <= len;) {
    auto* h = reinterpret_cast<const struct nlmsghdr*>(req + off);
    if (h->nlmsg_len < sizeof(struct nlmsghdr) || off + h->nlmsg_len > len) return EINVAL;
    last_req = h;
    off += NLMSG_ALIGN(h->nlmsg_len);
  }
  uint32_t last = last_req->nlmsg_seq;
  uint32_t span = last - first;  // consecutive numbers, wrapping included
  bool wants_ack = (last_req->nlmsg_flags & NLM_F_ACK) != 0;
  struct sockaddr_nl kernel = {};
  kernel.nl_family = AF_NETLINK;
  ssize_t sent;
  do {
    sent = sendto(fd, req, len, 0, reinterpret_cast<struct sockaddr*>(&kernel), sizeof(kernel));
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) return errno;
  thread_local std::vector<uint8_t> buf(kRecvBuf);
  for (;;) {
    ssize_t n = recv(fd, buf.data(), buf.size(), MSG_TRUNC);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (static_cast<size_t>(n) > buf.size()) return EMSGSIZE;
    bool done = false;
    size_t off = 0;
    while (off + sizeof(struct nlmsghdr) <= static_cast<size_t>(n)) {
      auto* h = reinterpret_cast<struct nlmsghdr*>(buf.data() + off);
      if (h->nlmsg_len < sizeof(struct nlmsghdr) || off + h->nlmsg_len > static_cast<size_t>(n)) break;
      if (h->nlmsg_seq - first <= span) {
        out->insert(out->end(), buf.data() + off, buf.data() + off + NLMSG_ALIGN(h->nlmsg_len));
        if (h->nlmsg_seq == last &&
            (h->nlmsg_type == NLMSG_DONE || h->nlmsg_type == NLMSG_ERROR ||
             (!wants_ack && !(h->nlmsg_flags & NLM_F_MULTI)))) {
          done = true;
        }
      }
      off += NLMSG_ALIGN(h->nlmsg_len);
    }
    if (done) return 0;
  }
}

Napi::Value NlTransact(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "request must be a Buffer");
  auto req = info[1].As<Napi::Buffer<uint8_t>>();
  std::vector<uint8_t> out;
  int err = Transact(fd, req.Data(), req.Length(), &out);
  if (err != 0) ThrowSys(env, err, "netlink");
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

class TransactWorker : public Napi::AsyncWorker {
 public:
  TransactWorker(Napi::Env env, int fd, const uint8_t* data, size_t len)
      : Napi::AsyncWorker(env), fd_(fd), req_(data, data + len), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = Transact(fd_, req_.data(), req_.size(), &out_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(SysError(env, err_, "netlink").Value());
      return;
    }
    deferred_.Resolve(Napi::Buffer<uint8_t>::Copy(env, out_.data(), out_.size()));
  }

 private:
  int fd_;
  std::vector<uint8_t> req_;
  std::vector<uint8_t> out_;
  int err_ = 0;
  Napi::Promise::Deferred deferred_;
};

// nlTransactAsync(fd, buf): the same exchange on the thread pool (for slow verbs like link delete).
// Callers must not run two exchanges on one socket at the same time.
Napi::Value NlTransactAsync(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "request must be a Buffer");
  auto req = info[1].As<Napi::Buffer<uint8_t>>();
  auto* w = new TransactWorker(env, fd, req.Data(), req.Length());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// nlRecv(fd): one datagram without blocking, or null when none is queued.
// ENOBUFS (events overran the socket buffer) is thrown so the caller can re-list.
Napi::Value NlRecv(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  thread_local std::vector<uint8_t> buf(kRecvBuf);
  for (;;) {
    ssize_t n = recv(fd, buf.data(), buf.size(), MSG_DONTWAIT | MSG_TRUNC);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return env.Null();
      ThrowSys(env, errno, "recv");
    }
    if (static_cast<size_t>(n) > buf.size()) ThrowSys(env, EMSGSIZE, "recv");
    return Napi::Buffer<uint8_t>::Copy(env, buf.data(), n);
  }
}

// FdWatcher: calls back on the event loop whenever fd is readable (uv_poll).
class FdWatcher : public Napi::ObjectWrap<FdWatcher> {
 public:
  static Napi::Function Define(Napi::Env env) {
    return DefineClass(env, "FdWatcher", {InstanceMethod("stop", &FdWatcher::Stop)});
  }

  FdWatcher(const Napi::CallbackInfo& info) : Napi::ObjectWrap<FdWatcher>(info) {
    Napi::Env env = info.Env();
    int fd = IntArg(info, 0, "fd");
    if (info.Length() < 2 || !info[1].IsFunction()) throw Napi::TypeError::New(env, "callback must be a function");
    callback_ = Napi::Persistent(info[1].As<Napi::Function>());
    env_ = env;
    uv_loop_t* loop = nullptr;
    napi_get_uv_event_loop(env, &loop);
    handle_ = new uv_poll_t;
    int rc = uv_poll_init(loop, handle_, fd);
    if (rc != 0) {
      delete handle_;
      handle_ = nullptr;
      ThrowSys(env, -rc, "uv_poll_init");
    }
    handle_->data = this;
    uv_poll_start(handle_, UV_READABLE, OnReadable);
    Ref();  // alive while polling
  }

  ~FdWatcher() override { Close(); }

 private:
  static void OnReadable(uv_poll_t* h, int status, int events) {
    auto* self = static_cast<FdWatcher*>(h->data);
    if (self == nullptr || self->callback_.IsEmpty()) return;
    Napi::HandleScope scope(self->env_);
    try {
      // MakeCallback drains the microtask queue afterwards, so promises settled here run.
      self->callback_.MakeCallback(Napi::Object::New(self->env_), {Napi::Number::New(self->env_, status)});
    } catch (const Napi::Error& e) {
      napi_fatal_exception(self->env_, e.Value());
    }
  }

  void Close() {
    if (handle_ == nullptr) return;
    uv_poll_stop(handle_);
    handle_->data = nullptr;
    uv_close(reinterpret_cast<uv_handle_t*>(handle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_poll_t*>(h); });
    handle_ = nullptr;
  }

  Napi::Value Stop(const Napi::CallbackInfo& info) {
    if (handle_ != nullptr) {
      Close();
      Unref();
    }
    return info.Env().Undefined();
  }

  Napi::FunctionReference callback_;
  Napi::Env env_ = nullptr;
  uv_poll_t* handle_ = nullptr;
};

}  // namespace

void InitNetlink(Napi::Env env, Napi::Object exports) {
  exports.Set("nlOpen", Napi::Function::New(env, NlOpen));
  exports.Set("nlTransact", Napi::Function::New(env, NlTransact));
  exports.Set("nlTransactAsync", Napi::Function::New(env, NlTransactAsync));
  exports.Set("nlRecv", Napi::Function::New(env, NlRecv));
  exports.Set("FdWatcher", FdWatcher::Define(env));
}

}  // namespace berth
