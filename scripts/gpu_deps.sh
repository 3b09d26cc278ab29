#!/usr/bin/env bash
# Unpacks the build dependencies that the GPU machines' image lacks (they cannot install
# packages) into .deps/ of this checkout, from the OS package manager of a machine that can
# download them: nlohmann-json3-dev (header-only, architecture-independent). CMake finds
# .deps/usr/include by itself; send .deps along with the tree (it is git-ignored), e.g. name it
# in the device tool's `carry`.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .deps/debs
(cd .deps/debs && apt-get download nlohmann-json3-dev >/dev/null)
for deb in .deps/debs/*.deb; do dpkg -x "$deb" .deps; done
ls .deps/usr/include/nlohmann/json.hpp
