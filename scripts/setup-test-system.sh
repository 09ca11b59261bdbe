#!/usr/bin/env bash
# Installs the system packages the test suite needs, from Debian's packages, when they are
# missing: Chromium (browser tests) and PostgreSQL (store tests). Idempotent and quiet when
# everything is present. The tests start their own throwaway PostgreSQL cluster
# (tests/_postgres.py); nothing is left running here.
set -euo pipefail
need=()
[ -x /usr/bin/chromium ] || need+=(chromium)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "setup-test-system: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  sudo_=""
  [ "$(id -u)" -eq 0 ] || sudo_="sudo"
  $sudo_ apt-get update -qq
  $sudo_ apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
