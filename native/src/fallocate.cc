// fallocate(2): preallocates (or punches) a volume file's space.
#include <fcntl.h>

#include "common.h"

namespace berth {
namespace {

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

}  // namespace

void InitFallocate(Napi::Env env, Napi::Object exports) {
  exports.Set("fallocate", Napi::Function::New(env, Fallocate));
}

}  // namespace berth
