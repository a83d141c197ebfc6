#!/usr/bin/env bash
# Checks the manifests in deploy/ without a cluster: they parse, agree with each other (names,
# ports, selectors, probe paths, the router's routes), with README's env table and with the
# Dockerfile; and, when nginx is installed, that nginx accepts the router's nginx.conf (`nginx -t`)
# and routes with it as meant (run on 127.0.0.1 against a stand-in cluster DNS and stand-in
# pods and Service; binds ports 80 and 5050 on 127.0.0.70/71/80, so run it as root).
# Needs python3 with PyYAML (Debian/Ubuntu: apt-get install -y python3-yaml; nginx: apt-get
# install -y nginx). Exits non-zero on the first disagreement.
#
#   deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import yaml' 2>/dev/null || { echo "check.sh: needs PyYAML (apt-get install -y python3-yaml)"; exit 2; }
exec python3 deploy/check.py "$@"
