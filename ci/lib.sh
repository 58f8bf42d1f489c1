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

# What the agent's build and the cluster tests need: protoc and the
# well-known protobuf types (the etcd client's generated API), and the etcd
# server the two-host rig runs.
ensure_cluster_tools() {
  ensure_packages protoc:protobuf-compiler etcd:etcd-server etcdctl:etcd-client
  if [ ! -f /usr/include/google/protobuf/descriptor.proto ]; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get -qq update >/dev/null
    apt-get -qq install -y --no-install-recommends libprotobuf-dev >/dev/null
  fi
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

# What the VM tests need (docs/vms.md): QEMU >= 8 for the igb device (from
# bookworm-backports on Debian 12), busybox-static for the guests' init,
# and a guest kernel with its modules, unpacked (not installed) into
# $CHAINGATE_VM_DIR (default /var/cache/chaingate/vm): vmlinuz and lib/.
ensure_vm_tools() {
  local dir="${CHAINGATE_VM_DIR:-/var/cache/chaingate/vm}"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache policy 2>/dev/null | grep -q bookworm-backports; then
    cat > /etc/apt/sources.list.d/chaingate-backports.sources <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt-get -qq update >/dev/null
  fi
  if ! qemu-system-x86_64 -device help 2>/dev/null | grep -q '"igb"'; then
    apt-get -qq update >/dev/null
    apt-get -qq install -y -t bookworm-backports --no-install-recommends \
      qemu-system-x86 >/dev/null
  fi
  # The user QEMU runs as (agent.yaml's vm_user default).
  id -u chaingate-vm >/dev/null 2>&1 ||
    useradd --system --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chaingate-vm
  [ -x /bin/busybox ] && busybox --list 2>/dev/null | grep -qx insmod ||
    apt-get -qq install -y --no-install-recommends busybox-static >/dev/null
  if [ ! -s "$dir/vmlinuz" ]; then
    local pkg tmp
    pkg=$(apt-cache depends -t bookworm-backports linux-image-amd64 |
      awk '/Depends: linux-image-[0-9]/ { print $2; exit }')
    [ -n "$pkg" ] || { echo "no backports kernel found" >&2; return 1; }
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get -qq download -t bookworm-backports "$pkg" >/dev/null)
    mkdir -p "$dir.new"
    dpkg-deb -x "$tmp"/*.deb "$dir.new"
    cp "$dir.new"/boot/vmlinuz-* "$dir.new/vmlinuz"
    rm -rf "$tmp" "$dir"
    mv "$dir.new" "$dir"
  fi
}
