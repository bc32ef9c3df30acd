#!/usr/bin/env bash
# Builds the Kubernetes control plane the k8s tests run against (test/k8senv): kube-apiserver,
# kube-scheduler, kube-controller-manager (v1.37.2) and etcd (the version go.mod pins) from this
# tools module, and kwok (v0.8.0) with go install, all from the Go module proxy, into OUT_DIR
# (default: bin/k8s at the project root). Nothing is downloaded at test time.
#
# Usage: hack/k8s/build.sh [OUT_DIR]
#
# Idempotent: a binary that exists and reports the expected version is kept, so a warm run takes a
# second or two. A cold run takes about 7 minutes on 2 cores and ~3 GB of memory (the apiserver
# and the controller-manager are the big ones). Each binary is written under a temporary name and
# renamed, so an interrupted build never leaves a half-written binary that looks current.
set -euo pipefail

K8S_VERSION=v1.37.2
KWOK_VERSION=v0.8.0

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
out=${1:-$here/../../bin/k8s}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$here"

etcd_version=$(awk '$1 == "go.etcd.io/etcd/server/v3" { print $2 }' go.mod)
if [[ -z $etcd_version ]]; then
  echo "build.sh: go.etcd.io/etcd/server/v3 is not required in $here/go.mod" >&2
  exit 1
fi

# current BIN WANT: the binary exists and its --version output contains WANT.
current() {
  [[ -x $out/$1 ]] && "$out/$1" --version 2>/dev/null | grep -F -- "$2" >/dev/null
}

# build BIN PACKAGE LDFLAGS: go build into a temporary name, then rename.
build() {
  local start=$SECONDS
  echo "build.sh: building $1"
  go build -trimpath -buildvcs=false -ldflags="$3" -o "$out/.$1.tmp" "$2"
  mv -f "$out/.$1.tmp" "$out/$1"
  echo "build.sh: $1 built in $((SECONDS - start)) s"
}

# check BIN WANT: a binary just built must report its version, or the tests would start the wrong one.
check() {
  current "$1" "$2" || {
    echo "build.sh: $out/$1 does not report \"$2\"" >&2
    exit 1
  }
}

minor=${K8S_VERSION#v1.}
minor=${minor%%.*}
ld="-s -w"
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  ld="$ld -X $p.gitVersion=$K8S_VERSION -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean"
done

for c in kube-apiserver kube-scheduler kube-controller-manager; do
  if current "$c" "Kubernetes $K8S_VERSION"; then
    echo "build.sh: $c $K8S_VERSION is current"
  else
    build "$c" "k8s.io/kubernetes/cmd/$c" "$ld"
    check "$c" "Kubernetes $K8S_VERSION"
  fi
done

if current etcd "etcd Version: ${etcd_version#v}"; then
  echo "build.sh: etcd $etcd_version is current"
else
  build etcd ./cmd/etcd "-s -w"
  check etcd "etcd Version: ${etcd_version#v}"
fi

if current kwok "kwok version $KWOK_VERSION "; then
  echo "build.sh: kwok $KWOK_VERSION is current"
else
  start=$SECONDS
  echo "build.sh: building kwok"
  tmp=$(mktemp -d "$out/.kwok.XXXXXX")
  GOBIN=$tmp go install -trimpath -ldflags="-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  mv -f "$tmp/kwok" "$out/kwok"
  rmdir "$tmp"
  echo "build.sh: kwok built in $((SECONDS - start)) s"
  check kwok "kwok version $KWOK_VERSION "
fi

echo "build.sh: $out holds Kubernetes $K8S_VERSION, etcd $etcd_version, kwok $KWOK_VERSION"
