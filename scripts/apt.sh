# Sourced by the install scripts. `apt_install TAG PACKAGE...` installs Debian packages as root (or through
# sudo, which it then leaves in $sudo for the caller's own service commands), keeping the downloaded .deb
# files under ~/.cache/headrace/apt so that a fresh clone reuses them; `apt-get update` only if the install
# fails without it. Progress goes to stderr.

apt_install() {
  local tag="$1"
  shift
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "$tag: need root or sudo to install: $*" >&2; exit 1; }
    sudo="sudo"
  fi
  local cache="${XDG_CACHE_HOME:-$HOME/.cache}/headrace/apt"
  mkdir -p "$cache/partial"
  local apt_opts=(-y -q -o "Dir::Cache::archives=$cache" -o APT::Sandbox::User=root)
  export DEBIAN_FRONTEND=noninteractive
  echo "$tag: installing $*" >&2
  if ! $sudo apt-get install "${apt_opts[@]}" "$@" >/dev/null; then
    $sudo apt-get update -q >/dev/null
    $sudo apt-get install "${apt_opts[@]}" "$@" >/dev/null
  fi
}
