#!/usr/bin/env bash
# Installs the Debian 12 packages llmrt needs to build, test and run, when
# any is missing. Sourced or run; needs root (or sudo) only to install.
set -euo pipefail
LLMRT_PACKAGES=(
    build-essential cmake pkg-config clang-format
    # scripts/fuzz.sh: libFuzzer comes with clang
    clang
    libzmq3-dev libczmq-dev libmicrohttpd-dev libhiredis-dev libmsgpack-dev
    libcriterion-dev libsqlite3-dev libcurl4-openssl-dev libjansson-dev
    libsodium-dev
    libxml2-dev libpoppler-glib-dev
    # test_ingest_extract draws a PDF with cairo (fontconfig for its fonts)
    libcairo2-dev libfontconfig-dev
    redis-server curl wrk nginx-light python3
    # promtool, with which the tests check /api/metrics/prometheus. Debian
    # ships it only with the server, whose systemd unit the package enables:
    # `systemctl disable --now prometheus` where that is not wanted.
    prometheus
)
missing=()
for p in "${LLMRT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
# Node.js and npm: the integration tests install real clients from npm (the
# OpenAI library, the AnythingLLM CLI) and run them against the suite.
# Debian's nodejs (18) will do; a NodeSource nodejs, which bundles npm, too.
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
    echo "deps: installing ${missing[*]}" >&2
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
