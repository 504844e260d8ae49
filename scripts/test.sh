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
# configurable-http-proxy: JupyterHub's proxy, for tests/hub (npm; the hub's own default proxy)
if command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && ! command -v configurable-http-proxy >/dev/null 2>&1; then
  npm install -g --silent configurable-http-proxy >/dev/null
fi
bash scripts/install.sh "dev,train,cluster,ray,flower"
# shellcheck disable=SC1091
. .venv/bin/activate
# An ipykernel 6 kernel beside the venv's ipykernel 7 (every other package is the venv's): the
# widget tests click a waiting cell's buttons in both, whose internals differ (commwait.py).
python -m venv --without-pip .venv-ipykernel6
k6_site=$(.venv-ipykernel6/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$(python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
  >"$k6_site/zz-venv.pth"
python -m pip --python .venv-ipykernel6/bin/python install -q --no-deps "ipykernel>=6.25,<7" "nest_asyncio>=1.5"
# A Ray without token authentication (before 2.52), by itself: a job whose Python has it may not
# start a Ray of its own (tests/cluster/test_ray_own.py and tests/training/test_distributed.py put
# it first on such a job's PYTHONPATH).
python -m pip install -q --no-deps --target .ray-2.51 "ray==2.51.2"
# ... and the oldest Ray the project supports (pyproject.toml's floor for the ray extra), by itself:
# the same tests run a job with it first on its PYTHONPATH (tests/helpers/rays.py).
ray_floor=$(sed -n 's/^ray = \["ray\[train\]>=\([0-9.]*\)"\].*/\1/p' pyproject.toml)
python -m pip install -q --no-deps --upgrade --target .ray-floor "ray==${ray_floor:?no ray floor in pyproject.toml}"
# One pytest worker per CPU (most tests wait on servers, kernels and jobs more than they compute);
# --dist loadfile keeps each file's tests, and their module fixtures, on one worker.
# GPUQUEUE_TEST_WORKERS=0 runs them one by one in this process. --no-loadscope-reorder keeps the
# collection's order, slowest files first (tests/conftest.py), so no long file starts last.
python -m pytest -n "${GPUQUEUE_TEST_WORKERS:-auto}" --dist loadfile --no-loadscope-reorder "$@"
