#!/usr/bin/env bash
# Install the system packages the test suite needs, from Debian's archive, when they are missing.
# Java 17 + Maven run the local Kafka broker; redis-server backs the shared rate limiter's tests;
# prometheus (with promtool) checks the alert rules and scrapes a running consumer; chromium
# (and fonts for a readable screenshot) drives the Event Debugger's browser test; docker-compose
# validates docker-compose.yml without an engine. Helm (not in Debian) is built from the Go module
# proxy into .tools/bin/ (git-ignored; the tests look there, then on PATH): needs Go >= 1.26.
# Idempotent; needs root (or sudo) only when something is missing.
#   tools/system-deps.sh          everything the tests need
#   tools/system-deps.sh kafka    only what the local broker needs (the demo)
set -euo pipefail

need=()
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
if [ "${1:-}" != kafka ]; then
  command -v redis-server >/dev/null || need+=(redis-server)
  command -v promtool >/dev/null && command -v prometheus >/dev/null || need+=(prometheus)
  command -v chromium >/dev/null || need+=(chromium fonts-liberation)
  command -v docker-compose >/dev/null || need+=(docker-compose)
fi

HELM_VERSION=v4.3.2
if [ "${1:-}" != kafka ]; then
  tools_bin="$(cd "$(dirname "$0")/.." && pwd)/.tools/bin"
  if [ ! -x "$tools_bin/helm" ] && ! command -v helm >/dev/null; then
    command -v go >/dev/null || { echo "system-deps: helm needs Go (https://go.dev/dl/)" >&2; exit 1; }
    echo "system-deps: building helm $HELM_VERSION into $tools_bin (a few minutes)" >&2
    GOBIN="$tools_bin" go install "helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
  fi
fi

if [ ${#need[@]} -eq 0 ]; then
  exit 0
fi
echo "system-deps: installing ${need[*]}" >&2
if [ "$(id -u)" -eq 0 ]; then sudo=(); else sudo=(sudo); fi
"${sudo[@]}" apt-get update -qq
DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
