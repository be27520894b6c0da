#!/usr/bin/env bash
# Sets up what `cargo build --release --features cuda` needs on a machine without a
# CUDA toolkit: nvcc 13.0 and the CUDA 13 libraries, from NVIDIA's wheels on the Python
# package registry, unpacked under $C2I_CUDA (default $C2I_HOME/cuda-13.0). CUDA 13.0
# matches the driver of this project's GPU machines (580, CUDA 13.0): PTX from a newer
# nvcc would not load there.
#
# The CUDA driver library (libcuda.so.1) comes with the GPU driver, not with a wheel;
# the link only needs its symbols, so a stub with those names is built from cudarc's
# bindings. The binary loads the real driver at run time.
#
# Usage:  eval "$(bench/cuda-toolkit.sh)"     # prints the exports to use
#         cargo build --release --features cuda --target-dir target-cuda
set -euo pipefail
home=${C2I_HOME:-$HOME/.cache/c2i}
root=${C2I_CUDA:-$home/cuda-13.0}
kit=$root/x/nvidia/cu13
if [ ! -x "$kit/bin/nvcc" ] || [ ! -f "$kit/lib/stubs/libcuda.so" ]; then
  mkdir -p "$root/whl" "$root/x"
  python3 -m pip download -q --no-deps --only-binary=:all: -d "$root/whl" \
    nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 nvidia-nvvm==13.0.88 \
    nvidia-cuda-runtime==13.0.96 nvidia-cuda-nvrtc==13.0.88 nvidia-cublas==13.0.2.14 \
    nvidia-curand==10.4.0.35 nvidia-cusolver==12.0.4.66 nvidia-cuda-cccl==13.0.85 \
    nvidia-cusparse==12.6.3.3 nvidia-nvjitlink==13.0.88 >&2
  for w in "$root"/whl/*.whl; do unzip -q -o "$w" -d "$root/x"; done
  # The linker wants unversioned names.
  (cd "$kit/lib" && for f in libcudart libnvrtc libcublas libcublasLt libcurand libcusolver \
      libcusparse libnvJitLink; do ln -sf "$(ls $f.so.* | head -1)" "$f.so"; done)
  # libcuda: every driver symbol cudarc binds, as empty functions, soname libcuda.so.1.
  cudarc=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/cudarc-0.19.10 2>/dev/null | head -1)
  if [ -z "$cudarc" ]; then
    echo "cudarc 0.19.10 is not in the cargo registry: run 'cargo fetch' first" >&2
    exit 1
  fi
  mkdir -p "$kit/lib/stubs"
  grep -oE '^\s+fn (cu[A-Za-z0-9_]+)\(' "$cudarc/src/driver/sys/mod.rs" \
    | sed -E 's/^\s+fn (cu[A-Za-z0-9_]+)\(/\1/' | sort -u \
    | awk '{print "void " $1 "(void) {}"}' > "$root/libcuda-stub.c"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$kit/lib/stubs/libcuda.so" "$root/libcuda-stub.c"
fi
echo "export CUDA_ROOT=$kit PATH=$kit/bin:\$PATH CUDA_COMPUTE_CAP=90"
