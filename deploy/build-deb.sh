#!/usr/bin/env bash
# Builds the Debian package `b2fs` (target/debian/b2fs_<version>_<arch>.deb) with cargo-deb: both release
# binaries, then the man pages and completions rendered from their command lines (`--generate`), then the
# package (metadata in proxy/Cargo.toml). Prints the absolute path of the .deb on its last line.
#   deploy/build-deb.sh            release build (what ships)
#   B2FS_DEB_PROFILE=dev ...       quicker unoptimised build, for tests on a busy machine
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${B2FS_DEB_PROFILE:-release}
target_dir=${CARGO_TARGET_DIR:-target}
case $profile in
  release) out_dir=$target_dir/release ;;
  dev) out_dir=$target_dir/debug ;;
  *) out_dir=$target_dir/$profile ;;
esac

if ! cargo deb --version >/dev/null 2>&1; then
  echo "cargo-deb is not installed: cargo install --locked cargo-deb (./test.sh installs it)" >&2
  exit 1
fi

cargo build --profile "$profile" -p b2-proxy -p b2fs-shim --bins >&2
gen=$out_dir/generated
mkdir -p "$gen"
for bin in b2-proxy b2fs-shim; do
  "$out_dir/$bin" --generate man | gzip -9n > "$gen/$bin.1.gz"
  "$out_dir/$bin" --generate bash > "$gen/$bin.bash"
  "$out_dir/$bin" --generate zsh > "$gen/_$bin"
  "$out_dir/$bin" --generate fish > "$gen/$bin.fish"
done
# cargo-deb maps the assets' target/release/ paths to the profile's directory.
cargo deb -p b2-proxy --no-build --profile "$profile" --output "$target_dir/debian/" >&2
readlink -f "$(ls -t "$target_dir"/debian/b2fs_*.deb | head -n 1)"
