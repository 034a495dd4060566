// Thread stacks that hold what their creator asked for, whatever static TLS the process carries.
//
// glibc places the static TLS block of every library loaded at startup at the top of each new
// thread's stack, inside the size the creator requested (glibc bug 11787). A library that asks
// for a small explicit stack then fails to start threads once large TLS users are loaded:
// pthread_create returns EINVAL without a syscall. In resa that is civetweb, the HTTP server
// under prometheus-cpp's Exposer (`--metrics-listen`), which asks for 100 KiB stacks, in the
// programs that link cuBLASLt (92 KiB of static TLS), OpenBLAS (60 KiB), cuBLAS and cudart: 171
// KiB in all, so `resa serve --metrics-listen` of a CUDA build could not start its endpoint.
//
// This definition of pthread_attr_setstacksize, linked into the programs (not into libraries) and
// exported from them, takes precedence over libc's for every library in the process. It adds the
// static TLS size to the requested size, so the requester gets the usable stack it asked for.
// The static TLS size comes from the dynamic loader (_dl_get_tls_static_info, the call the
// sanitizer runtimes use for the same purpose); where that is missing, 1 MiB is added.
#include <dlfcn.h>
#include <pthread.h>

#include <cerrno>
#include <cstddef>

namespace {

using SetStackSize = int (*)(pthread_attr_t*, size_t);
using GetTlsInfo = void (*)(size_t*, size_t*);

size_t StaticTlsBytes() {
  auto info = reinterpret_cast<GetTlsInfo>(dlsym(RTLD_DEFAULT, "_dl_get_tls_static_info"));
  if (info == nullptr) return size_t(1) << 20;
  size_t size = 0, align = 0;
  info(&size, &align);
  return size + align;
}

}  // namespace

extern "C" int pthread_attr_setstacksize(pthread_attr_t* attr, size_t stacksize) {
  static const SetStackSize real =
      reinterpret_cast<SetStackSize>(dlsym(RTLD_NEXT, "pthread_attr_setstacksize"));
  static const size_t tls = StaticTlsBytes();
  if (real == nullptr) return ENOSYS;
  return real(attr, stacksize + tls);
}
