// Filesystem freeze and thaw (FIFREEZE/FITHAW) for consistent volume snapshots.
#include <linux/fs.h>
#include <sys/ioctl.h>

#include "common.h"

namespace berth {
namespace {

// FIFREEZE/FITHAW on a filesystem (fd of any file or directory on it, usually its mount
// point). Freezing syncs the filesystem and then blocks new writes until the thaw, so it runs
// on the thread pool; a thaw is quick but goes the same way to keep the order of the two.
class FreezeWorker : public Napi::AsyncWorker {
 public:
  FreezeWorker(Napi::Env env, int fd, bool freeze)
      : Napi::AsyncWorker(env), fd_(fd), freeze_(freeze), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override {
    int rc;
    do {
      rc = ioctl(fd_, freeze_ ? FIFREEZE : FITHAW, 0);
    } while (rc != 0 && errno == EINTR);
    err_ = rc == 0 ? 0 : errno;
  }
  void OnOK() override {
    if (err_ != 0) {
      deferred_.Reject(SysError(Env(), err_, freeze_ ? "FIFREEZE" : "FITHAW").Value());
      return;
    }
    deferred_.Resolve(Env().Undefined());
  }

 private:
  int fd_;
  bool freeze_;
  int err_ = 0;
  Napi::Promise::Deferred deferred_;
};

// fsFreeze(fd, freeze): Promise<void>; freeze = false thaws. The fd must stay open until it
// settles. EBUSY: already frozen (freeze) or not frozen (thaw); EOPNOTSUPP: no freeze support.
Napi::Value FsFreeze(const Napi::CallbackInfo& info) {
  int fd = IntArg(info, 0, "fd");
  if (info.Length() < 2 || !info[1].IsBoolean()) throw Napi::TypeError::New(info.Env(), "freeze must be a boolean");
  auto* w = new FreezeWorker(info.Env(), fd, info[1].As<Napi::Boolean>().Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

}  // namespace

void InitFreeze(Napi::Env env, Napi::Object exports) {
  exports.Set("fsFreeze", Napi::Function::New(env, FsFreeze));
}

}  // namespace berth
