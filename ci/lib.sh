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
