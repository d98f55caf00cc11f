// Network namespaces: open by path, create/delete named ones, setns on the calling thread.
#include <fcntl.h>
#include <linux/nsfs.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"

namespace berth {
namespace {

// Opens a namespace file and checks that it really is a network namespace.
Napi::Value NetnsOpen(const Napi::CallbackInfo& info) {
  std::string path = StrArg(info, 0, "path");
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowSys(info.Env(), errno, "open", path);
  int type = ioctl(fd, NS_GET_NSTYPE);
  if (type < 0) {
    int err = errno;
    close(fd);
    // ENOTTY: the file is not a namespace at all.
    ThrowSys(info.Env(), err == ENOTTY ? EINVAL : err, "NS_GET_NSTYPE", path);
  }
  if (type != CLONE_NEWNET) {
    close(fd);
    ThrowSys(info.Env(), EINVAL, "NS_GET_NSTYPE", path);
  }
  return Napi::Number::New(info.Env(), fd);
}

// fd of the calling thread's current network namespace.
Napi::Value NetnsCurrent(const Napi::CallbackInfo& info) {
  int fd = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowSys(info.Env(), errno, "open", "/proc/thread-self/ns/net");
  return Napi::Number::New(info.Env(), fd);
}

Napi::Value Setns(const Napi::CallbackInfo& info) {
  int fd = IntArg(info, 0, "fd");
  if (setns(fd, CLONE_NEWNET) != 0) ThrowSys(info.Env(), errno, "setns");
  return info.Env().Undefined();
}

// Makes the netns directory a shared mount point, as iproute2 does, so that
// namespace bind mounts propagate to other mount namespaces.
void MakeDirShared(const std::string& dir) {
  if (mount("", dir.c_str(), "none", MS_SHARED | MS_REC, nullptr) == 0) return;
  if (errno != EINVAL) return;
  if (mount(dir.c_str(), dir.c_str(), "none", MS_BIND | MS_REC, nullptr) != 0) return;
  mount("", dir.c_str(), "none", MS_SHARED | MS_REC, nullptr);
}

// netnsCreate(dir, name): a fresh network namespace bind-mounted at dir/name.
// The calling thread returns to its original namespace before this returns.
Napi::Value NetnsCreate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string dir = StrArg(info, 0, "dir");
  std::string name = StrArg(info, 1, "name");
  std::string path = dir + "/" + name;
  if (mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) ThrowSys(env, errno, "mkdir", dir);
  MakeDirShared(dir);
  int f = open(path.c_str(), O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0444);
  if (f < 0) ThrowSys(env, errno, "open", path);
  close(f);
  int self = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC);
  if (self < 0) {
    int err = errno;
    unlink(path.c_str());
    ThrowSys(env, err, "open", "/proc/thread-self/ns/net");
  }
  if (unshare(CLONE_NEWNET) != 0) {
    int err = errno;
    close(self);
    unlink(path.c_str());
    ThrowSys(env, err, "unshare", path);
  }
  int mountErr = 0;
  if (mount("/proc/thread-self/ns/net", path.c_str(), "none", MS_BIND, nullptr) != 0) mountErr = errno;
  int backErr = 0;
  if (setns(self, CLONE_NEWNET) != 0) backErr = errno;
  close(self);
  if (backErr != 0) {
    // Cannot happen short of a kernel bug; staying in the wrong namespace would be worse than dying.
    fprintf(stderr, "berth: setns back to the original netns failed: %s\n", strerror(backErr));
    abort();
  }
  if (mountErr != 0) {
    unlink(path.c_str());
    ThrowSys(env, mountErr, "mount", path);
  }
  return Napi::String::New(env, path);
}

// netnsDelete(path): detach the bind mount and remove the file. ENOENT is reported.
Napi::Value NetnsDelete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StrArg(info, 0, "path");
  if (umount2(path.c_str(), MNT_DETACH) != 0 && errno != EINVAL) ThrowSys(env, errno, "umount2", path);
  if (unlink(path.c_str()) != 0) ThrowSys(env, errno, "unlink", path);
  return env.Undefined();
}

Napi::Value Close(const Napi::CallbackInfo& info) {
  int fd = IntArg(info, 0, "fd");
  if (close(fd) != 0 && errno != EINTR) ThrowSys(info.Env(), errno, "close");
  return info.Env().Undefined();
}

// exitNow(code): _exit(2) at once. For a one-shot plugin process whose output is written
// (synchronously) and whose 'exit' handlers have run: Node's own exit would tear the VM down,
// join its threads and run static destructors first, milliseconds of nothing for a CLI call.
Napi::Value ExitNow(const Napi::CallbackInfo& info) {
  int code = IntArg(info, 0, "code");
  _exit(code);
}

}  // namespace

void InitNetns(Napi::Env env, Napi::Object exports) {
  exports.Set("netnsOpen", Napi::Function::New(env, NetnsOpen));
  exports.Set("netnsCurrent", Napi::Function::New(env, NetnsCurrent));
  exports.Set("setns", Napi::Function::New(env, Setns));
  exports.Set("netnsCreate", Napi::Function::New(env, NetnsCreate));
  exports.Set("netnsDelete", Napi::Function::New(env, NetnsDelete));
  exports.Set("close", Napi::Function::New(env, Close));
  exports.Set("exitNow", Napi::Function::New(env, ExitNow));
}

}  // namespace berth
