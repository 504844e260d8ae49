#!/usr/bin/env bash
# Install everything the tests need (Debian packages, Python packages, the labextension build)
# and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  # chromium: browser tests (Playwright drives it, nothing is downloaded);
  # prometheus: promtool for the metrics/rules checks; redis-server: cluster-mode tests
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium prometheus redis-server >/dev/null
fi
bash scripts/install.sh "dev,train,cluster,ray"
# shellcheck disable=SC1091
. .venv/bin/activate
python -m pytest "$@"
