#!/usr/bin/env bash
# One set-up command: Debian packages (as root), npm packages, the addon and the TypeScript build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  scripts/setup-deps.sh
else
  sudo scripts/setup-deps.sh
fi
npm install --no-audit --no-fund
npm run build:ts
