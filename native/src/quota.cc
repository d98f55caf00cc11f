// Disk quotas: reads a filesystem's quota state through quotactl_fd.
#include <fcntl.h>
#include <linux/quota.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "common.h"

#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif

namespace berth {
namespace {

// quotaGetInfo(path, type): Q_GETINFO through quotactl_fd on the filesystem holding path
// (type 0 user, 1 group, 2 project). null when that quota type is not enabled (ESRCH).
Napi::Value QuotaGetInfo(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StrArg(info, 0, "path");
  int type = IntArg(info, 1, "quota type");
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) ThrowSys(env, errno, "open", path);
  struct if_dqinfo dq = {};
  long rc = syscall(SYS_quotactl_fd, fd, QCMD(Q_GETINFO, type), 0, &dq);
  int err = errno;
  close(fd);
  if (rc != 0) {
    if (err == ESRCH) return env.Null();
    ThrowSys(env, err, "quotactl_fd", path);
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("blockGrace", Napi::Number::New(env, static_cast<double>(dq.dqi_bgrace)));
  o.Set("inodeGrace", Napi::Number::New(env, static_cast<double>(dq.dqi_igrace)));
  o.Set("flags", Napi::Number::New(env, dq.dqi_flags));
  return o;
}

}  // namespace

void InitQuota(Napi::Env env, Napi::Object exports) {
  exports.Set("quotaGetInfo", Napi::Function::New(env, QuotaGetInfo));
}

}  // namespace berth
