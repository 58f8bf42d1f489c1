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
