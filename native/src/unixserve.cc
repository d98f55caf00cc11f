// The agent's CNI socket without Node's stream machinery on the common path: a launcher
// connects and writes its whole request at once, so by the time the listening socket is
// readable the request is usually complete in the connection's buffer. Accepting, reading the
// peer's credentials and the request, and writing the reply are a handful of system calls here;
// a net.Socket per connection (handle, two streams, their events) cost the agent's main thread
// more than the system calls themselves. What does not fit this path (a request still arriving,
// a reply larger than the socket buffer) goes back to a net.Socket made from the descriptor.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <vector>

#include "common.h"

namespace berth {
namespace {

// unixListen(path, backlog): a non-blocking, close-on-exec listening unix stream socket.
Napi::Value UnixListen(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StrArg(info, 0, "path");
  int backlog = IntArg(info, 1, "backlog");
  struct sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) ThrowSys(env, ENAMETOOLONG, "bind", path);
  memcpy(addr.sun_path, path.c_str(), path.size() + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) ThrowSys(env, errno, "socket");
  if (bind(fd, reinterpret_cast<struct sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, backlog) != 0) {
    int err = errno;
    close(fd);
    ThrowSys(env, err, "listen", path);
  }
  return Napi::Number::New(env, fd);
}

// unixAccept(listenFd, maxBytes): every connection waiting on listenFd (at most 256), each as
// { fd, pid, uid, data, eof }: its peer's credentials and whatever it has sent so far (read
// without blocking, at most maxBytes; eof when the peer has shut its side). The descriptors are
// non-blocking and close-on-exec; the caller owns them.
Napi::Value UnixAccept(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int lfd = IntArg(info, 0, "listenFd");
  int max = IntArg(info, 1, "maxBytes");
  Napi::Array out = Napi::Array::New(env);
  thread_local std::vector<uint8_t> buf;
  for (uint32_t n = 0; n < 256; n++) {
    int fd = accept4(lfd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
      if (errno == EINTR || errno == ECONNABORTED) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) break;
      // Out of descriptors (EMFILE) or memory: the connections taken so far go to the caller
      // (thrown away, their descriptors would be lost for good); the error comes next call.
      if (out.Length() > 0) break;
      ThrowSys(env, errno, "accept4");
    }
    struct ucred cred = {};
    socklen_t len = sizeof(cred);
    if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
      close(fd);
      continue;  // a peer that is already gone
    }
    buf.resize(static_cast<size_t>(max) + 1);
    size_t have = 0;
    bool eof = false;
    while (have < buf.size()) {
      ssize_t r = recv(fd, buf.data() + have, buf.size() - have, MSG_DONTWAIT);
      if (r > 0) {
        have += static_cast<size_t>(r);
      } else if (r == 0) {
        eof = true;
        break;
      } else if (errno != EINTR) {
        if (errno != EAGAIN && errno != EWOULDBLOCK) eof = true;  // reset: nothing more will come
        break;
      }
    }
    Napi::Object c = Napi::Object::New(env);
    c.Set("fd", Napi::Number::New(env, fd));
    c.Set("pid", Napi::Number::New(env, cred.pid));
    c.Set("uid", Napi::Number::New(env, cred.uid));
    c.Set("data", Napi::Buffer<uint8_t>::Copy(env, buf.data(), have));
    c.Set("eof", Napi::Boolean::New(env, eof));
    out.Set(n, c);
  }
  return out;
}

// unixSend(fd, buffer): writes without blocking and without SIGPIPE; returns the bytes written
// (fewer than asked when the socket buffer is full), or -errno when the peer is gone.
Napi::Value UnixSend(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "data must be a Buffer");
  auto data = info[1].As<Napi::Buffer<uint8_t>>();
  size_t off = 0;
  while (off < data.Length()) {
    ssize_t w = send(fd, data.Data() + off, data.Length() - off, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (w >= 0) {
      off += static_cast<size_t>(w);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
      break;
    } else if (errno != EINTR) {
      return Napi::Number::New(env, -errno);
    }
  }
  return Napi::Number::New(env, static_cast<double>(off));
}

// socketDescribe(fd): what a descriptor handed to us (socket activation) is, so the caller can
// refuse anything but a listening unix stream socket: { domain, type, listening, path } (path
// "" for an unnamed or abstract socket). Throws ENOTSOCK for a descriptor that is no socket,
// EBADF for one that is not open.
Napi::Value SocketDescribe(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  struct stat st;
  if (fstat(fd, &st) != 0) ThrowSys(env, errno, "fstat");
  if (!S_ISSOCK(st.st_mode)) ThrowSys(env, ENOTSOCK, "fstat");
  int domain = 0, type = 0, listening = 0;
  socklen_t len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0) ThrowSys(env, errno, "getsockopt");
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0) ThrowSys(env, errno, "getsockopt");
  len = sizeof(int);
  if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0) ThrowSys(env, errno, "getsockopt");
  std::string path;
  if (domain == AF_UNIX) {
    struct sockaddr_un addr = {};
    socklen_t alen = sizeof(addr);
    if (getsockname(fd, reinterpret_cast<struct sockaddr*>(&addr), &alen) != 0) ThrowSys(env, errno, "getsockname");
    size_t n = alen > offsetof(struct sockaddr_un, sun_path) ? alen - offsetof(struct sockaddr_un, sun_path) : 0;
    if (n > 0 && addr.sun_path[0] != '\0') path.assign(addr.sun_path, strnlen(addr.sun_path, n));
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("domain", Napi::String::New(env, domain == AF_UNIX ? "unix" : domain == AF_INET ? "inet" : domain == AF_INET6 ? "inet6" : std::to_string(domain)));
  out.Set("type", Napi::String::New(env, type == SOCK_STREAM ? "stream" : type == SOCK_DGRAM ? "dgram" : type == SOCK_SEQPACKET ? "seqpacket" : std::to_string(type)));
  out.Set("listening", Napi::Boolean::New(env, listening != 0));
  out.Set("path", Napi::String::New(env, path));
  return out;
}

// fdSetFlags(fd, cloexec, nonblock): sets close-on-exec and/or O_NONBLOCK on a descriptor we
// inherited (a service manager passes its sockets without either).
Napi::Value FdSetFlags(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = IntArg(info, 0, "fd");
  bool cloexec = info.Length() > 1 && info[1].ToBoolean().Value();
  bool nonblock = info.Length() > 2 && info[2].ToBoolean().Value();
  if (cloexec) {
    int f = fcntl(fd, F_GETFD);
    if (f < 0 || fcntl(fd, F_SETFD, f | FD_CLOEXEC) != 0) ThrowSys(env, errno, "fcntl");
  }
  if (nonblock) {
    int f = fcntl(fd, F_GETFL);
    if (f < 0 || fcntl(fd, F_SETFL, f | O_NONBLOCK) != 0) ThrowSys(env, errno, "fcntl");
  }
  return env.Undefined();
}

}  // namespace

void InitUnixServe(Napi::Env env, Napi::Object exports) {
  exports.Set("unixListen", Napi::Function::New(env, UnixListen));
  exports.Set("unixAccept", Napi::Function::New(env, UnixAccept));
  exports.Set("unixSend", Napi::Function::New(env, UnixSend));
  exports.Set("socketDescribe", Napi::Function::New(env, SocketDescribe));
  exports.Set("fdSetFlags", Napi::Function::New(env, FdSetFlags));
}

}  // namespace berth
