# Sourced by the scripts that run on the accelerator image: unpacks the Debian packages carried
# in .carry/ (headers and libraries that image lacks; see scripts/gpu_machine_check.sh) into
# $deps and points the loader, pkg-config and CMake (-DCMAKE_PREFIX_PATH=$deps/usr) at them.
# Sets: out (= $OUT, created), deps, lib.
out="${OUT:-/tmp/out}"; mkdir -p "$out"
deps=/tmp/deps; mkdir -p "$deps"
for f in .carry/*.deb; do dpkg -x "$f" "$deps"; done
lib=$deps/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
# Some Debian .pc files say libdir=/usr/lib (not the multiarch folder): the linker looks here too.
export LIBRARY_PATH="$lib:${LIBRARY_PATH:-}"
export PKG_CONFIG_PATH="$lib/pkgconfig:$lib/openblas-pthread/pkgconfig:$deps/usr/share/pkgconfig"
# The unpacked .pc files name /usr; point them at $deps/usr (openblas, gRPC, abseil, re2, ...).
for pc in "$lib"/pkgconfig/*.pc "$lib"/openblas-pthread/pkgconfig/*.pc "$deps"/usr/share/pkgconfig/*.pc; do
  [ -f "$pc" ] && sed -i "s|=/usr/|=$deps/usr/|; s|=/usr\$|=$deps/usr|" "$pc"
done
# NVLink multicast stays off on the lent machines (the device tool's KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
