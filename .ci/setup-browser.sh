#!/usr/bin/env bash
# Headless Chromium for the `browser`-marked tests: install Debian's `chromium` package when it is missing.
# Idempotent; run as root. Prints the browser's path on its last line; exits non-zero when no browser can be had.
#
#   .ci/setup-browser.sh
#   SGLANG_TUNE_CHROMIUM=/path/to/chromium    # use this browser instead (the tests read the same variable)
set -euo pipefail

say() { echo "setup-browser: $*" >&2; }
die() { say "ERROR: $*"; exit 1; }

find_browser() {
  if [ -n "${SGLANG_TUNE_CHROMIUM:-}" ]; then
    [ -x "$SGLANG_TUNE_CHROMIUM" ] && { echo "$SGLANG_TUNE_CHROMIUM"; return 0; }
    return 1
  fi
  for name in chromium chromium-browser; do
    command -v "$name" >/dev/null 2>&1 && { command -v "$name"; return 0; }
  done
  return 1
}

if ! browser=$(find_browser); then
  [ -z "${SGLANG_TUNE_CHROMIUM:-}" ] || die "SGLANG_TUNE_CHROMIUM=$SGLANG_TUNE_CHROMIUM is not an executable"
  [ "$(id -u)" = 0 ] || die "chromium is missing and this is not root: install Debian's chromium package"
  command -v apt-get >/dev/null 2>&1 || die "chromium is missing and there is no apt-get to install it"
  say "installing chromium (Debian)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q >/dev/null || die "apt-get update failed"
  apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >/dev/null \
    || die "apt-get install chromium failed"
  browser=$(find_browser) || die "chromium was installed but is not on PATH"
fi

# It must start: a broken install (missing libraries) fails here rather than in every test.
version=$("$browser" --headless --no-sandbox --disable-gpu --version 2>/dev/null) \
  || die "$browser does not start (try: $browser --headless --no-sandbox --version)"
say "$version"
echo "$browser"
