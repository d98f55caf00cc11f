// statfs(2): a filesystem's type, capacity and the mount's flags.
#include <sys/statfs.h>

#include "common.h"

namespace berth {
namespace {

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

}  // namespace

void InitStatfs(Napi::Env env, Napi::Object exports) {
  exports.Set("statfs", Napi::Function::New(env, Statfs));
}

}  // namespace berth
