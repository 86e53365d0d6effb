#!/usr/bin/env bash
# Debian's chromium for the report's browser test (tests/report): Playwright drives it, and never downloads a browser.
# apt-get needs root; without root (or without the package) this says so and goes on: the browser test then skips
# outside CI and fails in CI (where CI=true).
set -u
command -v chromium >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; then
  exit 0
fi
echo "chromium is not installed (as root: apt-get install chromium); the report's browser test will skip" >&2
