// berth native addon: what JavaScript cannot do (sockets, setns, syscalls, ioctls), and SHA-256,
// which a cold plugin process cannot afford to run in V8's interpreter (digest.cc).
#include "common.h"

namespace {

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  berth::InitNetns(env, exports);
  berth::InitNetlink(env, exports);
  berth::InitMount(env, exports);
  berth::InitStatfs(env, exports);
  berth::InitLoop(env, exports);
  berth::InitFallocate(env, exports);
  berth::InitClone(env, exports);
  berth::InitFreeze(env, exports);
  berth::InitQuota(env, exports);
  berth::InitUnixServe(env, exports);
  berth::InitDigest(env, exports);
  return exports;
}

}  // namespace

NODE_API_MODULE(berth_native, Init)
