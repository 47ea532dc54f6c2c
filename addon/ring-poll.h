// A libuv poll on a ring fd, for a JS-owned object that reaps the ring on each wake-up
// (FileRing in fileops.cc, Queue in queue.cc). The uv_poll_t outlives its owner's
// interest in it: uv_close completes on a later loop turn, and an environment being torn
// down (worker exit) has to wait for that, hence the async cleanup hook, removed once the
// handle is closed.
#pragma once

#include <napi.h>
#include <uv.h>

#include <memory>

#include "errors.h"

namespace ublk {

class RingPoll {
 public:
  class Owner {
   public:
    // The fd is readable (status 0), or polling it failed (status: a negative errno).
    virtual void OnReadable(int status) = 0;
    // The environment is being torn down with the poll open: release the kernel side.
    // No JS can run here; the handle is closed afterwards.
    virtual void OnEnvGone() = 0;

   protected:
    ~Owner() = default;
  };

  RingPoll() = default;
  RingPoll(const RingPoll&) = delete;
  RingPoll& operator=(const RingPoll&) = delete;
  ~RingPoll() { Close(); }

  // Starts polling fd for readability on env's loop; the handle keeps the loop alive
  // until Unref(). Throws (an ErrnoError for uv failures) with nothing left open.
  void Start(Napi::Env env, int fd, Owner* owner) {
    uv_loop_t* loop = nullptr;
    if (napi_get_uv_event_loop(env, &loop) != napi_ok) throw Napi::Error::New(env, "napi_get_uv_event_loop failed");
    auto h = std::make_unique<Handle>();
    h->owner = owner;
    h->poll = this;
    int rc = uv_poll_init(loop, &h->handle, fd);
    if (rc < 0) throw ErrnoError(env, -rc, "uv_poll_init");
    h->handle.data = h.get();
    rc = uv_poll_start(&h->handle, UV_READABLE, OnPoll);
    napi_status hooked = rc == 0 ? napi_add_async_cleanup_hook(env, OnEnvCleanup, h.get(), &h->hook) : napi_ok;
    if (rc != 0 || hooked != napi_ok) {
      CloseHandle(h.release());
      if (rc != 0) throw ErrnoError(env, -rc, "uv_poll_start");
      throw Napi::Error::New(env, "napi_add_async_cleanup_hook failed");
    }
    h_ = h.release();
  }

  bool Active() const { return h_ != nullptr; }

  // No more OnReadable calls; the handle stays until Close().
  void Stop() {
    if (h_ != nullptr) uv_poll_stop(&h_->handle);
  }

  // Polls again after Stop(); false when there is no handle or libuv refuses.
  bool Resume() { return h_ != nullptr && uv_poll_start(&h_->handle, UV_READABLE, OnPoll) == 0; }

  void Ref() {
    if (h_ != nullptr) uv_ref(reinterpret_cast<uv_handle_t*>(&h_->handle));
  }

  void Unref() {
    if (h_ != nullptr) uv_unref(reinterpret_cast<uv_handle_t*>(&h_->handle));
  }

  // Detaches the owner and closes the handle (freed on a later loop turn). Idempotent.
  void Close() {
    if (h_ == nullptr) return;
    Handle* h = h_;
    h_ = nullptr;
    CloseHandle(h);
  }

 private:
  struct Handle {
    uv_poll_t handle;
    Owner* owner = nullptr;
    RingPoll* poll = nullptr;
    napi_async_cleanup_hook_handle hook = nullptr;
    bool closing = false;
  };

  static void CloseHandle(Handle* h) {
    h->owner = nullptr;
    h->poll = nullptr;
    if (!h->closing) {
      h->closing = true;
      uv_close(reinterpret_cast<uv_handle_t*>(&h->handle), OnHandleClosed);
    }
  }

  static void OnPoll(uv_poll_t* handle, int status, int) {
    auto* h = static_cast<Handle*>(handle->data);
    if (h->owner != nullptr) h->owner->OnReadable(status);
  }

  static void OnHandleClosed(uv_handle_t* handle) {
    auto* h = static_cast<Handle*>(handle->data);
    if (h->hook != nullptr) napi_remove_async_cleanup_hook(h->hook);
    delete h;
  }

  static void OnEnvCleanup(napi_async_cleanup_hook_handle, void* arg) {
    auto* h = static_cast<Handle*>(arg);
    Owner* owner = h->owner;
    if (h->poll != nullptr) h->poll->h_ = nullptr;
    if (owner != nullptr) owner->OnEnvGone();
    CloseHandle(h);
  }

  Handle* h_ = nullptr;
};

}  // namespace ublk
