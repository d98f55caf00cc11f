// Storage syscalls for the CSI driver: mount/umount2, statfs, loop-device ioctls,
// fallocate and FICLONE.
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/quota.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "common.h"

#ifndef SYS_fsopen
#define SYS_open_tree 428
#define SYS_move_mount 429
#define SYS_fsopen 430
#define SYS_fsconfig 431
#define SYS_fsmount 432
#endif

#ifndef SYS_quotactl_fd
#define SYS_quotactl_fd 443
#endif

#ifndef LOOP_CONFIGURE
#define LOOP_CONFIGURE 0x4C0A
struct loop_config {
  __u32 fd;
  __u32 block_size;
  struct loop_info64 info;
  __u64 __reserved[8];
};
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

Napi::Value Statfs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string path = StrArg(info, 0, "path");
  struct statfs s = {};
  if (statfs(path.c_str(), &s) != 0) ThrowSys(env, errno, "statfs", path);
  Napi::Object o = Napi::Object::New(env);
  o.Set("type", Napi::Number::New(env, static_cast<double>(static_cast<unsigned long>(s.f_type))));
  o.Set("bsize", Napi::Number::New(env, static_cast<double>(s.f_bsize)));
  o.Set("frsize", Napi::Number::New(env, static_cast<double>(s.f_frsize)));
  o.Set("blocks", Napi::Number::New(env, static_cast<double>(s.f_blocks)));
  o.Set("bfree", Napi::Number::New(env, static_cast<double>(s.f_bfree)));
  o.Set("bavail", Napi::Number::New(env, static_cast<double>(s.f_bavail)));
  o.Set("files", Napi::Number::New(env, static_cast<double>(s.f_files)));
  o.Set("ffree", Napi::Number::New(env, static_cast<double>(s.f_ffree)));
  o.Set("namelen", Napi::Number::New(env, static_cast<double>(s.f_namelen)));
  o.Set("flags", Napi::Number::New(env, static_cast<double>(s.f_flags)));
  return o;
}

// Opens /dev/loopN, creating the node when the host's /dev lacks it (as in containers).
int OpenLoop(int n, int flags) {
  std::string dev = "/dev/loop" + std::to_string(n);
  int fd = open(dev.c_str(), flags | O_CLOEXEC);
  if (fd < 0 && errno == ENOENT) {
    mknod(dev.c_str(), S_IFBLK | 0660, makedev(7, n));
    fd = open(dev.c_str(), flags | O_CLOEXEC);
  }
  return fd;
}

// loopAttach(file, {directIo, readOnly}): attaches file to a free loop device with
// LOOP_CONFIGURE (no autoclear, partscan off) and returns the device number.
// Retries when another process grabs the same free device first.
Napi::Value LoopAttach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  std::string file = StrArg(info, 0, "file");
  bool directIo = false, readOnly = false;
  if (info.Length() > 1 && info[1].IsObject()) {
    auto o = info[1].As<Napi::Object>();
    directIo = o.Get("directIo").ToBoolean().Value();
    readOnly = o.Get("readOnly").ToBoolean().Value();
  }
  int ffd = open(file.c_str(), (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | (directIo ? O_DIRECT : 0));
  if (ffd < 0 && directIo && errno == EINVAL) {
    // Filesystem without O_DIRECT: attach buffered instead.
    directIo = false;
    ffd = open(file.c_str(), (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC);
  }
  if (ffd < 0) ThrowSys(env, errno, "open", file);
  int ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
  if (ctl < 0) {
    int err = errno;
    close(ffd);
    ThrowSys(env, err, "open", "/dev/loop-control");
  }
  int lastErr = 0;
  for (int attempt = 0; attempt < 64; attempt++) {
    int n = ioctl(ctl, LOOP_CTL_GET_FREE);
    if (n < 0) {
      lastErr = errno;
      break;
    }
    int lfd = OpenLoop(n, readOnly ? O_RDONLY : O_RDWR);
    if (lfd < 0) {
      lastErr = errno;
      break;
    }
    struct loop_config cfg = {};
    cfg.fd = static_cast<__u32>(ffd);
    cfg.info.lo_flags = (readOnly ? LO_FLAGS_READ_ONLY : 0) | (directIo ? LO_FLAGS_DIRECT_IO : 0);
    strncpy(reinterpret_cast<char*>(cfg.info.lo_file_name), file.c_str(), LO_NAME_SIZE - 1);
    int rc = ioctl(lfd, LOOP_CONFIGURE, &cfg);
    if (rc != 0 && errno == EINVAL && directIo) {
      // Backing filesystem refuses direct I/O with this block size: fall back to buffered.
      cfg.info.lo_flags &= ~LO_FLAGS_DIRECT_IO;
      rc = ioctl(lfd, LOOP_CONFIGURE, &cfg);
    }
    int err = errno;
    close(lfd);
    if (rc == 0) {
      close(ctl);
      close(ffd);
      return Napi::Number::New(env, n);
    }
    lastErr = err;
    if (err != EBUSY) break;
  }
  close(ctl);
  close(ffd);
  ThrowSys(env, lastErr, "LOOP_CONFIGURE", file);
  return env.Undefined();
}

Napi::Value LoopDetach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = IntArg(info, 0, "loop number");
  int fd = OpenLoop(n, O_RDONLY);
  if (fd < 0) ThrowSys(env, errno, "open", "/dev/loop" + std::to_string(n));
  int rc = ioctl(fd, LOOP_CLR_FD, 0);
  int err = errno;
  close(fd);
  if (rc != 0) ThrowSys(env, err, "LOOP_CLR_FD", "/dev/loop" + std::to_string(n));
  return env.Undefined();
}

Napi::Value LoopSetCapacity(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = IntArg(info, 0, "loop number");
  int fd = OpenLoop(n, O_RDONLY);
  if (fd < 0) ThrowSys(env, errno, "open", "/dev/loop" + std::to_string(n));
  int rc = ioctl(fd, LOOP_SET_CAPACITY, 0);
  int err = errno;
  close(fd);
  if (rc != 0) ThrowSys(env, err, "LOOP_SET_CAPACITY", "/dev/loop" + std::to_string(n));
  return env.Undefined();
}

// loopStatus(n): LOOP_GET_STATUS64, or null when the device has no backing file (ENXIO).
Napi::Value LoopStatus(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int n = IntArg(info, 0, "loop number");
  int fd = OpenLoop(n, O_RDONLY);
  if (fd < 0) {
    if (errno == ENOENT || errno == ENXIO) return env.Null();
    ThrowSys(env, errno, "open", "/dev/loop" + std::to_string(n));
  }
  struct loop_info64 li = {};
  int rc = ioctl(fd, LOOP_GET_STATUS64, &li);
  int err = errno;
  unsigned long long size = 0;
  if (rc == 0) ioctl(fd, BLKGETSIZE64, &size);
  close(fd);
  if (rc != 0) {
    if (err == ENXIO) return env.Null();
    ThrowSys(env, err, "LOOP_GET_STATUS64", "/dev/loop" + std::to_string(n));
  }
  Napi::Object o = Napi::Object::New(env);
  o.Set("number", Napi::Number::New(env, li.lo_number));
  o.Set("backingDevice", Napi::Number::New(env, static_cast<double>(li.lo_device)));
  o.Set("backingInode", Napi::Number::New(env, static_cast<double>(li.lo_inode)));
  o.Set("offset", Napi::Number::New(env, static_cast<double>(li.lo_offset)));
  o.Set("sizeLimit", Napi::Number::New(env, static_cast<double>(li.lo_sizelimit)));
  o.Set("flags", Napi::Number::New(env, li.lo_flags));
  o.Set("directIo", Napi::Boolean::New(env, (li.lo_flags & LO_FLAGS_DIRECT_IO) != 0));
  o.Set("readOnly", Napi::Boolean::New(env, (li.lo_flags & LO_FLAGS_READ_ONLY) != 0));
  o.Set("autoClear", Napi::Boolean::New(env, (li.lo_flags & LO_FLAGS_AUTOCLEAR) != 0));
  o.Set("fileName", Napi::String::New(env, reinterpret_cast<const char*>(li.lo_file_name)));
  o.Set("sizeBytes", Napi::Number::New(env, static_cast<double>(size)));
  return o;
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

// fallocate(fd, mode, offset, length).
Napi::Value Fallocate(const Napi::CallbackInfo& info) {
  int fd = IntArg(info, 0, "fd");
  int mode = IntArg(info, 1, "mode");
  double off = info[2].As<Napi::Number>().DoubleValue();
  double len = info[3].As<Napi::Number>().DoubleValue();
  if (fallocate(fd, mode, static_cast<off_t>(off), static_cast<off_t>(len)) != 0) {
    ThrowSys(info.Env(), errno, "fallocate");
  }
  return info.Env().Undefined();
}

// ficlone(destFd, srcFd): reflink the whole file. EOPNOTSUPP/EXDEV/EINVAL mean "not supported here".
Napi::Value Ficlone(const Napi::CallbackInfo& info) {
  int dst = IntArg(info, 0, "destination fd");
  int src = IntArg(info, 1, "source fd");
  if (ioctl(dst, FICLONE, src) != 0) ThrowSys(info.Env(), errno, "FICLONE");
  return info.Env().Undefined();
}

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

// Copies the data extents of srcFd into dstFd at the same offsets, leaving holes as holes.
// dstFd must be empty (or already truncated); it is sized to the source at the end.
// Returns 0 or an errno, with *copied = bytes of data copied.
int CopyDataExtents(int src, int dst, off_t* size, off_t* copied) {
  struct stat st = {};
  if (fstat(src, &st) != 0) return errno;
  *size = st.st_size;
  *copied = 0;
  if (ftruncate(dst, st.st_size) != 0) return errno;
  bool useCfr = true;
  std::vector<char> buf;
  off_t pos = 0;
  while (pos < st.st_size) {
    off_t data = lseek(src, pos, SEEK_DATA);
    if (data < 0) {
      if (errno == ENXIO) break;  // only a hole remains
      if (errno != EINVAL && errno != EOPNOTSUPP) return errno;
      data = pos;  // filesystem without SEEK_DATA: everything is data
    }
    off_t hole = lseek(src, data, SEEK_HOLE);
    if (hole < 0) hole = st.st_size;
    if (hole > st.st_size) hole = st.st_size;
    off_t in = data, out = data;
    while (in < hole) {
      ssize_t n = -1;
      if (useCfr) {
        loff_t li = in, lo = out;
        n = copy_file_range(src, &li, dst, &lo, static_cast<size_t>(hole - in), 0);
        if (n < 0 && (errno == EXDEV || errno == ENOSYS || errno == EOPNOTSUPP || errno == EINVAL)) {
          useCfr = false;  // fall back to read/write for this pair of files
          continue;
        }
      } else {
        if (buf.empty()) buf.resize(1 << 20);
        size_t want = static_cast<size_t>(std::min<off_t>(hole - in, static_cast<off_t>(buf.size())));
        n = pread(src, buf.data(), want, in);
        if (n > 0) {
          ssize_t done = 0;
          while (done < n) {
            ssize_t w = pwrite(dst, buf.data() + done, n - done, out + done);
            if (w < 0) {
              if (errno == EINTR) continue;
              return errno;
            }
            done += w;
          }
        }
      }
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      if (n == 0) break;  // source shrank under us
      in += n;
      out += n;
      *copied += n;
    }
    pos = hole;
  }
  return 0;
}

class CopyExtentsWorker : public Napi::AsyncWorker {
 public:
  CopyExtentsWorker(Napi::Env env, int src, int dst)
      : Napi::AsyncWorker(env), src_(src), dst_(dst), deferred_(Napi::Promise::Deferred::New(env)) {}
  Napi::Promise Promise() { return deferred_.Promise(); }
  void Execute() override { err_ = CopyDataExtents(src_, dst_, &size_, &copied_); }
  void OnOK() override {
    Napi::Env env = Env();
    if (err_ != 0) {
      deferred_.Reject(SysError(env, err_, "copy_file_range").Value());
      return;
    }
    Napi::Object o = Napi::Object::New(env);
    o.Set("size", Napi::Number::New(env, static_cast<double>(size_)));
    o.Set("copiedBytes", Napi::Number::New(env, static_cast<double>(copied_)));
    deferred_.Resolve(o);
  }

 private:
  int src_, dst_;
  int err_ = 0;
  off_t size_ = 0, copied_ = 0;
  Napi::Promise::Deferred deferred_;
};

// copyDataExtents(srcFd, dstFd): Promise<{size, copiedBytes}>, on the thread pool because
// volume images run to gigabytes. Both fds must stay open until it settles.
Napi::Value CopyDataExtentsAsync(const Napi::CallbackInfo& info) {
  int src = IntArg(info, 0, "source fd");
  int dst = IntArg(info, 1, "destination fd");
  auto* w = new CopyExtentsWorker(info.Env(), src, dst);
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

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

void InitStorage(Napi::Env env, Napi::Object exports) {
  exports.Set("mount", Napi::Function::New(env, Mount));
  exports.Set("umount2", Napi::Function::New(env, Umount2));
  exports.Set("mountFs", Napi::Function::New(env, MountFs));
  exports.Set("statfs", Napi::Function::New(env, Statfs));
  exports.Set("loopAttach", Napi::Function::New(env, LoopAttach));
  exports.Set("loopDetach", Napi::Function::New(env, LoopDetach));
  exports.Set("loopSetCapacity", Napi::Function::New(env, LoopSetCapacity));
  exports.Set("loopStatus", Napi::Function::New(env, LoopStatus));
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
  exports.Set("ficlone", Napi::Function::New(env, Ficlone));
  exports.Set("fsFreeze", Napi::Function::New(env, FsFreeze));
  exports.Set("copyDataExtents", Napi::Function::New(env, CopyDataExtentsAsync));
  exports.Set("quotaGetInfo", Napi::Function::New(env, QuotaGetInfo));
}

}  // namespace berth
