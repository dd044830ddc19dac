#!/usr/bin/env bash
# Install the system packages the tests need (container engine, base-image builder, linters, psql,
# openssl for the TLS tests' certificates), as root on a Debian/Ubuntu machine; only what is
# missing, so a second run does nothing.
#
#   .ci/setup-system.sh
set -euo pipefail

packages=(podman runc debootstrap shellcheck curl postgresql-client openssl)
missing=()
for package in "${packages[@]}"; do
    if [ "$(dpkg-query -W -f '${db:Status-Status}' "$package" 2>/dev/null)" != installed ]; then
        missing+=("$package")
    fi
done
if [ "${#missing[@]}" -eq 0 ]; then
    echo "setup-system: all of ${packages[*]} already installed"
    exit 0
fi

sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "setup-system: run as root (or install sudo)" >&2; exit 1; }
    sudo=(sudo)
fi
echo "setup-system: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
"${sudo[@]}" apt-get update -qq
"${sudo[@]}" apt-get install -y -qq "${missing[@]}"
