#!/usr/bin/env bash
# Rebuilds vendor/candle-core: candle-core 0.11.1 as published on crates.io (checked against
# the checksum Cargo.lock held for it) with vendor/candle-core-backprop.patch,
# vendor/candle-core-rayon.patch and vendor/candle-core-broadcast.patch applied, and
# without the example, test and bench targets its manifest lists (their files are not
# vendored). Cargo.toml's [patch.crates-io] points candle-core (and with it candle-nn) here.
#
# The patch: candle's backward pass gave every tensor's gradient a zero-filled tensor and
# added each contribution to it (GradStore::or_insert + add), a memset and an add over every
# activation of the graph. The patched pass stores a tensor's first contribution as it is
# (made contiguous) and adds only the second and later ones. 0 + g is g, so every gradient
# has the same bits (up to the sign of a zero). Upstream: huggingface/candle PRs #3578 and
# #3822 propose the same; drop the vendored copy once a candle release carries it.
#
# vendor/candle-core-rayon.patch: `candle_core::utils::set_elementwise_on_rayon(true)` runs
# the CPU backend's parallel elementwise maps (binary and unary, from 64 Ki elements) on
# rayon's global pool instead of candle's own barrier pool. vqlab's ops run on rayon's pool
# and it keeps candle's pool at no threads of its own (CANDLE_NUM_THREADS=1), so without the
# patch those maps (the residual adds, the gradient sums, the loss arithmetic) ran on one
# core while the other waited. Each element is computed by the same code, so the bits are
# the same.
#
# vendor/candle-core-broadcast.patch: making a broadcast of one value contiguous (the
# gradient of a mean, which the backward pass stores contiguous: the MSE losses' gradients,
# 100 K and 2 × 400 K values a step of the benchmark) is a fill, where candle stepped a
# strided index through every element. The same values.
#
#   bash scripts/vendor-candle.sh      # needs curl, sha256sum, tar and patch
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.11.1
sha256=d11c8be87cfbaef9ebb62fb3f850d1fc8e00cc1d11d393fdbe55a4d5c2cdb325
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
crate="$work/candle-core-$version.crate"
cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/candle-core-$version.crate 2>/dev/null | head -n 1 || true)
if [ -n "$cached" ]; then
    cp "$cached" "$crate"
else
    curl -sSfL -o "$crate" "https://static.crates.io/crates/candle-core/candle-core-$version.crate"
fi
echo "$sha256  $crate" | sha256sum -c --quiet -
tar -xzf "$crate" -C "$work"
src="$work/candle-core-$version"
for p in backprop rayon broadcast; do
    (cd "$src" && patch -s -p1 < "$OLDPWD/vendor/candle-core-$p.patch")
done
# The manifest without its [[example]], [[test]] and [[bench]] targets.
awk '/^\[\[(example|test|bench)\]\]/ { skip = 1; next } /^\[/ { skip = 0 } !skip' "$src/Cargo.toml" > "$work/Cargo.toml"
rm -rf vendor/candle-core.new
mkdir -p vendor/candle-core.new
cp -r "$src/src" "$src/LICENSE" "$src/README.md" vendor/candle-core.new/
cp "$work/Cargo.toml" vendor/candle-core.new/Cargo.toml
rm -rf vendor/candle-core
mv vendor/candle-core.new vendor/candle-core
echo "vendor/candle-core: candle-core $version with vendor/candle-core-{backprop,rayon,broadcast}.patch"
