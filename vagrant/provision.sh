#!/usr/bin/env bash
# Provisions one VM of the Vagrant lab (see ../Vagrantfile). Runs inside the VM as root, so it may
# change that VM's own network: the VM is the lab.
#   provision.sh router ADDR
#   provision.sh node ADDR INDEX GO_VERSION MODE
set -euo pipefail
role=$1 addr=$2
lan_if=$(ip -o -4 addr show | awk -v a="$addr" '$4 ~ "^"a"/" {print $2; exit}')
export DEBIAN_FRONTEND=noninteractive
sysctl -qw net.ipv4.ip_forward=1

if [ "$role" = router ]; then
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends bird2 curl arping socat >/dev/null
  # The LAN's client address from DESIGN.md lives on the router VM too.
  ip addr replace 10.0.0.1/24 dev "$lan_if"
  cat >/etc/bird/bird.conf <<BIRD
router id $addr;
protocol device {}
protocol kernel { ipv4 { export all; }; merge paths on; }
template bgp node { local as 64512; passive on; hold time 9; ipv4 { import all; export none; }; }
protocol bgp node01 from node { neighbor 10.0.0.151 as 64513; }
protocol bgp node02 from node { neighbor 10.0.0.152 as 64513; }
protocol bgp node03 from node { neighbor 10.0.0.153 as 64513; }
BIRD
  systemctl restart bird
  for i in 1 2 3; do ip route replace "10.244.$i.0/24" via "10.0.0.15$i"; done
  exit 0
fi

index=$3 go_version=$4 mode=$5
apt-get update -qq
apt-get install -y -qq --no-install-recommends ca-certificates curl git make gcc socat \
  iptables nftables conntrack ipvsadm iproute2 >/dev/null
if ! /usr/local/go/bin/go version 2>/dev/null | grep -q "go$go_version "; then
  curl -fsSL "https://go.dev/dl/go$go_version.linux-amd64.tar.gz" | tar -C /usr/local -xz
fi
cd /vagrant
GOFLAGS=-buildvcs=false /usr/local/go/bin/go build -o /usr/local/bin/nodeagent ./cmd/nodeagent

# Pods: the seed EndpointSlices name a node for every address; this node builds a namespace per
# address it hosts, behind cni0 (10.244.INDEX.1/24), each answering like the tutorial's demoapp.
ip link show cni0 >/dev/null 2>&1 || ip link add cni0 type bridge
ip addr replace "10.244.$index.1/24" dev cni0
ip link set cni0 up
for i in 1 2 3; do
  [ "$i" = "$index" ] || ip route replace "10.244.$i.0/24" via "10.0.0.15$i"
done
name=$(hostname)
awk '/addresses:/ {gsub(/[^0-9.,]/, ""); addr=$0} /nodeName:/ {print addr, $2}' examples/*.yaml |
  awk -v n="$name" '$2 == n {print $1}' | tr ',' '\n' | sort -u |
  while read -r pod; do
    ns="pod-${pod//./-}"
    ip netns add "$ns" 2>/dev/null || continue
    ip link add "veth${pod##*.}" type veth peer name eth0 netns "$ns"
    ip link set "veth${pod##*.}" master cni0 up
    ip -n "$ns" addr add "$pod/24" dev eth0
    ip -n "$ns" link set eth0 up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "10.244.$index.1"
    for port in 80 6379 8009 8080; do
      ip netns exec "$ns" setsid socat "TCP-LISTEN:$port,fork,reuseaddr" \
        SYSTEM:"printf 'HTTP/1.0 200 OK\\r\\n\\r\\niKubernetes demoapp v1.0 !! ClientIP: %s, ServerName: $ns, ServerIP: $pod!\\n' \$SOCAT_PEERADDR" \
        </dev/null >/dev/null 2>&1 &
    done
  done

# The memberlist secret the Vagrantfile passes in the environment, readable by root only.
install -d -m 0700 /etc/nodeagent
(umask 077; printf '%s' "${NODEAGENT_MEMBERLIST_SECRET:?the Vagrantfile passes the memberlist secret}" >/etc/nodeagent/memberlist-secret)

cat >/etc/systemd/system/nodeagent.service <<UNIT
[Unit]
Description=nodeagent (kube-proxy and MetalLB speaker) on /vagrant/examples
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/usr/local/bin/nodeagent run --manifests /vagrant/examples --hostname-override $name --proxy-mode $mode --cluster-cidr 10.244.0.0/16 --memberlist-bind $addr --memberlist-join 10.0.0.151,10.0.0.152,10.0.0.153 --memberlist-secret-file /etc/nodeagent/memberlist-secret
Restart=always

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now nodeagent
systemctl restart nodeagent
