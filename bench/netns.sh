#!/usr/bin/env bash
# Creates and deletes the emulated cloud network of the scaling benchmark, all on this host:
# a namespace for the coordinator, one per worker, and a switch namespace whose bridge joins
# them through veth pairs. Every link is shaped in both directions. Nothing is created in the
# host's own namespace and no namespace gets a route, so traffic stays between the addresses
# made here (10.213.0.0/24).
#
#   bench/netns.sh up RATE WORKERS    for example: bench/netns.sh up 1gbit 2
#   bench/netns.sh down               deletes every namespace named gfbench-*
#
# `up` prints one line `shaping: ...` with the queueing discipline it applied. It uses netem
# (RATE plus 0.2 ms of delay) and falls back to tbf (RATE only, no delay) on kernels built
# without netem. `up` deletes what it created when a step fails. Needs root.
set -Eeuo pipefail

readonly PREFIX=gfbench
readonly SWITCH_NS="$PREFIX-sw"
readonly SUBNET=10.213.0
readonly DELAY=0.2ms

usage() {
  echo "usage: $0 up RATE WORKERS | down   (RATE as tc writes it, for example 1gbit or 10gbit)" >&2
  exit 2
}

down() {
  local ns
  for ns in $(ip netns list | awk '{print $1}' | grep "^$PREFIX-" || true); do
    ip netns del "$ns"
  done
}

# Bytes per second of a tc rate such as 1gbit, 500mbit or 10gbit.
rate_bytes_per_second() {
  local rate=$1 number unit
  number=${rate%%[a-z]*}
  unit=${rate#"$number"}
  case $unit in
    gbit) echo $((number * 1000000000 / 8)) ;;
    mbit) echo $((number * 1000000 / 8)) ;;
    *) echo "invalid RATE '$rate': write it as NUMBERmbit or NUMBERgbit, for example 1gbit" >&2; exit 2 ;;
  esac
}

SHAPING=""

# Shapes the egress of one device: netem when the kernel has it, else tbf.
shape() {
  local ns=$1 dev=$2 rate=$3
  if [[ $SHAPING != tbf* ]] && ip netns exec "$ns" tc qdisc add dev "$dev" root netem rate "$rate" delay "$DELAY" limit 100000 2>/dev/null; then
    SHAPING="netem rate $rate delay $DELAY"
    return
  fi
  # TODO: the 0.2 ms delay of the emulated cloud link needs netem, which the kernel of the VMs
  # this project was measured on lacks; rerun the scaling benchmark where netem loads.
  # tbf needs a bucket of at least one timer tick of traffic; 2 ms at the full rate, and
  # never less than one 64 KiB segmentation-offload packet.
  local burst=$(($(rate_bytes_per_second "$rate") / 500))
  if ((burst < 65536)); then burst=65536; fi
  if [[ -z $SHAPING ]]; then
    echo "netem is not available in this kernel (built without CONFIG_NET_SCH_NETEM): shaping with tbf at $rate, without the $DELAY delay" >&2
  fi
  ip netns exec "$ns" tc qdisc add dev "$dev" root tbf rate "$rate" burst "$burst" latency 20ms
  SHAPING="tbf rate $rate burst $burst latency 20ms (no delay: netem unavailable)"
}

# Adds namespace gfbench-NAME with address SUBNET.HOST, linked to the bridge of the switch namespace.
add_node() {
  local name=$1 host=$2 rate=$3
  local ns="$PREFIX-$name" dev="gfb-$name" port="gfb-$name-br"
  ip netns add "$ns"
  ip -n "$ns" link set lo up
  ip link add "$dev" netns "$ns" type veth peer name "$port" netns "$SWITCH_NS"
  ip -n "$ns" addr add "$SUBNET.$host/24" dev "$dev"
  ip -n "$ns" link set "$dev" up
  ip -n "$SWITCH_NS" link set "$port" master gfb-bridge up
  shape "$ns" "$dev" "$rate"
  shape "$SWITCH_NS" "$port" "$rate"
}

up() {
  local rate=$1 workers=$2
  [[ $workers =~ ^[1-9][0-9]?$ ]] || { echo "invalid WORKERS '$workers': expected a whole number from 1 to 99" >&2; exit 2; }
  rate_bytes_per_second "$rate" >/dev/null
  if ip netns list | grep -q "^$PREFIX-"; then
    echo "namespaces named $PREFIX-* already exist; delete them with: $0 down" >&2
    exit 1
  fi
  trap 'echo "network setup failed; deleting the namespaces made so far" >&2; down' ERR
  ip netns add "$SWITCH_NS"
  ip -n "$SWITCH_NS" link set lo up
  ip -n "$SWITCH_NS" link add gfb-bridge type bridge
  ip -n "$SWITCH_NS" link set gfb-bridge up
  add_node coord 1 "$rate"
  local i
  for ((i = 1; i <= workers; i++)); do
    add_node "w$i" $((10 + i)) "$rate"
  done
  trap - ERR
  echo "shaping: $SHAPING"
}

if [[ $(id -u) -ne 0 ]]; then
  echo "$0 needs root to create network namespaces; run it as root" >&2
  exit 1
fi
case ${1:-} in
  up) [[ $# -eq 3 ]] || usage; up "$2" "$3" ;;
  down) [[ $# -eq 1 ]] || usage; down ;;
  *) usage ;;
esac
