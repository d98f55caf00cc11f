// Loop devices for the CSI driver's block volumes: attach a file (LOOP_CONFIGURE), detach,
// pick up a resized backing file, and read a device's status.
#include <fcntl.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include "common.h"

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

// An argument-less ioctl on /dev/loop<n> (the first argument), thrown as `name` on failure.
Napi::Value LoopIoctl(const Napi::CallbackInfo& info, unsigned long request, const char* name) {
  Napi::Env env = info.Env();
  int n = IntArg(info, 0, "loop number");
  int fd = OpenLoop(n, O_RDONLY);
  if (fd < 0) ThrowSys(env, errno, "open", "/dev/loop" + std::to_string(n));
  int rc = ioctl(fd, request, 0);
  int err = errno;
  close(fd);
  if (rc != 0) ThrowSys(env, err, name, "/dev/loop" + std::to_string(n));
  return env.Undefined();
}

Napi::Value LoopDetach(const Napi::CallbackInfo& info) { return LoopIoctl(info, LOOP_CLR_FD, "LOOP_CLR_FD"); }

Napi::Value LoopSetCapacity(const Napi::CallbackInfo& info) {
  return LoopIoctl(info, LOOP_SET_CAPACITY, "LOOP_SET_CAPACITY");
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

}  // namespace

void InitLoop(Napi::Env env, Napi::Object exports) {
  exports.Set("loopAttach", Napi::Function::New(env, LoopAttach));
  exports.Set("loopDetach", Napi::Function::New(env, LoopDetach));
  exports.Set("loopSetCapacity", Napi::Function::New(env, LoopSetCapacity));
  exports.Set("loopStatus", Napi::Function::New(env, LoopStatus));
}

}  // namespace berth
