// Copies of a volume file: a reflink (FICLONE) where the filesystem shares extents, else a
// copy of only its data extents (holes stay holes) on the thread pool.
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <vector>

#include "common.h"

namespace berth {
namespace {

// ficlone(destFd, srcFd): reflink the whole file. EOPNOTSUPP/EXDEV/EINVAL mean "not supported here".
Napi::Value Ficlone(const Napi::CallbackInfo& info) {
  int dst = IntArg(info, 0, "destination fd");
  int src = IntArg(info, 1, "source fd");
  if (ioctl(dst, FICLONE, src) != 0) ThrowSys(info.Env(), errno, "FICLONE");
  return info.Env().Undefined();
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

}  // namespace

void InitClone(Napi::Env env, Napi::Object exports) {
  exports.Set("ficlone", Napi::Function::New(env, Ficlone));
  exports.Set("copyDataExtents", Napi::Function::New(env, CopyDataExtentsAsync));
}

}  // namespace berth
