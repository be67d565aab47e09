#!/usr/bin/env bash
# Build the test peers (OPA, an OpenTelemetry Collector, telemetrygen, h2spec) from their pinned
# Go modules into ${OTLP_SIDECAR_PEERS_DIR:-$HOME/.cache/otlp-sidecar/peers}/bin, once per version:
# each binary has a stamp (hash of its module's go.mod, go.sum, sources and the Go version) and is
# rebuilt only when that changes. Then the OpenTelemetry JS SDK's exporters (peer "js", from
# tests/peers/js/package-lock.json, with npm ci into $dest/js) where npm is installed.
# Usage: build.sh [peer...]   (default: all)
set -euo pipefail
shopt -s nullglob
here="$(cd "$(dirname "$0")" && pwd)"
dest="${OTLP_SIDECAR_PEERS_DIR:-$HOME/.cache/otlp-sidecar/peers}"
go_min=26  # the modules' go.mod say go 1.26

# name  module-folder  package
peers=(
  "opa opa github.com/open-policy-agent/opa"
  "otelcol otelcol ."
  "telemetrygen telemetrygen github.com/open-telemetry/opentelemetry-collector-contrib/cmd/telemetrygen"
  "h2spec h2spec github.com/summerwind/h2spec/cmd/h2spec"
)

if ! command -v go >/dev/null; then
  echo "peers: Go 1.$go_min or later is needed (https://go.dev/dl/); not found on PATH" >&2
  exit 2
fi
minor="$(go env GOVERSION | sed -E 's/^go1\.([0-9]+).*/\1/')"
if [ "${minor:-0}" -lt "$go_min" ]; then
  echo "peers: Go 1.$go_min or later is needed, found $(go env GOVERSION)" >&2
  exit 2
fi

wanted=("$@")
want() { [ "${#wanted[@]}" -eq 0 ] || [[ " ${wanted[*]} " == *" $1 "* ]]; }
mkdir -p "$dest/bin" "$dest/stamps"
for line in "${peers[@]}"; do
  read -r name dir pkg <<<"$line"
  want "$name" || continue
  sources=("$here/$dir/go.mod" "$here/$dir/go.sum" "$here/$dir"/*.go)
  stamp="$( (go env GOVERSION; echo "$pkg"; cat "${sources[@]}") | sha256sum | cut -c1-16)"
  if [ -x "$dest/bin/$name" ] && [ "$(cat "$dest/stamps/$name" 2>/dev/null)" = "$stamp" ]; then
    echo "peers: $name up to date ($dest/bin/$name)"
    continue
  fi
  echo "peers: building $name ..."
  start=$SECONDS
  (cd "$here/$dir" && nice -n 10 go build -mod=readonly -buildvcs=false -trimpath \
      -o "$dest/bin/$name.tmp" "$pkg")
  mv "$dest/bin/$name.tmp" "$dest/bin/$name"
  echo "$stamp" >"$dest/stamps/$name"
  echo "peers: built $name in $((SECONDS - start)) s ($dest/bin/$name)"
done

# the OpenTelemetry JS SDK's OTLP exporters (optional where there is no npm)
if want js; then
  if ! command -v npm >/dev/null; then
    echo "peers: npm not found: the JS SDK peer is not installed (its tests skip)" >&2
  else
    js_files=("$here/js/package.json" "$here/js/package-lock.json" "$here/js/send_spans.cjs")
    stamp="$( (node --version; cat "${js_files[@]}") | sha256sum | cut -c1-16)"
    if [ -d "$dest/js/node_modules" ] && [ "$(cat "$dest/stamps/js" 2>/dev/null)" = "$stamp" ]; then
      echo "peers: js up to date ($dest/js)"
    else
      echo "peers: installing js ..."
      start=$SECONDS
      rm -rf "$dest/js" && mkdir -p "$dest/js"
      cp "${js_files[@]}" "$dest/js/"
      (cd "$dest/js" && nice -n 10 npm ci --no-audit --no-fund --ignore-scripts --loglevel=error)
      echo "$stamp" >"$dest/stamps/js"
      echo "peers: installed js in $((SECONDS - start)) s ($dest/js)"
    fi
  fi
fi
