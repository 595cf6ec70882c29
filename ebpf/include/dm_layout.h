/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Map key/value layouts shared by the eBPF programs and the dataplane.
 *
 * This header is the ONE definition of these layouts. It is mirrored by
 * #[repr(C)] structs in dataplane/src/bpf/maps.rs, and the test
 * dataplane/tests/bpf_layout.rs compiles a C program from this header and
 * checks every size and field offset against the Rust side.
 *
 * Plain C (linux/types.h only) so that it compiles both for the BPF target
 * and for the host. All addresses and ports are in network byte order unless
 * a field name says otherwise; everything else is host order.
 *
 * Only explicit padding: every struct is laid out so the compiler inserts
 * none, and the `_pad` fields are zero.
 */
#ifndef DM_LAYOUT_H
#define DM_LAYOUT_H

#include <linux/types.h>

/* Capacity of the per-pod maps, and the counter slot for traffic that
 * cannot be attributed to a pod (unknown representor, uplink noise). */
#define DM_MAX_PODS 4096
#define DM_SLOT_UNATTRIBUTED DM_MAX_PODS
#define DM_COUNTER_SLOTS (DM_MAX_PODS + 1)

/* Short port lists in an endpoint; 0 = unused entry. */
#define DM_MAX_PORTS 8

/* Per-pod LPM entries for outbound capture: at most this many CIDRs per pod. */
#define DM_MAX_CIDRS (DM_MAX_PODS * 8)

/* dm_endpoint.flags */
#define DM_EP_MESHED (1u << 0)
/* Outbound capture set is the pod's own CIDR list (scope = slot + 1 in
 * dm_out_cidrs); when clear, the node-wide set (scope 0) applies. */
#define DM_EP_CUSTOM_OUT_CIDRS (1u << 1)
/* Inbound capture limited to in_capture_ports (otherwise every port). */
#define DM_EP_IN_PORT_LIST (1u << 2)
/* The pod has an IPv6 address (ipv6 below). */
#define DM_EP_IPV6 (1u << 3)

/* A local pod, as seen by the dataplane. Value of dm_ep_ifindex (key:
 * representor ifindex, __u32), of dm_ep_ip (key: IPv4, __be32) and of
 * dm_ep_ip6 (key: IPv6, 16 bytes). */
struct dm_endpoint {
	__u32 ifindex;        /* representor ifindex in the DPU netns */
	__be32 ipv4;          /* the pod's only accepted source address */
	__u8 mac[6];          /* the pod's only accepted source MAC */
	__u16 flags;          /* DM_EP_* */
	__u32 slot;           /* counter slot, < DM_MAX_PODS */
	__u32 vf_index;
	__be16 in_capture_ports[DM_MAX_PORTS];  /* with DM_EP_IN_PORT_LIST */
	__be16 in_exclude_ports[DM_MAX_PORTS];
	__be16 out_exclude_ports[DM_MAX_PORTS];
	__u8 ipv6[16];        /* with DM_EP_IPV6: the pod's accepted IPv6 source */
};

/* Key of dm_ep_ip6: a pod's IPv6 address, as on the wire. */
struct dm_ip6_key {
	__u8 addr[16];
};

/* dm_node_config.mode */
#define DM_MODE_UNSET 0
#define DM_MODE_UNDERLAY 1
#define DM_MODE_OVERLAY 2

/* The node's network, one entry (key 0) in the dm_node array. */
struct dm_node_config {
	__be32 gateway_ipv4;   /* first address of the pod CIDR */
	__be32 pod_cidr_ipv4;
	__u32 pod_cidr_prefix; /* prefix length */
	__u8 gateway_mac[6];   /* locally administered; answered by ARP */
	__u8 mode;             /* DM_MODE_* */
	__u8 ready;            /* 0 until the node network is set */
	__u32 uplink_ifindex;
	__be32 underlay_ipv4;
	__be16 outbound_port;  /* dpu-proxy outbound listener, e.g. 15001 */
	__be16 inbound_port;   /* dpu-proxy inbound listener, e.g. 15006 */
	__u32 steer_mark;      /* skb->mark for packets delivered to local sockets */
	__u32 vni;
	__u32 tunnel_ifindex;  /* collect_md VXLAN device (overlay) */
	__u8 gateway_ipv6[16]; /* first address of the IPv6 pod CIDR; zero: no IPv6 */
};

/* Key of dm_out_cidrs, an LPM trie. prefixlen counts the 32 bits of scope
 * plus the address prefix: scope 0 = node-wide captured destinations
 * (service CIDRs, pod CIDRs), scope slot+1 = one pod's own list. */
struct dm_cidr_key {
	__u32 prefixlen;
	__u32 scope;           /* always matched whole, so byte order is moot */
	__be32 addr;
};

/* Value of dm_out_cidrs. */
#define DM_CIDR_CAPTURE 1
#define DM_CIDR_EXCLUDE 2
struct dm_cidr_value {
	__u32 action;          /* DM_CIDR_* */
};

/* Overlay (VXLAN) peers: key of dm_tunnels, an LPM trie over a peer
 * node's pod CIDR. */
#define DM_MAX_PEERS 1024
struct dm_tunnel_key {
	__u32 prefixlen;
	__be32 addr;
};

/* Key of dm_tunnels6, an LPM trie over a peer node's IPv6 pod CIDR (the
 * value is a dm_tunnel as well: IPv6 inside, IPv4 underlay outside), and of
 * dm_out_cidrs6, the node-wide IPv6 destinations the IPv4 rules would
 * capture (this node's and every peer's IPv6 pod CIDR; value: a
 * dm_cidr_value): an IPv6 prefix. */
struct dm_tunnel6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

/* Value of dm_tunnels: where that CIDR is reached. remote_ipv4 is in HOST
 * byte order because that is what bpf_skb_set_tunnel_key() takes. */
struct dm_tunnel {
	__u32 remote_ipv4;     /* the peer DPU's underlay (uplink) address */
	__u32 vni;             /* VXLAN network identifier */
};

/* Drop reasons, index into dm_pod_counters.drops. */
enum dm_drop_reason {
	DM_DROP_UNKNOWN_VF = 0,  /* packet on a representor with no pod */
	DM_DROP_SPOOF_MAC = 1,   /* source MAC is not the VF's */
	DM_DROP_SPOOF_IP = 2,    /* source IP (or ARP sender, NS source) is not the VF's */
	DM_DROP_MALFORMED = 3,   /* truncated or unparsable headers */
	DM_DROP_NOT_READY = 4,   /* node network not set yet */
	DM_DROP_NO_ROUTE = 5,    /* FIB has no route / forwarding failed */
	DM_DROP_LOCAL_DST = 6,   /* pod tried to reach the DPU itself */
	DM_DROP_UNSUPPORTED = 7, /* ethertype we do not forward; IPv6 link-local traffic
				  * we do not serve (router solicitation, MLD, DAD) */
	DM_DROP_NO_PROXY = 8,    /* captured SYN but no proxy listener: fail closed */
	DM_DROP_TTL_EXCEEDED = 9, /* routed packet whose TTL would reach 0 */
	DM_DROP_MESH_IPV6 = 10,  /* IPv6 TCP that would be captured: dpu-proxy has no
				  * IPv6 listeners, so it is refused, not bypassed */
	DM_DROP_MAX = 11,
};

/* Per-pod counters, one per-CPU array entry per slot. "out" = sent by the
 * pod (representor ingress), "in" = delivered to the pod (representor
 * egress). */
struct dm_pod_counters {
	__u64 packets_out;
	__u64 bytes_out;
	__u64 packets_in;
	__u64 bytes_in;
	__u64 steered_outbound;  /* packets handed to the outbound listener */
	__u64 steered_inbound;   /* packets handed to the inbound listener (to this pod) */
	__u64 to_proxy_socket;   /* packets of established proxy connections */
	__u64 bypassed;          /* packets forwarded without the proxy */
	__u64 arp_replies;       /* ARP requests and neighbour solicitations answered */
	__u64 drops[DM_DROP_MAX];
};

#endif /* DM_LAYOUT_H */
