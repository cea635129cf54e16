#!/usr/bin/env bash
# The proxy's memory with a 1,000,000-file bucket (issue 16 item 4): RSS after the catalog load and after each
# of two SIGHUP refreshes, the peak (VmHWM), and the slowest 8 KiB read and `GET /files?limit=1` seen while
# each refresh runs. Starts a b2-emulator and a b2-proxy on spare ports and stops both when done.
#
#   cargo build --release -p b2-proxy -p b2fs-tests --bin b2-emulator
#   tests/scripts/catalog-refresh-memory.sh [BIN_DIR (default target/release)] [FILES (default 1000000)]
set -euo pipefail
BIN=${1:-target/release}
FILES=${2:-1000000}
EMU_PORT=${EMU_PORT:-18180}
PX_PORT=${PX_PORT:-18642}
OUT=$(mktemp -d)
EMU= PX=
cleanup() {
  [ -n "$PX" ] && kill "$PX" 2>/dev/null
  [ -n "$EMU" ] && kill "$EMU" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$OUT"
}
trap cleanup EXIT

"$BIN/b2-emulator" --listen "127.0.0.1:$EMU_PORT" --virtual-bulk "farm-v2/plot-:$FILES:1020000000" \
  >"$OUT/emu.out" 2>"$OUT/emu.err" &
EMU=$!
for _ in $(seq 1 120); do grep -qs '^application_key=' "$OUT/emu.out" && break; sleep 1; done
fact() { sed -n "s/^$1=//p" "$OUT/emu.out"; }
[ -n "$(fact application_key)" ] || { echo "the emulator did not start:" >&2; cat "$OUT/emu.err" >&2; exit 1; }
cat >"$OUT/config.toml" <<EOF
[b2]
key_id = "$(fact key_id)"
application_key = "$(fact application_key)"
bucket = "$(fact bucket)"
endpoint = "$(fact endpoint)"
[server]
listen = "127.0.0.1:$PX_PORT"
[cache]
memory = "64MiB"
disk = 0
[catalog]
refresh = "1h"
EOF
"$BIN/b2-proxy" --config "$OUT/config.toml" 2>"$OUT/proxy.err" &
PX=$!
base=http://127.0.0.1:$PX_PORT
metric() { curl -s --max-time 5 "$base/metrics" | awk -v m="$1" '$1 == m { print $2 }'; }
mem() { awk '/^VmRSS|^VmHWM/ { printf "%s %d MiB  ", $1, $2 / 1024 }' "/proc/$PX/status"; echo; }
max() { echo "if ($1 > $2) $1 else $2" | bc; }

start=$(date +%s.%N)
for _ in $(seq 1 600); do [ "$(metric b2proxy_catalog_files)" = "$FILES" ] && break; sleep 0.5; done
[ "$(metric b2proxy_catalog_files)" = "$FILES" ] || { echo "the catalog did not load:" >&2; tail "$OUT/proxy.err" >&2; exit 1; }
echo "catalog of $FILES files loaded in $(echo "$(date +%s.%N) - $start" | bc) s"
sleep 3
echo -n "after the load:   "; mem
first=$(printf 'farm-v2/plot-%06d.plot' 0)
for r in 1 2; do
  sleep 6 # SIGHUP refreshes at most every 5 s
  before=$(metric b2proxy_catalog_last_refresh_timestamp_seconds)
  kill -HUP "$PX"
  start=$(date +%s.%N)
  slow_read=0 slow_list=0
  for _ in $(seq 1 3000); do
    a=$(curl -s -o /dev/null -w '%{time_total}' --max-time 10 -H 'Range: bytes=0-8191' "$base/files/$first")
    b=$(curl -s -o /dev/null -w '%{time_total}' --max-time 10 "$base/files?prefix=farm-v2/plot-0009&limit=1")
    slow_read=$(max "$a" "$slow_read") slow_list=$(max "$b" "$slow_list")
    [ "$(metric b2proxy_catalog_last_refresh_timestamp_seconds)" != "$before" ] && break
    sleep 0.05
  done
  echo "refresh $r: $(echo "$(date +%s.%N) - $start" | bc) s; slowest 8 KiB read during it ${slow_read} s, slowest /files?limit=1 ${slow_list} s"
  sleep 3
  echo -n "after refresh $r: "; mem
done
