# Shared by the ci/ scripts: quiet, idempotent set-up steps.

step() { printf '\n=== %s\n' "$*"; }

ensure_rust_components() {
  for c in rustfmt clippy; do
    rustup component list --installed 2>/dev/null | grep -q "^$c" ||
      rustup component add "$c" >/dev/null 2>&1
  done
}

ensure_cargo_fuzz() {
  command -v cargo-fuzz >/dev/null 2>&1 ||
    cargo install -q cargo-fuzz --locked --version '^0.13'
}

# ensure_packages CMD:PACKAGE...: installs the Debian packages whose
# command is missing, in one quiet apt-get run.
ensure_packages() {
  local missing=() pair
  for pair in "$@"; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair##*:}")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq update >/dev/null
  apt-get -qq install -y --no-install-recommends "${missing[@]}" >/dev/null
}

# DPDK 22.11 for the `dpdk` feature: headers, the PMDs (net_ring,
# net_af_packet, ...), libclang for bindgen, pkg-config.
ensure_dpdk() {
  if pkg-config --exists libdpdk 2>/dev/null && ldconfig -p | grep -q libclang; then
    return 0
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get -qq update >/dev/null
  apt-get -qq install -y --no-install-recommends \
    libdpdk-dev dpdk dpdk-dev libclang-dev pkg-config >/dev/null
}
