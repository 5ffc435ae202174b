#!/usr/bin/env bash
# Install a pinned Helm (v3) from the Go module proxy into a cache dir and print its path.
#
#   scripts/helm.sh            # prints e.g. /root/.cache/callscribe/helm-v3.22.0/bin/helm
#   "$(scripts/helm.sh)" lint helm/callscribe
#
# Idempotent: when the binary is there and reports the pinned version, nothing is built.  The
# first run builds Helm with `go install` (the only way to get it here: no release tarballs);
# progress goes to stderr, stdout is exactly one line, the binary's path.
#
# Environment:
#   CALLSCRIBE_HELM_HOME   install dir (default ~/.cache/callscribe/helm-<version>)
#   GO                     go binary (default: go on PATH, else /usr/local/go/bin/go)
set -euo pipefail

# Helm 3.22.0: the newest v3 release on the Go module proxy when this was pinned; builds with
# Go >= 1.25 (go.mod), here go1.26.  Change it here only (tests read the printed path).
HELM_VERSION="v3.22.0"
HELM_MODULE="helm.sh/helm/v3"
# The Kubernetes version `helm template` and `helm lint` assume without --kube-version: Helm's
# Makefile derives it from its k8s.io/client-go (v0.37.0 in v3.22.0 -> 1.37); a plain
# `go install` would leave Helm's fallback, 1.20, which fails any chart with kubeVersion >= 1.21.
K8S_MAJOR="1"
K8S_MINOR="37"

HELM_HOME="${CALLSCRIBE_HELM_HOME:-$HOME/.cache/callscribe/helm-$HELM_VERSION}"
BIN="$HELM_HOME/bin/helm"
STAMP="$HELM_HOME/.installed"
STAMP_CONTENT="$HELM_MODULE@$HELM_VERSION k8s=$K8S_MAJOR.$K8S_MINOR"

log() { printf '[helm.sh] %s\n' "$*" >&2; }
die() { printf '[helm.sh] ERROR: %s\n' "$*" >&2; exit 1; }

installed_ok() {
    [ -x "$BIN" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_CONTENT" ] || return 1
    # `helm version --template` prints the version it was built with (set by ldflags below)
    [ "$("$BIN" version --template '{{.Version}}' 2>/dev/null)" = "$HELM_VERSION" ]
}

if ! installed_ok; then
    GO_BIN="${GO:-$(command -v go || true)}"
    [ -n "$GO_BIN" ] || GO_BIN=/usr/local/go/bin/go
    [ -x "$GO_BIN" ] || die "no Go toolchain (go on PATH or \$GO); Helm is built from source with go install"
    mkdir -p "$HELM_HOME/bin"
    log "building helm $HELM_VERSION with $("$GO_BIN" version | cut -d' ' -f3) (first run only, a few minutes)"
    start=$(date +%s)
    # -trimpath and no VCS stamping: reproducible, and works outside any git checkout.
    # The ldflags are the ones Helm's own Makefile sets: the real version for `helm version`
    # (a plain `go install` has none) and the default Kubernetes version (see K8S_MINOR).
    tmp_bin="$(mktemp -d "$HELM_HOME/.build.XXXXXX")"
    trap 'rm -rf "$tmp_bin"' EXIT
    GOBIN="$tmp_bin" GOFLAGS="${GOFLAGS:-} -buildvcs=false" CGO_ENABLED=0 \
        "$GO_BIN" install -trimpath \
        -ldflags "-s -w -X $HELM_MODULE/internal/version.version=$HELM_VERSION -X $HELM_MODULE/internal/version.gitTreeState=clean \
                  -X $HELM_MODULE/pkg/lint/rules.k8sVersionMajor=$K8S_MAJOR -X $HELM_MODULE/pkg/lint/rules.k8sVersionMinor=$K8S_MINOR \
                  -X $HELM_MODULE/pkg/chartutil.k8sVersionMajor=$K8S_MAJOR -X $HELM_MODULE/pkg/chartutil.k8sVersionMinor=$K8S_MINOR" \
        "$HELM_MODULE/cmd/helm@$HELM_VERSION" >&2 \
        || die "go install $HELM_MODULE/cmd/helm@$HELM_VERSION failed"
    # move into place only when complete, so an interrupted build never looks installed
    mv -f "$tmp_bin/helm" "$BIN"
    printf '%s' "$STAMP_CONTENT" > "$STAMP"
    installed_ok || die "$BIN does not report $HELM_VERSION ($("$BIN" version --short 2>&1 || true))"
    log "helm $HELM_VERSION installed in $(( $(date +%s) - start )) s"
fi
printf '%s\n' "$BIN"
