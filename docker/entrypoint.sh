#!/usr/bin/env bash
# moe-swarm container entrypoint (installed as /usr/local/bin/moe-swarm-entrypoint).
#
#   train [overrides...]    exec moe-swarm-train; the lines of MOE_SWARM_OVERRIDES come first
#   serve [args...]         exec moe-swarm-serve
#   launch [args...]        exec moe-swarm-launch
#   <command> [args...]     exec the command as given (python -m ..., bash, ...)
#
# For `train` and other commands it first puts this pod's place in the run into the environment,
# with the same rules as moe_swarm.scale.cluster.resolve_node_rank:
#   NODE_RANK if set, else JOB_COMPLETION_INDEX (Kubernetes Indexed Job), else, when NUM_NODES > 1,
#   the hostname's numeric suffix (trainer-3 -> 3; FKS cannot pass JOB_COMPLETION_INDEX), else 0
# and removes the rank variables of other launchers (torchrun, SLURM) that would make Lightning
# pick another cluster environment. `serve` and `launch` are left alone: they are not ranks.
#
# Started as root (Fly Machines mount volumes owned by root), it hands MOE_SWARM_VOLUME_DIR to
# MOE_SWARM_USER and drops to that user before exec. Started as that user (Kubernetes runAsUser),
# it just execs.
set -euo pipefail

# Keep in sync with moe_swarm.scale.cluster.STRAY_RANK_VARS (tests/test_deploy_docker.py checks it).
readonly STRAY_RANK_VARS=(
  TORCHELASTIC_RUN_ID RANK WORLD_SIZE LOCAL_RANK LOCAL_WORLD_SIZE
  GROUP_RANK GROUP_WORLD_SIZE ROLE_RANK ROLE_WORLD_SIZE SLURM_NTASKS
)

die() {
  printf 'moe-swarm-entrypoint: %s\n' "$*" >&2
  exit 64
}

is_uint() {
  [[ "$1" =~ ^[0-9]+$ ]]
}

# Prints this node's rank or dies with the reason and the fix.
resolve_node_rank() {
  local num_nodes="$1" name value host
  for name in NODE_RANK JOB_COMPLETION_INDEX; do
    value="${!name:-}"
    if [[ -n "${value//[[:space:]]/}" ]]; then
      is_uint "$value" || die "${name}='${value}' is not a node index; it must be 0..$((num_nodes - 1))."
      printf '%d\n' "$((10#$value))"
      return
    fi
  done
  if ((num_nodes == 1)); then
    printf '0\n'
    return
  fi
  host="${HOSTNAME:-$(hostname)}"
  host="${host%%.*}"
  if [[ "$host" =~ ^.+-([0-9]+)$ ]]; then
    printf '%d\n' "$((10#${BASH_REMATCH[1]}))"
    return
  fi
  die "cannot tell this node's rank: NUM_NODES=${num_nodes}, NODE_RANK and JOB_COMPLETION_INDEX are" \
    "unset, and hostname '${host}' does not end in '-<index>' (like 'trainer-3')." \
    "Set NODE_RANK=0..$((num_nodes - 1)) on each node, or run the pods as a Kubernetes Indexed Job."
}

prepare_rank_env() {
  local num_nodes="${NUM_NODES:-1}" name rank
  if ! is_uint "$num_nodes" || ((10#$num_nodes < 1)); then
    die "NUM_NODES='${num_nodes}' must be a positive integer."
  fi
  num_nodes=$((10#$num_nodes))
  rank="$(resolve_node_rank "$num_nodes")"
  ((rank < num_nodes)) || die "node rank ${rank} is outside 0..$((num_nodes - 1)) for NUM_NODES=${num_nodes}:" \
    "this pod is one too many, or NUM_NODES is too small on it."
  for name in "${STRAY_RANK_VARS[@]}"; do
    unset "$name"
  done
  export NODE_RANK="$rank"
}

# Runs "$@" as MOE_SWARM_USER when started as root, else as the current user.
run() {
  local user="${MOE_SWARM_USER:-}" data_dir="${MOE_SWARM_VOLUME_DIR:-/data}"
  if [[ "$(id -u)" == 0 && -n "$user" ]]; then
    if [[ -d "$data_dir" && "$(stat -c %U "$data_dir")" != "$user" ]]; then
      # Top level only: a fresh volume is root-owned; files inside keep their owners.
      chown "${user}:$(id -g "$user")" "$data_dir"
    fi
    exec setpriv --reuid="$(id -u "$user")" --regid="$(id -g "$user")" --init-groups -- "$@"
  fi
  exec "$@"
}

main() {
  local command="${1:-serve}" line
  local -a overrides=()
  if (($# > 0)); then
    shift
  fi
  case "$command" in
    train)
      prepare_rank_env
      # One Hydra override per line (trimmed); blank lines and lines starting with '#' are skipped.
      while read -r line; do
        if [[ -n "${line//[[:space:]]/}" && ! "$line" =~ ^[[:space:]]*# ]]; then
          overrides+=("$line")
        fi
      done <<<"${MOE_SWARM_OVERRIDES:-}"
      if [[ -n "${MOE_SWARM_MAX_RESTARTS:-}" ]]; then
        # Elastic (moe-swarm-launch --max-restarts N): torchrun starts one rank per device and restarts
        # them all from the last checkpoint when one dies; cluster=torchelastic reads its variables.
        is_uint "$MOE_SWARM_MAX_RESTARTS" || die "MOE_SWARM_MAX_RESTARTS='${MOE_SWARM_MAX_RESTARTS}' must be an integer >= 0."
        run python -m torch.distributed.run --nnodes="${NUM_NODES:-1}" --nproc-per-node="${DEVICES:-1}" \
          --rdzv-backend=c10d --rdzv-endpoint="${MASTER_ADDR:-127.0.0.1}:${MASTER_PORT:-29500}" \
          --rdzv-id="${MOE_SWARM_RDZV_ID:-moe-swarm}" --max-restarts="$MOE_SWARM_MAX_RESTARTS" \
          -m moe_swarm.cli.train "${overrides[@]}" "$@"
      fi
      run moe-swarm-train "${overrides[@]}" "$@"
      ;;
    serve) run moe-swarm-serve "$@" ;;
    launch) run moe-swarm-launch "$@" ;;
    *)
      prepare_rank_env
      run "$command" "$@"
      ;;
  esac
}

main "$@"
