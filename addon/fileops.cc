// File operations Node's fs module lacks: fallocate(2) hole punching and zeroing, used by the
// NBD store for TRIM and WRITE_ZEROES. Each runs on the libuv pool like fs.write does.
#include <napi.h>

#include <cerrno>
#include <cstring>
#include <fcntl.h>
#include <linux/falloc.h>

namespace {

class FallocateWorker : public Napi::AsyncWorker {
 public:
  FallocateWorker(Napi::Env env, int fd, int mode, int64_t offset, int64_t length)
      : Napi::AsyncWorker(env), deferred_(Napi::Promise::Deferred::New(env)),
        fd_(fd), mode_(mode), offset_(offset), length_(length) {}

  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override {
    int r;
    do {
      r = fallocate(fd_, mode_, offset_, length_);
    } while (r < 0 && errno == EINTR);
    err_ = r < 0 ? errno : 0;
  }

  void OnOK() override {
    Napi::Env env = Env();
    if (err_ == 0) {
      deferred_.Resolve(env.Undefined());
      return;
    }
    Napi::Error e = Napi::Error::New(env, std::string("fallocate: ") + strerror(err_));
    e.Set("errno", Napi::Number::New(env, err_));
    e.Set("code", Napi::String::New(env, strerrorname_np(err_) ? strerrorname_np(err_) : "EIO"));
    e.Set("syscall", Napi::String::New(env, "fallocate"));
    deferred_.Reject(e.Value());
  }

 private:
  Napi::Promise::Deferred deferred_;
  int fd_;
  int mode_;
  int64_t offset_;
  int64_t length_;
  int err_ = 0;
};

Napi::Value Run(const Napi::CallbackInfo& info, int mode) {
  Napi::Env env = info.Env();
  if (info.Length() != 3 || !info[0].IsNumber() || !info[1].IsNumber() || !info[2].IsNumber()) {
    throw Napi::TypeError::New(env, "expected (fd, offset, length)");
  }
  auto* w = new FallocateWorker(env, info[0].As<Napi::Number>().Int32Value(), mode,
                                info[1].As<Napi::Number>().Int64Value(),
                                info[2].As<Napi::Number>().Int64Value());
  Napi::Promise p = w->Promise();
  w->Queue();
  return p;
}

// Deallocates the range; reads return zeros afterwards. The file size is unchanged.
Napi::Value PunchHole(const Napi::CallbackInfo& info) {
  return Run(info, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE);
}

// Zeros the range and keeps it allocated (NBD_CMD_FLAG_NO_HOLE).
Napi::Value ZeroRange(const Napi::CallbackInfo& info) {
  return Run(info, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE);
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  exports.Set("punchHole", Napi::Function::New(env, PunchHole));
  exports.Set("zeroRange", Napi::Function::New(env, ZeroRange));
  return exports;
}

}  // namespace

NODE_API_MODULE(fileops, Init)
