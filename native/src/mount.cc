// Mounts for the CSI driver: mount(2)/umount2(2), and the new mount API
// (fsopen/fsconfig/fsmount/move_mount) whose failures carry the kernel's own explanation.
#include <fcntl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <vector>

#include "common.h"

#ifndef SYS_fsopen
#define SYS_open_tree 428
#define SYS_move_mount 429
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif

namespace berth {
namespace {

// mount(source, target, fstype, flags, data): null/undefined strings become NULL.
Napi::Value Mount(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string source, target, fstype, data;
  bool hasSource = OptStrArg(info, 0, &source);
  target = StrArg(info, 1, "target");
  bool hasType = OptStrArg(info, 2, &fstype);
  unsigned long flags = info.Length() > 3 && info[3].IsNumber() ? info[3].As<Napi::Number>().Int64Value() : 0;
  bool hasData = OptStrArg(info, 4, &data);
  if (mount(hasSource ? source.c_str() : nullptr, target.c_str(), hasType ? fstype.c_str() : nullptr, flags,
            hasData ? data.c_str() : nullptr) != 0) {
    ThrowSys(env, errno, "mount", target);
  }
  return env.Undefined();
}

Napi::Value Umount2(const Napi::CallbackInfo& info) {
  std::string target = StrArg(info, 0, "target");
  int flags = info.Length() > 1 && info[1].IsNumber() ? info[1].As<Napi::Number>().Int32Value() : 0;
  if (umount2(target.c_str(), flags) != 0) ThrowSys(info.Env(), errno, "umount2", target);
  return info.Env().Undefined();
}

// Reads the messages the kernel queued on an fs context ("e ext4: Unrecognized mount option...").
std::string FsContextLog(int fsfd) {
  std::string out;
  char buf[1024];
  for (int i = 0; i < 16; i++) {
    ssize_t n = read(fsfd, buf, sizeof(buf) - 1);
    if (n <= 0) break;
    std::string line(buf, static_cast<size_t>(n));
    // Drop the severity prefix ("e ", "w ", "i ").
    if (line.size() > 2 && line[1] == ' ') line = line.substr(2);
    if (!out.empty()) out += "; ";
    out += line;
  }
  return out;
}

// mountFs(source, target, fstype, attrs, params): mounts through the new mount API
// (fsopen/fsconfig/fsmount/move_mount) so a failure carries the kernel's own explanation.
// params are "key" or "key=value" superblock parameters; attrs are MOUNT_ATTR_* bits.
// Throws ENOSYS on kernels without fsopen so the caller can fall back to mount(2).
Napi::Value MountFs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string source = StrArg(info, 0, "source");
  std::string target = StrArg(info, 1, "target");
  std::string fstype = StrArg(info, 2, "fstype");
  unsigned int attrs = static_cast<unsigned int>(IntArg(info, 3, "attributes"));
  std::vector<std::string> params;
  if (info.Length() > 4 && info[4].IsArray()) {
    auto arr = info[4].As<Napi::Array>();
    for (uint32_t i = 0; i < arr.Length(); i++) params.push_back(arr.Get(i).As<Napi::String>().Utf8Value());
  }
  int fsfd = static_cast<int>(syscall(SYS_fsopen, fstype.c_str(), FSOPEN_CLOEXEC));
  if (fsfd < 0) ThrowSys(env, errno, "fsopen", fstype);
  auto fail = [&](const char* step, const std::string& what) {
    int err = errno;
    std::string log = FsContextLog(fsfd);
    close(fsfd);
    Napi::Error e = SysError(env, err, step, target);
    e.Set("step", Napi::String::New(env, what));
    if (!log.empty()) e.Set("detail", Napi::String::New(env, log));
    throw e;
  };
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING, "source", source.c_str(), 0) != 0) fail("fsconfig", "source " + source);
  for (const auto& p : params) {
    size_t eq = p.find('=');
    long rc = eq == std::string::npos
                  ? syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_FLAG, p.c_str(), nullptr, 0)
                  : syscall(SYS_fsconfig, fsfd, FSCONFIG_SET_STRING, p.substr(0, eq).c_str(), p.substr(eq + 1).c_str(), 0);
    if (rc != 0) fail("fsconfig", "option " + p);
  }
  if (syscall(SYS_fsconfig, fsfd, FSCONFIG_CMD_CREATE, nullptr, nullptr, 0) != 0) fail("fsconfig", "create superblock");
  int mfd = static_cast<int>(syscall(SYS_fsmount, fsfd, FSMOUNT_CLOEXEC, attrs));
  if (mfd < 0) fail("fsmount", "mount attributes");
  if (syscall(SYS_move_mount, mfd, "", AT_FDCWD, target.c_str(), MOVE_MOUNT_F_EMPTY_PATH) != 0) {
    int err = errno;
    close(mfd);
    errno = err;
    fail("move_mount", "attach at " + target);
  }
  close(mfd);
  close(fsfd);
  return env.Undefined();
}

}  // namespace

void InitMount(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("umount2", Napi::Function::New(env, Umount2));
  exports.Set("mountFs", Napi::Function::New(env, MountFs));
}

}  // namespace berth
