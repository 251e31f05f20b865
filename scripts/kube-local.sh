#!/usr/bin/env bash
# A real Kubernetes control plane on 127.0.0.1 for the chart tests (make kube-test):
# etcd + kube-apiserver + kube-controller-manager + kube-scheduler, with kwok as a fake node that
# marks pods Running/Ready (it runs no process; the image test covers the containers).
#
#   scripts/kube-local.sh build        build (or reuse) the binaries, cached under ~/.cache/gputel
#   scripts/kube-local.sh up [DIR]     start everything; state, certificates, logs and the
#                                      kubeconfig live in DIR (default ~/.cache/gputel/kube-run)
#   scripts/kube-local.sh down [DIR]   stop what `up` started (by the pids it recorded) and clean DIR
#   scripts/kube-local.sh env [DIR]    print `export KUBECONFIG=...`
#
# Why built from Go modules: no kind node image or k3s binary is obtainable here. `go install` of
# kube-apiserver fails (its go.mod replaces every k8s.io staging module with a local path), so a
# small wrapper module requires k8s.io/kubernetes and replaces each staging module with its
# published v0.<minor>.<patch>. etcd's server module has local replaces too: same trick.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.34.4}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.5}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
CACHE="${GPUTEL_CACHE:-$HOME/.cache/gputel}"
BIN="$CACHE/kube-$KUBE_VERSION-etcd-$ETCD_VERSION-kwok-$KWOK_VERSION"
GO="${GO:-go}"
log() { printf 'kube-local: %s\n' "$*" >&2; }

# --- build -------------------------------------------------------------------------------------

staging_replaces() {  # kubernetes' own go.mod -> "replace k8s.io/x => k8s.io/x v0.34.4" lines
  local gomod staging="v0.${KUBE_VERSION#v1.}"
  gomod="$("$GO" mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  sed -n 's#^\s*\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' "$gomod" \
    | while read -r mod; do printf 'replace %s => %s %s\n' "$mod" "$mod" "$staging"; done
}

build_kube() {
  local work="$1"
  mkdir -p "$work/kube" && cd "$work/kube"
  cat >go.mod <<EOF
module gputel.local/kubebuild

go 1.24

require k8s.io/kubernetes $KUBE_VERSION
EOF
  staging_replaces >>go.mod
  cat >tools.go <<'EOF'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
)
EOF
  "$GO" mod tidy -e >/dev/null 2>&1 || "$GO" mod tidy
  local minor="${KUBE_VERSION#v1.}"
  minor="${minor%%.*}"
  local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION"
  ld+=" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor"
  for cmd in kube-scheduler kube-controller-manager kube-apiserver; do
    log "building $cmd $KUBE_VERSION"
    CGO_ENABLED=0 "$GO" build -tags tools -trimpath -ldflags "$ld" -o "$BIN.tmp/$cmd" "k8s.io/kubernetes/cmd/$cmd"
  done
}

build_etcd() {
  local work="$1"
  mkdir -p "$work/etcd" && cd "$work/etcd"
  local gomod
  gomod="$("$GO" mod download -json "go.etcd.io/etcd/server/v3@$ETCD_VERSION" | sed -n 's/.*"GoMod": "\(.*\)",*/\1/p')"
  {
    printf 'module gputel.local/etcdbuild\n\ngo 1.24\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION"
    sed -n 's#^\s*\(go.etcd.io/etcd/[a-z0-9/]*\) => \.\./.*#\1#p' "$gomod" \
      | while read -r mod; do printf 'replace %s => %s %s\n' "$mod" "$mod" "$ETCD_VERSION"; done
  } >go.mod
  cat >main.go <<'EOF'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
EOF
  "$GO" mod tidy
  log "building etcd $ETCD_VERSION"
  CGO_ENABLED=0 "$GO" build -trimpath -ldflags "-s -w" -o "$BIN.tmp/etcd" .
}

build_kwok() {
  log "building kwok $KWOK_VERSION"
  GOBIN="$BIN.tmp" CGO_ENABLED=0 "$GO" install -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok does nothing without its stage definitions ("no stages found"): keep them with the binary.
  local dir
  dir="$("$GO" mod download -json "sigs.k8s.io/kwok@$KWOK_VERSION" | sed -n 's/.*"Dir": "\(.*\)",*/\1/p')"
  mkdir -p "$BIN.tmp/kwok-stages"
  for stage in node-initialize node-heartbeat-with-lease pod-ready pod-complete pod-delete; do
    find "$dir/kustomize/stage" -name "$stage.yaml" -exec cp {} "$BIN.tmp/kwok-stages/" \;
  done
  [[ -n "$(ls "$BIN.tmp/kwok-stages")" ]] || { log "kwok stage definitions not found"; exit 1; }
}

cmd_build() {
  if [[ -x "$BIN/kube-apiserver" && -x "$BIN/etcd" && -x "$BIN/kwok" ]]; then
    log "binaries cached in $BIN"
    return
  fi
  command -v "$GO" >/dev/null || { log "go is needed to build the control plane"; exit 1; }
  local start=$SECONDS
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
  mkdir -p "$BIN.tmp"
  [[ -x "$BIN.tmp/etcd" ]] || (build_etcd "$WORK")
  [[ -x "$BIN.tmp/kwok" ]] || (build_kwok)
  [[ -x "$BIN.tmp/kube-apiserver" ]] || (build_kube "$WORK")
  rm -rf "$BIN" && mv "$BIN.tmp" "$BIN"
  log "built in $((SECONDS - start)) s into $BIN"
}

# --- up / down ---------------------------------------------------------------------------------
# Every listener on 127.0.0.1; ports movable with KUBE_PORT_BASE so two runs can coexist.
PORT_BASE="${KUBE_PORT_BASE:-16400}"
ETCD_PORT=$((PORT_BASE + 79)) ETCD_PEER_PORT=$((PORT_BASE + 80)) ETCD_METRICS_PORT=$((PORT_BASE + 81))
API_PORT=$((PORT_BASE + 43)) KCM_PORT=$((PORT_BASE + 57)) SCHED_PORT=$((PORT_BASE + 59))
KWOK_PORT=$((PORT_BASE + 47))
# kwok's pod IPs: fake addresses nothing routes to (no kubelet, no kube-proxy). A loopback range
# would keep Services without endpoints (the API refuses loopback endpoints) and make the
# EndpointSlice controller warn.
POD_CIDR="${KUBE_POD_CIDR:-10.244.0.0/24}"

certs() {  # CA, serving cert (SAN 127.0.0.1 + the kubernetes Service), admin client cert, SA keys
  local d="$1/pki"
  mkdir -p "$d" && cd "$d"
  openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.crt -days 7 -subj /CN=gputel-test-ca 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout apiserver.key -out apiserver.csr -subj /CN=kube-apiserver 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' >san.ext
  openssl x509 -req -in apiserver.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -extfile san.ext -out apiserver.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -keyout admin.key -out admin.csr -subj "/O=system:masters/CN=admin" 2>/dev/null
  openssl x509 -req -in admin.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 7 -out admin.crt 2>/dev/null
  openssl genrsa -out sa.key 2048 2>/dev/null
  openssl rsa -in sa.key -pubout -out sa.pub 2>/dev/null
  chmod 600 ./*.key
  cat >"$1/admin.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster: {server: "https://127.0.0.1:$API_PORT", certificate-authority: "$d/ca.crt"}
users:
  - name: admin
    user: {client-certificate: "$d/admin.crt", client-key: "$d/admin.key"}
contexts:
  - name: local
    context: {cluster: local, user: admin}
current-context: local
EOF
}

spawn() {  # name, argv...: background, own session, log and pid in the run folder
  local name="$1"
  shift
  setsid "$@" >"$RUN/$name.log" 2>&1 </dev/null &
  echo $! >"$RUN/$name.pid"
}

wait_for() {  # description, seconds, command...
  local what="$1" secs="$2"
  shift 2
  for _ in $(seq $((secs * 4))); do
    "$@" >/dev/null 2>&1 && return
    sleep 0.25
  done
  log "$what not ready after ${secs}s; logs in $RUN"
  tail -n 20 "$RUN"/*.log >&2 || true
  exit 1
}

kubectl_() { "$KUBECTL" --kubeconfig "$RUN/admin.kubeconfig" "$@"; }

# The fake node kwok manages, and a default StorageClass (the controller-manager's hostPath
# provisioner). WaitForFirstConsumer like kind's and most clouds' default classes: with Immediate,
# the scheduler's first try of a StatefulSet pod races the claim's binding (FailedScheduling).
cluster_objects() {
  kubectl_ apply -f - >/dev/null <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-0
  annotations: {kwok.x-k8s.io/node: fake, node.alpha.kubernetes.io/ttl: "0"}
  labels: {kubernetes.io/hostname: kwok-node-0, kubernetes.io/os: linux, kubernetes.io/arch: amd64, type: kwok}
spec: {}
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 500Gi}
  capacity: {cpu: "32", memory: 256Gi, pods: "110", ephemeral-storage: 500Gi}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: hostpath
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: WaitForFirstConsumer
EOF
}

cmd_up() {
  RUN="${1:-$CACHE/kube-run}"
  # kubectl v1.34 from scripts/install-tools.sh first: Debian's kubernetes-client is 1.20.
  local tools_kubectl="$CACHE/tools/current/kubectl"
  [[ -x "$tools_kubectl" ]] || tools_kubectl="$(command -v kubectl || true)"
  KUBECTL="${KUBECTL:-$tools_kubectl}"
  [[ -x "$KUBECTL" ]] || { log "kubectl not found: run scripts/install-tools.sh"; exit 1; }
  if [[ -f "$RUN/etcd.pid" ]] && kill -0 "$(cat "$RUN/etcd.pid")" 2>/dev/null; then
    log "already up (run folder $RUN); \`$0 down $RUN\` first"
    exit 1
  fi
  rm -rf "$RUN" && mkdir -p "$RUN" && RUN="$(cd "$RUN" && pwd)"
  local start=$SECONDS p="$RUN/pki"
  (certs "$RUN")
  spawn etcd "$BIN/etcd" --name local --data-dir "$RUN/etcd" --unsafe-no-fsync \
    --listen-client-urls "http://127.0.0.1:$ETCD_PORT" --advertise-client-urls "http://127.0.0.1:$ETCD_PORT" \
    --listen-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" --initial-advertise-peer-urls "http://127.0.0.1:$ETCD_PEER_PORT" \
    --initial-cluster "local=http://127.0.0.1:$ETCD_PEER_PORT" --listen-metrics-urls "http://127.0.0.1:$ETCD_METRICS_PORT"
  spawn kube-apiserver "$BIN/kube-apiserver" --etcd-servers "http://127.0.0.1:$ETCD_PORT" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$API_PORT" \
    --client-ca-file "$p/ca.crt" --tls-cert-file "$p/apiserver.crt" --tls-private-key-file "$p/apiserver.key" \
    --service-account-key-file "$p/sa.pub" --service-account-signing-key-file "$p/sa.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-cluster-ip-range 10.96.0.0/16 --endpoint-reconciler-type none --authorization-mode RBAC
  wait_for kube-apiserver 60 kubectl_ get --raw /readyz
  # --node-monitor-grace-period: kwok's heartbeats can lag on a loaded 2-core CI machine; the fake
  # node must not be marked NotReady (and its pods evicted) for that.
  spawn kube-controller-manager "$BIN/kube-controller-manager" --kubeconfig "$RUN/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$KCM_PORT" --leader-elect=false \
    --enable-hostpath-provisioner=true --root-ca-file "$p/ca.crt" \
    --node-monitor-grace-period 5m \
    --service-account-private-key-file "$p/sa.key" --use-service-account-credentials=false \
    --cluster-signing-cert-file "$p/ca.crt" --cluster-signing-key-file "$p/ca.key"
  spawn kube-scheduler "$BIN/kube-scheduler" --kubeconfig "$RUN/admin.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$SCHED_PORT" --leader-elect=false
  local stages=()
  for f in "$BIN"/kwok-stages/*.yaml; do stages+=(--config "$f"); done
  spawn kwok "$BIN/kwok" --kubeconfig "$RUN/admin.kubeconfig" "${stages[@]}" \
    --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --node-ip 127.0.0.1 --cidr "$POD_CIDR" --server-address "127.0.0.1:$KWOK_PORT"
  cluster_objects
  # The ServiceAccount controller made the default ServiceAccount: the controller-manager works.
  wait_for "kube-controller-manager" 60 kubectl_ -n default get serviceaccount default
  wait_for "the kwok node" 60 kubectl_ wait --for=condition=Ready node/kwok-node-0 --timeout=1s
  log "up in $((SECONDS - start)) s: export KUBECONFIG=$RUN/admin.kubeconfig"
}

cmd_down() {
  RUN="${1:-$CACHE/kube-run}"
  [[ -d "$RUN" ]] || return 0
  local name pid path
  # The hostPath provisioner writes under /tmp/hostpath_pv; remove this cluster's volumes.
  if [[ -n "${KUBECTL:-}" || -x "$CACHE/tools/current/kubectl" ]]; then
    for path in $("${KUBECTL:-$CACHE/tools/current/kubectl}" --kubeconfig "$RUN/admin.kubeconfig" \
      --request-timeout 5s get pv -o jsonpath='{.items[*].spec.hostPath.path}' 2>/dev/null); do
      if [[ "$path" == /tmp/hostpath_pv/* ]]; then rm -rf "$path"; fi
    done
  fi
  for name in kwok kube-scheduler kube-controller-manager kube-apiserver etcd; do
    [[ -f "$RUN/$name.pid" ]] || continue
    pid="$(cat "$RUN/$name.pid")"
    kill "$pid" 2>/dev/null || continue
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$RUN"
  log "down"
}

main() {
  local cmd="${1:-}"
  shift || true
  case "$cmd" in
    build) cmd_build ;;
    up) cmd_build && cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    env) printf 'export KUBECONFIG=%s/admin.kubeconfig\n' "${1:-$CACHE/kube-run}" ;;
    *) sed -n '2,12p' "$0" >&2; exit 2 ;;
  esac
}

main "$@"
