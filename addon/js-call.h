// What the ublk addon's JS-facing classes (Queue) do alike: read a numeric
// option, and call their handlers from the event loop.
#pragma once

#include <napi.h>

#include <cstdint>
#include <memory>
#include <string>

namespace ublk {

// options[name], a whole number in [min, max]; a TypeError or RangeError naming it otherwise.
inline uint32_t UintOption(Napi::Object opts, const char* name, uint32_t min, uint32_t max) {
  Napi::Value v = opts.Get(name);
  if (!v.IsNumber()) throw Napi::TypeError::New(opts.Env(), std::string("options.") + name + " must be a number");
  double d = v.As<Napi::Number>().DoubleValue();
  if (!(d >= min && d <= max) || d != static_cast<double>(static_cast<uint32_t>(d)))
    throw Napi::RangeError::New(opts.Env(), std::string("options.") + name + " out of range");
  return static_cast<uint32_t>(d);
}

// Calls an object's handlers from the event loop under one async context.
class LoopCalls {
 public:
  void Open(Napi::Env env, const char* name, Napi::Object resource) {
    ctx_ = std::make_unique<Napi::AsyncContext>(env, name, resource);
  }

  void Invoke(Napi::Object recv, Napi::FunctionReference& fn, const std::initializer_list<napi_value>& args) {
    if (fn.IsEmpty() || ctx_ == nullptr) return;
    invoking_++;
    try {
      // MakeCallback, not Call: entered from the event loop, this runs the microtask and
      // nextTick queues afterwards, which is where the TypeScript side flushes what the
      // handler produced (commits, sends).
      fn.MakeCallback(recv, args, *ctx_);
    } catch (const Napi::Error& e) {
      // An exception thrown by the handler: report it like any uncaught one.
      napi_fatal_exception(recv.Env(), e.Value());
    }
    if (--invoking_ == 0 && closed_) ctx_.reset();
  }

  // No more calls. From inside a handler the context is still in use by the MakeCallback
  // on the stack: it goes when that returns.
  void Close() {
    closed_ = true;
    if (invoking_ == 0) ctx_.reset();
  }

  // The environment is being torn down: napi_async_destroy is not safe any more.
  void Abandon() { static_cast<void>(ctx_.release()); }

 private:
  std::unique_ptr<Napi::AsyncContext> ctx_;
  int invoking_ = 0;
  bool closed_ = false;
};

}  // namespace ublk
