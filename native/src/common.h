// Shared helpers for the berth native addon: errno-carrying errors and argument access.
#pragma once

#include <napi.h>

#include <cerrno>
#include <cstring>
#include <string>

namespace berth {

// Name of an errno value ("EEXIST"), falling back to "E<number>".
inline std::string ErrnoName(int err) {
  const char* name = strerrorname_np(err);
  if (name != nullptr) return name;
  return "E" + std::to_string(err);
}

// Builds an Error with code (errno name), errno, syscall and optional path, like Node's fs errors.
inline Napi::Error SysError(Napi::Env env, int err, const char* syscall, const std::string& path = "") {
  std::string msg = std::string(syscall) + ": " + strerror(err);
  if (!path.empty()) msg += " (" + path + ")";
  Napi::Error e = Napi::Error::New(env, msg);
  e.Set("code", Napi::String::New(env, ErrnoName(err)));
  e.Set("errno", Napi::Number::New(env, err));
  e.Set("syscall", Napi::String::New(env, syscall));
  if (!path.empty()) e.Set("path", Napi::String::New(env, path));
  return e;
}

inline void ThrowSys(Napi::Env env, int err, const char* syscall, const std::string& path = "") {
  throw SysError(env, err, syscall, path);
}

inline int IntArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsNumber()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a number");
  }
  return info[i].As<Napi::Number>().Int32Value();
}

inline std::string StrArg(const Napi::CallbackInfo& info, size_t i, const char* what) {
  if (info.Length() <= i || !info[i].IsString()) {
    throw Napi::TypeError::New(info.Env(), std::string(what) + " must be a string");
  }
  return info[i].As<Napi::String>().Utf8Value();
}

// Optional string: undefined/null -> empty and has=false.
inline bool OptStrArg(const Napi::CallbackInfo& info, size_t i, std::string* out) {
  if (info.Length() <= i || info[i].IsUndefined() || info[i].IsNull()) return false;
  if (!info[i].IsString()) throw Napi::TypeError::New(info.Env(), "expected a string");
  *out = info[i].As<Napi::String>().Utf8Value();
  return true;
}

void InitNetns(Napi::Env env, Napi::Object exports);
void InitNetlink(Napi::Env env, Napi::Object exports);
void InitMount(Napi::Env env, Napi::Object exports);
void InitStatfs(Napi::Env env, Napi::Object exports);
void InitLoop(Napi::Env env, Napi::Object exports);
void InitFallocate(Napi::Env env, Napi::Object exports);
void InitClone(Napi::Env env, Napi::Object exports);
void InitFreeze(Napi::Env env, Napi::Object exports);
void InitQuota(Napi::Env env, Napi::Object exports);
void InitUnixServe(Napi::Env env, Napi::Object exports);
void InitDigest(Napi::Env env, Napi::Object exports);

}  // namespace berth
