#!/usr/bin/env bash
# Everything the demo and the tests need, doing only what is missing, so `npm test` and
# `npm run demo` run it first and a machine that has it all pays a few seconds: Debian
# packages and the test VM's kernels (as root), npm packages (when node_modules does not
# match package-lock.json), the addons (when a source is newer than a build), the TypeScript.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" -eq 0 ]; then
  scripts/setup-deps.sh
else
  sudo scripts/setup-deps.sh
fi

# node_modules/.package-lock.json is npm's record of what it installed: every package the
# lock names must be there at the lock's version.
npm_current() {
  node -e '
    const fs = require("fs");
    const want = JSON.parse(fs.readFileSync("package-lock.json", "utf8")).packages;
    let have;
    try { have = JSON.parse(fs.readFileSync("node_modules/.package-lock.json", "utf8")).packages; } catch { process.exit(1); }
    for (const [k, v] of Object.entries(want)) {
      if (!k.startsWith("node_modules/") || v.optional) continue;
      if (!have[k] || have[k].version !== v.version || !fs.existsSync(k)) process.exit(1);
    }'
}
if npm_current; then
  echo "setup: npm packages: up to date"
else
  # Its install script builds the addons.
  npm install --no-audit --no-fund
fi

addons_current() {
  local t
  for t in $(sed -n 's/.*"target_name": *"\([a-z0-9_]*\)".*/\1/p' binding.gyp); do
    [ -f "build/Release/$t.node" ] || return 1
    [ -z "$(find addon binding.gyp -newer "build/Release/$t.node" -print -quit)" ] || return 1
  done
}
if addons_current; then
  echo "setup: addons: up to date"
else
  npm run build:addon
fi
npm run build:ts
