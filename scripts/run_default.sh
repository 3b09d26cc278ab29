#!/usr/bin/env bash
# Installs dependencies, builds, and runs the main job on its embedded default: a `cadre simulate`
# comparison of CAD against the baselines.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
"${CADRE_BUILD_DIR:-build}"/bin/cadre simulate "$@"
