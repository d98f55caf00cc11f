// berth native addon: only what JavaScript cannot do (sockets, setns, syscalls, ioctls).
#include "common.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  berth::InitNetns(env, exports);
  berth::InitNetlink(env, exports);
  berth::InitStorage(env, exports);
  berth::InitUnixServe(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(berth_native, Init)
