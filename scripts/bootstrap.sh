#!/usr/bin/env bash
# Installs what building and testing KubeSolo OS needs on a Debian 12 machine:
# the Debian packages in requirements-apt.txt and a virtualenv (.venv) from requirements.txt.
# Safe to re-run: it only installs what is missing or changed.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo_cmd=()
if [ "$(id -u)" -ne 0 ]; then
  sudo_cmd=(sudo)
fi

mapfile -t apt_packages < <(sed -e 's/#.*//' -e '/^[[:space:]]*$/d' requirements-apt.txt)
missing=()
for pkg in "${apt_packages[@]}"; do
  if ! dpkg-query -W -f '${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$pkg")
  fi
done

# The build fetches Debian packages with apt-get download: the package lists must be current.
lists_age_limit=$((24 * 3600))
newest_list=$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -printf '%T@\n' 2>/dev/null | sort -n | tail -1)
now=$(date +%s)
if [ "${#missing[@]}" -gt 0 ] || [ -z "$newest_list" ] || [ $((now - ${newest_list%.*})) -gt "$lists_age_limit" ]; then
  echo "bootstrap: apt-get update"
  "${sudo_cmd[@]}" apt-get update -qq
fi
if [ "${#missing[@]}" -gt 0 ]; then
  echo "bootstrap: installing ${missing[*]}"
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python=${PYTHON:-python3}
stamp=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "bootstrap: creating .venv from requirements.txt"
  "$python" -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  echo "$want" > "$stamp"
fi
echo "bootstrap: ready"
