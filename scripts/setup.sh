#!/usr/bin/env bash
# Idempotent project setup on a fresh Debian machine: everything lands in ./.env (git-ignored).
#
#   .env/venv          Python venv: torch==2.11.0 (libtorch for tch 0.24), onnxruntime==1.31.1
#                      (the ORT dylib for ort 2.0.0-rc.15 load-dynamic), plus the packages the
#                      committed golden-file and benchmark scripts use (librosa, soxr, sklearn, onnx).
#   .env/libtorch      symlink to the venv's torch package (include/ + lib/), read by torch-sys
#                      through LIBTORCH in .cargo/config.toml.
#   .env/libonnxruntime.so  symlink to the ORT shared library (birdclef-infer finds it here).
#   .env/openvino      symlink to pip openvino's libs/ directory (libopenvino_c.so.*, its CPU
#                      plugin and ONNX frontend, which must stay together): --engine openvino.
#
# A second run checks a stamp and returns in well under a second.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
env_dir="$root/.env"
stamp="$env_dir/setup.stamp"
reqs="$root/scripts/requirements.txt"
want="$(cat "$reqs" "$root/scripts/setup.sh" | sha256sum | cut -d' ' -f1)"

have_hdf5() { [ -f /usr/include/hdf5/serial/hdf5.h ] || [ -f /usr/include/hdf5.h ]; }

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && have_hdf5 \
   && [ -e "$env_dir/libtorch/lib" ] && [ -e "$env_dir/libonnxruntime.so" ] \
   && [ -d "$env_dir/openvino" ]; then
  exit 0
fi

log() { printf '[setup] %s\n' "$*" >&2; }

if ! have_hdf5; then
  log "installing libhdf5-dev (Debian)"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq libhdf5-dev pkg-config >/dev/null
fi

py="${PYTHON:-python3}"
if [ ! -x "$env_dir/venv/bin/python" ]; then
  log "creating venv in $env_dir/venv"
  mkdir -p "$env_dir"
  "$py" -m venv "$env_dir/venv"
fi
vpy="$env_dir/venv/bin/python"
log "installing Python packages from scripts/requirements.txt (torch is a large download, once)"
"$vpy" -m pip install -q --disable-pip-version-check --upgrade pip >/dev/null
"$vpy" -m pip install -q --disable-pip-version-check -r "$reqs"

torch_dir="$("$vpy" -c 'import torch, os; print(os.path.dirname(torch.__file__))')"
ort_lib="$("$vpy" -c 'import onnxruntime, os, glob; d=os.path.join(os.path.dirname(onnxruntime.__file__), "capi"); print(sorted(glob.glob(os.path.join(d, "libonnxruntime.so*")))[-1])')"
ov_libs="$("$vpy" -c 'import openvino, os; print(os.path.join(os.path.dirname(openvino.__file__), "libs"))')"
ln -sfn "$torch_dir" "$env_dir/libtorch"
ln -sfn "$ort_lib" "$env_dir/libonnxruntime.so"
ln -sfn "$ov_libs" "$env_dir/openvino"
echo "$want" > "$stamp"
log "ready: libtorch=$torch_dir ort=$ort_lib openvino=$ov_libs"
