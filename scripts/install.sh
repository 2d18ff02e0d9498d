#!/usr/bin/env bash
# Install everything MODIAD needs on a fresh Debian machine: the Debian packages
# (mosquitto for tests and production brokers, libusb for open3d) and the Python
# package with its test and ONNX extras. Safe to run again; it skips what is present.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
ldconfig -p 2>/dev/null | grep -q 'libusb-1.0.so.0' || need_apt+=(libusb-1.0-0)
if [ "${#need_apt[@]}" -gt 0 ]; then
    echo "install.sh: installing Debian packages: ${need_apt[*]}"
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

# torch and torchvision are pinned to a pair that imports cleanly together. On x86_64
# this pair is a CUDA build, which also runs on the CPU.
case "$(uname -m)" in
    x86_64) torch_pins=("torch==2.14.1" "torchvision==0.29.1") ;;
    aarch64) torch_pins=("torch==2.9.1" "torchvision==0.24.1") ;;
    *) torch_pins=("torch" "torchvision") ;;
esac
python3 -m pip install --quiet --disable-pip-version-check "${torch_pins[@]}"
python3 -m pip install --quiet --disable-pip-version-check -e ".[test,onnx]" "${torch_pins[@]}"
echo "install.sh: done ($(python3 -c 'import modiad; print("modiad", modiad.__version__)'))"
