#!/usr/bin/env bash
# Run the ASR service on a plain Ray cluster (VMs or bare metal, no Kubernetes).
#
#   deploy/cluster.sh head                 # on the head node (CPU only, no model replica)
#   deploy/cluster.sh worker HEAD_IP:6379  # on each GPU node
#   deploy/cluster.sh deploy               # on the head: serve deploy configs/prod.yaml
#   deploy/cluster.sh status               # on the head: serve status
#   deploy/cluster.sh stop                 # on any node: stop Ray there
#
# Every node needs the same image or environment: this repository installed (`pip install .`)
# with the same Python, Ray and dependency versions (see requirements.lock in
# docs/operations.md). Run the commands from the repository root.
#
# Ports, all of which must stay private to the cluster network (firewall / security group):
#   6379  GCS on the head: workers connect to it.
#   8265  dashboard and Serve REST API: bound to 127.0.0.1 here; reach it with an SSH tunnel
#         (ssh -N -L 8265:127.0.0.1:8265 HEAD) to deploy from elsewhere.
#   8080  metrics export on every node: scraped by Prometheus (deploy/prometheus/).
#   8000  Serve HTTP on every node (HAProxy; proxy_location: EveryNode): the only port a load
#         balancer should reach.
#   30000-31000  the ingress replicas' own HTTP servers, which HAProxy forwards to.
#   8500  Ray's fallback proxy on the head (HAProxy's backup while no ingress replica is up).
#   8404, 9101  HAProxy's statistics page and Prometheus exporter on every node.
#
# Ray token authentication (Ray >= 2.52) is on: RAY_AUTH_MODE=token on every node and for
# `serve deploy`. `head` creates the token (~/.ray/auth_token) if there is none; give the
# same token to each worker and deploying machine, either as that file or as RAY_AUTH_TOKEN
# in the environment (from your secret store; never commit it).
#
# Environment overrides: GCS_PORT, DASHBOARD_PORT, METRICS_PORT, HEAD_NUM_CPUS (set 0 to keep
# ingress replicas off the head), NUM_GPUS (worker), CONFIG, RAY_AUTH_MODE.
set -euo pipefail

GCS_PORT="${GCS_PORT:-6379}"
DASHBOARD_PORT="${DASHBOARD_PORT:-8265}"
METRICS_PORT="${METRICS_PORT:-8080}"
CONFIG="${CONFIG:-configs/prod.yaml}"
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-token}"
# HAProxy in front of the ingress replicas (bundled with ray[serve]), and the proxy guard
# (serve_app/proxy_hooks.py) on every node: body limit where Ray first sees a request, and
# Ray's own errors in the API's JSON shape.
export RAY_SERVE_ENABLE_HA_PROXY="${RAY_SERVE_ENABLE_HA_PROXY:-1}"
export RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH="${RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH:-serve_app.proxy_hooks:proxy_middlewares}"
export ASR_MAX_UPLOAD_BYTES="${ASR_MAX_UPLOAD_BYTES:-104923136}"

usage() {
    cat <<EOF
usage: $(basename "$0") COMMAND [ARGS]

commands:
  head                     start the Ray head: GCS :$GCS_PORT, dashboard 127.0.0.1:$DASHBOARD_PORT,
                           metrics :$METRICS_PORT, no GPU (model replicas run on workers)
  worker ADDRESS [GPUS]    join the cluster at ADDRESS (HEAD_IP:$GCS_PORT) with GPUS GPUs
                           (default: \$NUM_GPUS, else the count nvidia-smi reports)
  deploy [HEAD]            serve deploy $CONFIG to http://HEAD:$DASHBOARD_PORT (default HEAD 127.0.0.1)
  status [HEAD]            serve status of http://HEAD:$DASHBOARD_PORT (default HEAD 127.0.0.1)
  stop                     stop the Ray processes of this node
EOF
}

die() {
    echo "error: $*" >&2
    exit 1
}

have_token() {
    # Prints nothing: the token itself must never reach a terminal log.
    ray get-auth-token >/dev/null 2>&1
}

require_token() {
    if [[ "$RAY_AUTH_MODE" != "token" ]]; then
        return 0
    fi
    have_token || die "no Ray auth token: set RAY_AUTH_TOKEN or copy the head's ~/.ray/auth_token here"
}

cmd_head() {
    if [[ "$RAY_AUTH_MODE" == "token" ]] && ! have_token; then
        ray get-auth-token --generate >/dev/null
        echo "generated a Ray auth token in ~/.ray/auth_token: distribute it to workers and deployers"
    fi
    local extra=()
    if [[ -n "${HEAD_NUM_CPUS:-}" ]]; then
        extra+=(--num-cpus "$HEAD_NUM_CPUS")
    fi
    ray start --head \
        --port "$GCS_PORT" \
        --dashboard-host 127.0.0.1 \
        --dashboard-port "$DASHBOARD_PORT" \
        --metrics-export-port "$METRICS_PORT" \
        --num-gpus 0 \
        ${extra[@]+"${extra[@]}"}
    echo "head started; next: $(basename "$0") worker <this-host-ip>:$GCS_PORT on each GPU node"
}

cmd_worker() {
    local address="${1:-}"
    [[ -n "$address" ]] || { usage >&2; die "worker needs the head's ADDRESS (HEAD_IP:$GCS_PORT)"; }
    local gpus="${2:-${NUM_GPUS:-}}"
    if [[ -z "$gpus" ]]; then
        command -v nvidia-smi >/dev/null || die "no GPU count given and nvidia-smi is missing"
        gpus="$(nvidia-smi -L | grep -c '^GPU ')"
    fi
    [[ "$gpus" =~ ^[0-9]+$ ]] || die "GPU count must be a number, got '$gpus'"
    require_token
    ray start \
        --address "$address" \
        --num-gpus "$gpus" \
        --metrics-export-port "$METRICS_PORT"
}

cmd_deploy() {
    local head="${1:-127.0.0.1}"
    [[ -f "$CONFIG" ]] || die "$CONFIG not found: run from the repository root or set CONFIG"
    require_token
    serve deploy "$CONFIG" --address "http://$head:$DASHBOARD_PORT"
    echo "submitted; the model takes minutes to load: $(basename "$0") status $head"
}

cmd_status() {
    local head="${1:-127.0.0.1}"
    require_token
    serve status --address "http://$head:$DASHBOARD_PORT"
}

main() {
    local command="${1:-}"
    shift || true
    case "$command" in
        head) cmd_head "$@" ;;
        worker) cmd_worker "$@" ;;
        deploy) cmd_deploy "$@" ;;
        status) cmd_status "$@" ;;
        stop) ray stop ;;
        -h | --help | help) usage ;;
        *)
            usage >&2
            exit 2
            ;;
    esac
}

main "$@"
