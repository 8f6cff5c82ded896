#!/usr/bin/env bash
# The README's test command. Installs everything the tests need on a fresh machine, then runs pytest.
#   bash tools/test.sh              # the default suite (fast; browser tests included)
#   bash tools/test.sh -m slow      # full-size models, training, benchmarks-as-tests
# Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python3 launch.py --install-only --dev

if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    echo "Installing Debian's chromium for the browser tests"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
      || echo "WARNING: could not install chromium; browser tests will be skipped"
  else
    echo "WARNING: /usr/bin/chromium missing and not root; browser tests will be skipped (sudo apt-get install chromium)"
  fi
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False PYTHONUNBUFFERED=1
exec .venv/bin/python -m pytest "$@"
