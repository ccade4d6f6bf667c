# Sourced by the deps scripts (scripts/deps.sh, test/cluster/deps.sh, test/container/deps.sh):
# install_missing LABEL PKG... installs the Debian packages given, as root, with apt-get; nothing
# when none is given.
install_missing() {
  local label=$1
  shift
  [ $# -gt 0 ] || return 0
  if [ "$(id -u)" -ne 0 ]; then
    echo "$label: missing $*; run as root (sudo) so they can be installed" >&2
    exit 1
  fi
  echo "$label: installing $*"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
