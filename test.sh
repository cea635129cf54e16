#!/usr/bin/env bash
# The whole test suite, on a fresh machine too: installs what is missing (apt packages, cargo-deb, the chiapos
# venv at tests/.venv), then checks formatting and lints, builds the Debian package, runs every test (the
# systemd container test included) and checks the deployment files. CI runs exactly this (.ci/run).
# Debian/Ubuntu; run as root, or as a user with sudo.
set -euo pipefail
cd "$(dirname "$0")"

log() { printf '\n== %s\n' "$*"; }

as_root=()
if [ "$(id -u)" -ne 0 ]; then
  as_root=(sudo)
fi

need_apt=()
command -v fusermount3 >/dev/null 2>&1 || need_apt+=(fuse3)
# chia-pos2 (the v2 prover the tests and the demo use) compiles C++20 sources.
command -v c++ >/dev/null 2>&1 || need_apt+=(g++)
# `python3 -m venv` for the chiapos venv below (Debian/Ubuntu ship ensurepip in python3-venv).
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
python3 -c 'import ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# Validators for the deployment files (deploy/check.sh); haproxy also runs in tests/tests/multi_proxy.rs
# (/usr/sbin is not on every user's PATH).
[ -x /usr/sbin/haproxy ] || command -v haproxy >/dev/null 2>&1 || need_apt+=(haproxy)
command -v promtool >/dev/null 2>&1 || need_apt+=(prometheus)
# The systemd container test (tests/tests/systemd.rs): systemd-nspawn and a minimal Debian tree.
command -v systemd-nspawn >/dev/null 2>&1 || need_apt+=(systemd-container)
command -v mmdebstrap >/dev/null 2>&1 || need_apt+=(mmdebstrap)
# cargo-deb runs dpkg-shlibdeps (dpkg-dev) to compute the package's library dependencies.
command -v dpkg-shlibdeps >/dev/null 2>&1 || need_apt+=(dpkg-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${as_root[@]}" apt-get update -qq
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# rclone for the benchmark's comparison column (the smoke run checks its rows when it is installed). Optional:
# a machine whose package archive lacks it still runs everything else.
if ! command -v rclone >/dev/null 2>&1; then
  log "installing rclone (optional)"
  "${as_root[@]}" apt-get install -y -qq --no-install-recommends rclone >/dev/null 2>&1 \
    || { "${as_root[@]}" apt-get update -qq >/dev/null 2>&1 \
         && "${as_root[@]}" apt-get install -y -qq --no-install-recommends rclone >/dev/null 2>&1; } \
    || echo "rclone is not available here: the benchmark smoke run skips its comparison column"
fi

# cargo-deb builds the Debian package (kept in ~/.cargo/bin once installed).
if ! cargo deb --version >/dev/null 2>&1; then
  log "installing cargo-deb"
  cargo install --locked cargo-deb
fi

# Real Chia v1 prover for the end-to-end tests, in a venv the tests find at tests/.venv.
if [ ! -x tests/.venv/bin/python ] || ! tests/.venv/bin/python -c 'import chiapos' 2>/dev/null; then
  log "creating tests/.venv with chiapos"
  python3 -m venv tests/.venv
  tests/.venv/bin/pip install -q --disable-pip-version-check 'chiapos==2.0.12'
fi

log "cargo fmt --check"
cargo fmt --all -- --check

log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings

# The package CI ships; the systemd container test installs it.
log "Debian package"
deploy/build-deb.sh

log "cargo test"
cargo test --workspace

# Model checks of the in-flight table and the disk refresh under shuttle (a feature build of the proxy alone).
log "model checks (shuttle)"
cargo test -p b2-proxy --features shuttle --lib model

log "deployment files"
bash deploy/check.sh "${CARGO_TARGET_DIR:-target}/debug"
