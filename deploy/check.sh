#!/usr/bin/env bash
# Validates the deployment files with the real tools: systemd-analyze, promtool, haproxy.
# Used by CI (./test.sh installs the tools); each check runs when its tool is present and says so when not.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# Directory of the built binaries (absolute, or relative to where the script is run from).
bin_dir=$(cd "${1:-$here/../target/debug}" && pwd)
cd "$here"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

if command -v systemd-analyze >/dev/null 2>&1; then
  # Point ExecStart at the freshly built binaries so verify can check they exist.
  for unit in b2-proxy.service b2fs-shim@.service; do
    sed -e "s|/usr/bin/b2|$bin_dir/b2|g" "$unit" > "$tmp/$unit"
  done
  cp "$tmp/b2fs-shim@.service" "$tmp/b2fs-shim@mnt-plots.service"
  out=$(systemd-analyze verify "$tmp/b2-proxy.service" "$tmp/b2fs-shim@mnt-plots.service" 2>&1 || true)
  # Units we are ordered against (the harvester) and host users need not exist here.
  # The man pages are installed by the package, not on this machine.
  bad=$(printf '%s\n' "$out" | grep -v -e 'chia-harvester.service' -e "Command 'man " -e '^$' || true)
  if [ -n "$bad" ]; then
    printf 'systemd-analyze verify:\n%s\n' "$bad"
    exit 1
  fi
  # The exposure targets (the systemd container test checks them again as the installed units).
  for pair in "b2fs-shim@mnt-plots.service 5" "b2-proxy.service 2"; do
    set -- $pair
    score=$(systemd-analyze security --offline=yes --no-pager "$tmp/$1" 2>/dev/null \
      | sed -n 's/.*Overall exposure level for [^:]*: \([0-9.]*\).*/\1/p')
    if [ -z "$score" ] || ! awk -v s="$score" -v max="$2" 'BEGIN { exit !(s <= max) }'; then
      echo "systemd-analyze security: $1 scores ${score:-?}, target <= $2"
      exit 1
    fi
    echo "systemd-analyze security: $1 $score (target <= $2)"
  done
  echo "systemd units: ok"
else
  echo "systemd-analyze not found: unit check skipped"
fi

if command -v promtool >/dev/null 2>&1; then
  # The config check also checks the rule files it loads (alerts.yml); then the rules' unit tests.
  promtool check config prometheus.yml
  promtool test rules alerts_test.yml
else
  echo "promtool not found: prometheus.yml and alerts.yml checks skipped"
fi

if command -v haproxy >/dev/null 2>&1; then
  haproxy -c -f haproxy.cfg
else
  echo "haproxy not found: haproxy.cfg check skipped"
fi
