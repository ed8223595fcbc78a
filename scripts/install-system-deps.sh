#!/usr/bin/env bash
# Installs the system packages the tests use, from Debian, when they are missing:
# nats-server (the NATS engine's tests start their own servers) and chromium (dashboard test).
set -euo pipefail
need=()
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || need+=(nats-server)
[ -x /usr/bin/chromium ] || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then SUDO=sudo; else SUDO=; fi
  echo "installing ${need[*]} from Debian" >&2
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
command -v nats-server >/dev/null 2>&1 || [ -x /usr/sbin/nats-server ] || { echo "nats-server missing" >&2; exit 1; }
[ -x /usr/bin/chromium ] || { echo "chromium missing" >&2; exit 1; }
