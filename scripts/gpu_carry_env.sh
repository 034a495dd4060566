# Sourced by the scripts that run on the accelerator image: unpacks the Debian packages carried
# in .carry/ (headers and libraries that image lacks; see scripts/gpu_machine_check.sh) into
# $deps and points the loader, pkg-config and CMake (-DCMAKE_PREFIX_PATH=$deps/usr) at them.
# Sets: out (= $OUT, created), deps, lib.
out="${OUT:-/tmp/out}"; mkdir -p "$out"
deps=/tmp/deps; mkdir -p "$deps"
for f in .carry/*.deb; do dpkg -x "$f" "$deps"; done
lib=$deps/usr/lib/x86_64-linux-gnu
export LD_LIBRARY_PATH="$lib:$lib/openblas-pthread:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
export PKG_CONFIG_PATH="$lib/pkgconfig:$lib/openblas-pthread/pkgconfig:$deps/usr/share/pkgconfig"
if [ -f "$lib/openblas-pthread/pkgconfig/openblas.pc" ]; then
  sed -i "s|=/usr/|=$deps/usr/|" "$lib/openblas-pthread/pkgconfig/openblas.pc"
fi
# NVLink multicast stays off on the lent machines (the device tool's KINDS.md).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
