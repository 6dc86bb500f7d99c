#!/bin/bash
# Install what tests/test_slurm.py needs to bring up a single-node SLURM on a Debian/Ubuntu test
# machine: slurmctld, slurmd, the client commands and munge. Idempotent: installs only what is
# missing and does nothing when all is there. Needs root (or sudo) and the apt repositories.
#
#   bash slurm/install_deps.sh
#
# The test starts its own munged (with its own key), slurmctld and slurmd from a generated
# slurm.conf under a temp dir and stops them afterwards; nothing here starts a daemon. The system
# munge key is created only when the package left none, so a real `systemctl start munge` works.
set -euo pipefail

PACKAGES=(slurmctld slurmd slurm-client munge)
SUDO=()
if [ "$(id -u)" -ne 0 ]; then
    SUDO=(sudo)
fi
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$pkg")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "slurm/install_deps.sh: ${PACKAGES[*]} already installed"
else
    if ! command -v apt-get >/dev/null; then
        echo "error: ${missing[*]} missing and no apt-get here; install SLURM and munge by hand" >&2
        exit 2
    fi
    if [ "${#SUDO[@]}" -gt 0 ] && ! command -v sudo >/dev/null; then
        echo "error: installing ${missing[*]} needs root (or sudo)" >&2
        exit 2
    fi
    echo "slurm/install_deps.sh: installing ${missing[*]}"
    # no daemons may start from the packages' postinst on a container without systemd: policy-rc.d
    # is the Debian way to say so, and is removed again whatever happens
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee /usr/sbin/policy-rc.d >/dev/null
        "${SUDO[@]}" chmod +x /usr/sbin/policy-rc.d
        trap '"${SUDO[@]}" rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    "${SUDO[@]}" apt-get update -qq
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

if [ ! -e /etc/munge/munge.key ] && command -v mungekey >/dev/null; then
    "${SUDO[@]}" mungekey --create --keyfile=/etc/munge/munge.key
    "${SUDO[@]}" chown munge:munge /etc/munge/munge.key
    "${SUDO[@]}" chmod 600 /etc/munge/munge.key
fi
