/* SPDX-License-Identifier: Apache-2.0 */
/*
 * dpumesh dataplane: TC programs on the DPU.
 *
 *   dm_rep_ingress    representor ingress = packets FROM a pod
 *   dm_rep_egress     representor egress  = packets TO a pod (counting only)
 *   dm_uplink_ingress uplink (p0) ingress = packets from the fabric
 *   dm_tunnel_ingress VXLAN device ingress = decapsulated packets from
 *                     another DPU (overlay mode)
 *
 * Maps and layouts: include/dm_maps.h, include/dm_layout.h.
 * Steering mechanism: include/dm_steer.h and docs/dataplane.md.
 */
#include "include/dm_pkt.h"
#include "include/dm_maps.h"
#include "include/dm_steer.h"

#ifndef AF_INET
#define AF_INET 2
#endif
#ifndef AF_INET6
#define AF_INET6 10
#endif

/* Istio's HBONE port: the inbound tunnels between node proxies. */
#define DM_HBONE_PORT 15008

char LICENSE[] SEC("license") = "Dual BSD/GPL";

static __always_inline int dm_drop(struct dm_pod_counters *c, enum dm_drop_reason r)
{
	dm_count_drop(c, r);
	return TC_ACT_SHOT;
}

/* Answer an ARP request from a pod for any address but its own (proxy ARP):
 * every off-pod address, the gateway included, resolves to the gateway MAC,
 * so a pod needs no route beyond its VF, whatever prefix it was given. */
static __always_inline int dm_arp_reply(struct __sk_buff *skb, const struct dm_endpoint *ep,
					const struct dm_node_config *cfg,
					struct dm_pod_counters *c)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct dm_arp *arp = (void *)(eth + 1);
	__u8 tpa[4];
	__be32 spa;

	if ((void *)(arp + 1) > end)
		return dm_drop(c, DM_DROP_MALFORMED);
	if (arp->hrd != bpf_htons(1) || arp->pro != bpf_htons(ETH_P_IP) || arp->hln != ETH_ALEN ||
	    arp->pln != 4)
		return dm_drop(c, DM_DROP_MALFORMED);
	__builtin_memcpy(&spa, arp->spa, 4);
	/* Probes (sender 0.0.0.0, duplicate address detection) get no answer:
	 * no one else may hold the pod's address. */
	if (spa == 0)
		return TC_ACT_SHOT;
	if (spa != ep->ipv4 || !dm_mac_eq(arp->sha, ep->mac))
		return dm_drop(c, DM_DROP_SPOOF_IP);
	if (arp->op != bpf_htons(DM_ARP_REQUEST))
		return TC_ACT_SHOT;
	__builtin_memcpy(tpa, arp->tpa, 4);
	if (__builtin_memcmp(tpa, arp->spa, 4) == 0)
		return TC_ACT_SHOT; /* gratuitous ARP */

	arp->op = bpf_htons(DM_ARP_REPLY);
	dm_mac_copy(arp->tha, arp->sha);
	__builtin_memcpy(arp->tpa, arp->spa, 4);
	dm_mac_copy(arp->sha, cfg->gateway_mac);
	__builtin_memcpy(arp->spa, tpa, 4);
	dm_mac_copy(eth->h_dest, eth->h_source);
	dm_mac_copy(eth->h_source, cfg->gateway_mac);
	c->arp_replies++;
	return bpf_redirect(skb->ifindex, 0);
}

/* Outbound capture: a meshed pod's TCP to a captured destination. */
static __always_inline int dm_out_captured(const struct dm_endpoint *ep, const struct dm_ip4 *p)
{
	struct dm_cidr_key k = {};
	struct dm_cidr_value *v;

	if (!(ep->flags & DM_EP_MESHED))
		return 0;
	if (dm_port_in(ep->out_exclude_ports, p->tcp->dest))
		return 0;
	k.prefixlen = 64;
	k.scope = ep->slot + 1;
	k.addr = p->ip->daddr;
	v = bpf_map_lookup_elem(&dm_out_cidrs, &k);
	if (v)
		return v->action == DM_CIDR_CAPTURE;
	if (ep->flags & DM_EP_CUSTOM_OUT_CIDRS)
		return 0;
	k.scope = 0;
	v = bpf_map_lookup_elem(&dm_out_cidrs, &k);
	return v && v->action == DM_CIDR_CAPTURE;
}

/* Inbound capture: TCP to a meshed local pod on a captured port. */
static __always_inline int dm_in_captured(const struct dm_endpoint *ep, __be16 port)
{
	if (!(ep->flags & DM_EP_MESHED))
		return 0;
	/* HBONE (mTLS tunnels from other nodes' proxies to this pod) always
	 * reaches the proxy, whatever the pod's port lists say: it is how
	 * meshed traffic arrives, as with Istio ambient's fixed 15008. */
	if (port == bpf_htons(DM_HBONE_PORT))
		return 1;
	if (dm_port_in(ep->in_exclude_ports, port))
		return 0;
	if (ep->flags & DM_EP_IN_PORT_LIST)
		return dm_port_in(ep->in_capture_ports, port);
	return 1;
}

/* Hand a packet to a local pod's representor, as its gateway would. */
static __always_inline int dm_to_pod(struct ethhdr *eth, const struct dm_endpoint *dst,
				     const struct dm_node_config *cfg)
{
	dm_mac_copy(eth->h_dest, dst->mac);
	dm_mac_copy(eth->h_source, cfg->gateway_mac);
	return bpf_redirect(dst->ifindex, 0);
}

/* Overlay: hand a pod's packet to the collect_md VXLAN device with the
 * peer DPU as the tunnel's remote end. The inner MACs only have to get the
 * frame through the peer's tunnel program, which rewrites them for its pod. */
static __always_inline int dm_encap(struct __sk_buff *skb, struct ethhdr *eth,
				    const struct dm_node_config *cfg, const struct dm_tunnel *t,
				    struct dm_pod_counters *c)
{
	struct bpf_tunnel_key key = {};

	if (!cfg->tunnel_ifindex)
		return dm_drop(c, DM_DROP_NO_ROUTE);
	dm_mac_copy(eth->h_source, cfg->gateway_mac);
	dm_mac_copy(eth->h_dest, cfg->gateway_mac);
	key.tunnel_id = t->vni;
	key.remote_ipv4 = t->remote_ipv4;
	key.tunnel_ttl = 64;
	if (bpf_skb_set_tunnel_key(skb, &key, sizeof(key), BPF_F_ZERO_CSUM_TX))
		return dm_drop(c, DM_DROP_NO_ROUTE);
	if (c)
		c->bypassed++;
	return bpf_redirect(cfg->tunnel_ifindex, 0);
}

/* Route a packet (TTL already handled): to a local pod directly, in overlay
 * mode to a peer's pod CIDR through the tunnel, elsewhere by the FIB
 * (underlay: peers' pod CIDRs are routed via p0 by the dataplane). `c` is
 * the pod the packet is charged to, NULL for packets the dataplane makes
 * itself (ICMP errors). */
static __always_inline int dm_route(struct __sk_buff *skb, struct dm_ip4 *p,
				    const struct dm_node_config *cfg, struct dm_pod_counters *c)
{
	struct bpf_fib_lookup fib = {};
	struct dm_endpoint *dst;
	__be32 daddr;
	long rc;

	daddr = p->ip->daddr;
	dst = bpf_map_lookup_elem(&dm_ep_ip, &daddr);
	if (dst) {
		if (c)
			c->bypassed++;
		return dm_to_pod(p->eth, dst, cfg);
	}

	if (cfg->mode == DM_MODE_OVERLAY) {
		struct dm_tunnel_key tk = {};
		struct dm_tunnel *t;

		tk.prefixlen = 32;
		tk.addr = daddr;
		t = bpf_map_lookup_elem(&dm_tunnels, &tk);
		if (t)
			return dm_encap(skb, p->eth, cfg, t, c);
	}

	fib.family = AF_INET;
	fib.tos = p->ip->tos;
	fib.l4_protocol = p->ip->protocol;
	fib.tot_len = bpf_ntohs(p->ip->tot_len);
	fib.ipv4_src = p->ip->saddr;
	fib.ipv4_dst = daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > end)
			return dm_drop(c, DM_DROP_MALFORMED);
		dm_mac_copy(eth->h_dest, fib.dmac);
		dm_mac_copy(eth->h_source, fib.smac);
		if (c)
			c->bypassed++;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {};

		nh.nh_family = AF_INET;
		nh.ipv4_nh = fib.ipv4_dst;
		if (c)
			c->bypassed++;
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED)
		return dm_drop(c, DM_DROP_LOCAL_DST);
	return dm_drop(c, DM_DROP_NO_ROUTE);
}

/* The packet in `p` is dropped for its TTL (counted by the caller): answer
 * its sender with ICMP time exceeded (type 11, code 0) from the pods'
 * gateway, as a router does (RFC 792, RFC 1812 4.3.2), so traceroute shows
 * the DPU as a hop. The skb itself becomes the answer: trimmed (or grown)
 * to Ethernet + IPv4 + ICMP + the offending IP header and 8 bytes of its
 * payload, then routed like any packet. No answer (plain drop) to an ICMP
 * error, a fragment other than the first, an IP header with options, a
 * packet too short to quote, or a source that is no unicast host. */
#define DM_ICMP_QUOTE 28 /* IPv4 header without options + 8 bytes */
struct dm_icmp4_err {
	struct iphdr ip;
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 unused;
	__u8 quote[DM_ICMP_QUOTE];
};

static __always_inline __u16 dm_csum_fold(__s64 sum)
{
	__u32 s = (__u32)sum;

	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)~s;
}

static __always_inline int dm_icmp_time_exceeded(struct __sk_buff *skb, struct dm_ip4 *p,
						 const struct dm_node_config *cfg)
{
	struct dm_icmp4_err r = {};
	__be32 saddr = p->ip->saddr;
	__u8 first;

	if (p->ip->ihl != 5 || (p->ip->frag_off & bpf_htons(0x1fff)))
		return TC_ACT_SHOT;
	/* 0.0.0.0, loopback, multicast, broadcast: no one to answer. */
	first = ((__u8 *)&saddr)[0];
	if (saddr == 0 || first == 127 || first >= 224)
		return TC_ACT_SHOT;
	if (p->ip->protocol == IPPROTO_ICMP) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct iphdr), &type, 1))
			return TC_ACT_SHOT;
		/* Only queries (echo, timestamp, ...) get an error, never errors. */
		if (type != 8 && type != 13 && type != 15 && type != 17)
			return TC_ACT_SHOT;
	}
	if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, DM_ICMP_QUOTE))
		return TC_ACT_SHOT;

	if (!dm_icmp_allowed()) /* rate limit (dm_maps.h) */
		return TC_ACT_SHOT;
	r.ip.version = 4;
	r.ip.ihl = 5;
	r.ip.tos = 0xc0; /* internetwork control, as Linux's own ICMP */
	r.ip.tot_len = bpf_htons(sizeof(r));
	r.ip.ttl = 64;
	r.ip.protocol = IPPROTO_ICMP;
	r.ip.saddr = cfg->gateway_ipv4;
	r.ip.daddr = saddr;
	r.ip.check = dm_csum_fold(bpf_csum_diff(NULL, 0, (__be32 *)&r.ip, sizeof(r.ip), 0));
	r.type = 11; /* time exceeded */
	r.code = 0;  /* TTL exceeded in transit */
	r.check = dm_csum_fold(
		bpf_csum_diff(NULL, 0, (__be32 *)&r.type, sizeof(r) - sizeof(r.ip), 0));

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0))
		return TC_ACT_SHOT;
	if (dm_parse_ip4(skb, p))
		return TC_ACT_SHOT;
	return dm_route(skb, p, cfg, NULL);
}

/* A routed packet's TTL expired: counted on `c`, answered with ICMP. */
static __always_inline int dm_ttl_expired(struct __sk_buff *skb, struct dm_ip4 *p,
					  const struct dm_node_config *cfg,
					  struct dm_pod_counters *c)
{
	dm_count_drop(c, DM_DROP_TTL_EXCEEDED);
	return dm_icmp_time_exceeded(skb, p, cfg);
}

/* Forward a pod's packet: one routing hop. */
static __always_inline int dm_forward(struct __sk_buff *skb, struct dm_ip4 *p,
				      const struct dm_node_config *cfg,
				      struct dm_pod_counters *c)
{
	int t;

	/* Every way out of here is a routing hop. */
	t = dm_ttl_dec(skb, p);
	if (t == DM_TTL_EXPIRED)
		return dm_ttl_expired(skb, p, cfg, c);
	if (t)
		return dm_drop(c, DM_DROP_MALFORMED);
	return dm_route(skb, p, cfg, c);
}

/* ------------------------------------------------------------------ IPv6 */

/* The ICMPv6 checksum (RFC 4443 2.3): the IPv6 pseudo-header (RFC 8200
 * 8.1) and the message `msg`, `len` bytes (a multiple of 4). */
struct dm_ip6_pseudo {
	__u8 saddr[16];
	__u8 daddr[16];
	__be32 len;
	__u8 zero[3];
	__u8 nexthdr;
};

static __always_inline __u16 dm_icmp6_csum(const __u8 *saddr, const __u8 *daddr, void *msg,
					   __u32 len)
{
	struct dm_ip6_pseudo ph = {};
	__s64 sum;

	__builtin_memcpy(ph.saddr, saddr, 16);
	__builtin_memcpy(ph.daddr, daddr, 16);
	ph.len = bpf_htonl(len);
	ph.nexthdr = IPPROTO_ICMPV6;
	sum = bpf_csum_diff(NULL, 0, (__be32 *)&ph, sizeof(ph), 0);
	sum = bpf_csum_diff(NULL, 0, msg, len, (__u32)sum);
	return dm_csum_fold(sum);
}

/* The neighbour advertisement the dataplane answers with (RFC 4861 4.4),
 * with the target link-layer address option. */
struct dm_na {
	struct ipv6hdr ip6;
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 flags;
	__u8 target[16];
	__u8 opt_type;
	__u8 opt_len;
	__u8 mac[6];
};

/* Answer a pod's neighbour solicitation for any address but its own (proxy
 * ND, as proxy ARP for IPv4): the gateway, fe80::1, other pods all resolve
 * to the gateway MAC, so the pod needs nothing but its VF. The source must
 * be the pod's IPv6 address or the link-local address its VF MAC gives
 * (EUI-64). Duplicate address detection (source ::) gets no answer. */
static __always_inline int dm_nd_reply(struct __sk_buff *skb, struct dm_ip6 *p,
				       const struct dm_endpoint *ep,
				       const struct dm_node_config *cfg, struct dm_pod_counters *c)
{
	struct dm_na r = {};
	__u8 saddr[16];
	__u8 target[16];
	int own_src;

	if (p->ip6->hop_limit != 255) /* RFC 4861 7.1.1: not from the link */
		return dm_drop(c, DM_DROP_MALFORMED);
	__builtin_memcpy(saddr, p->ip6->saddr.in6_u.u6_addr8, 16);
	if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr) + 8, target, 16))
		return dm_drop(c, DM_DROP_MALFORMED);
	if (dm_ip6_is_zero(saddr))
		return dm_drop(c, DM_DROP_UNSUPPORTED);
	own_src = dm_ip6_is_eui64_ll(saddr, ep->mac) ||
		  ((ep->flags & DM_EP_IPV6) && dm_ip6_eq(saddr, ep->ipv6));
	if (!own_src)
		return dm_drop(c, DM_DROP_SPOOF_IP);
	if (target[0] == 0xff)
		return dm_drop(c, DM_DROP_MALFORMED);
	if (dm_ip6_is_eui64_ll(target, ep->mac) ||
	    ((ep->flags & DM_EP_IPV6) && dm_ip6_eq(target, ep->ipv6)))
		return dm_drop(c, DM_DROP_UNSUPPORTED);

	r.ip6.version = 6;
	r.ip6.payload_len = bpf_htons(sizeof(r) - sizeof(r.ip6));
	r.ip6.nexthdr = IPPROTO_ICMPV6;
	r.ip6.hop_limit = 255;
	__builtin_memcpy(r.ip6.saddr.in6_u.u6_addr8, target, 16);
	__builtin_memcpy(r.ip6.daddr.in6_u.u6_addr8, saddr, 16);
	r.type = DM_ND_NA;
	r.flags = bpf_htonl(0xe0000000); /* router, solicited, override */
	__builtin_memcpy(r.target, target, 16);
	r.opt_type = 2; /* target link-layer address */
	r.opt_len = 1;  /* in units of 8 bytes */
	dm_mac_copy(r.mac, cfg->gateway_mac);
	r.check = dm_icmp6_csum(target, saddr, &r.type, sizeof(r) - sizeof(r.ip6));

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return dm_drop(c, DM_DROP_MALFORMED);
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0))
		return dm_drop(c, DM_DROP_MALFORMED);
	if (bpf_skb_store_bytes(skb, 0, ep->mac, ETH_ALEN, 0) ||
	    bpf_skb_store_bytes(skb, ETH_ALEN, cfg->gateway_mac, ETH_ALEN, 0))
		return dm_drop(c, DM_DROP_MALFORMED);
	c->arp_replies++;
	return bpf_redirect(skb->ifindex, 0);
}

/* As dm_route, for IPv6: a local pod, a peer's IPv6 pod CIDR through the
 * tunnel (overlay), else the FIB (underlay: the dataplane routes peers'
 * IPv6 pod CIDRs via their derived underlay IPv6 address on p0). The FIB is
 * asked on behalf of the uplink: the representors have IPv6 off. */
static __always_inline int dm_route6(struct __sk_buff *skb, struct dm_ip6 *p,
				     const struct dm_node_config *cfg, struct dm_pod_counters *c)
{
	struct bpf_fib_lookup fib = {};
	struct dm_ip6_key k;
	struct dm_endpoint *dst;
	long rc;

	__builtin_memcpy(k.addr, p->ip6->daddr.in6_u.u6_addr8, 16);
	dst = bpf_map_lookup_elem(&dm_ep_ip6, &k);
	if (dst) {
		if (c)
			c->bypassed++;
		return dm_to_pod(p->eth, dst, cfg);
	}

	if (cfg->mode == DM_MODE_OVERLAY) {
		struct dm_tunnel6_key tk = {};
		struct dm_tunnel *t;

		tk.prefixlen = 128;
		__builtin_memcpy(tk.addr, k.addr, 16);
		t = bpf_map_lookup_elem(&dm_tunnels6, &tk);
		if (t)
			return dm_encap(skb, p->eth, cfg, t, c);
	}

	fib.family = AF_INET6;
	fib.flowinfo = *(__be32 *)p->ip6 & bpf_htonl(0x0fffffff);
	fib.l4_protocol = p->ip6->nexthdr;
	fib.tot_len = bpf_ntohs(p->ip6->payload_len) + sizeof(struct ipv6hdr);
	__builtin_memcpy(fib.ipv6_src, p->ip6->saddr.in6_u.u6_addr8, 16);
	__builtin_memcpy(fib.ipv6_dst, k.addr, 16);
	fib.ifindex = cfg->uplink_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_SUCCESS) {
		void *data = (void *)(long)skb->data;
		void *end = (void *)(long)skb->data_end;
		struct ethhdr *eth = data;

		if ((void *)(eth + 1) > end)
			return dm_drop(c, DM_DROP_MALFORMED);
		dm_mac_copy(eth->h_dest, fib.dmac);
		dm_mac_copy(eth->h_source, fib.smac);
		if (c)
			c->bypassed++;
		return bpf_redirect(fib.ifindex, 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		struct bpf_redir_neigh nh = {};

		nh.nh_family = AF_INET6;
		__builtin_memcpy(nh.ipv6_nh, fib.ipv6_dst, 16);
		if (c)
			c->bypassed++;
		return bpf_redirect_neigh(fib.ifindex, &nh, sizeof(nh), 0);
	}
	if (rc == BPF_FIB_LKUP_RET_NOT_FWDED)
		return dm_drop(c, DM_DROP_LOCAL_DST);
	return dm_drop(c, DM_DROP_NO_ROUTE);
}

/* ICMPv6 time exceeded (RFC 4443 3.3, type 3 code 0) from the IPv6 gateway
 * for a packet dropped for its hop limit, as dm_icmp_time_exceeded for
 * IPv4. The quote is the first DM_ICMP6_QUOTE bytes of the packet (RFC 4443
 * asks for as much as fits; traceroute6 matches its probes by their UDP
 * payload), zero-padded when the packet is shorter. No answer to an ICMPv6
 * error, to a source that is unspecified, multicast or link-local, to a
 * packet shorter than an IPv6 header and 8 bytes, or when the node has no
 * IPv6 gateway. */
#define DM_ICMP6_QUOTE 128
#define DM_ICMP6_QUOTE_MIN 48
struct dm_icmp6_err {
	struct ipv6hdr ip6;
	__u8 type;
	__u8 code;
	__sum16 check;
	__be32 unused;
	__u8 quote[DM_ICMP6_QUOTE];
};

static __always_inline int dm_icmp6_time_exceeded(struct __sk_buff *skb, struct dm_ip6 *p,
						  const struct dm_node_config *cfg)
{
	struct dm_icmp6_err r = {};
	__u8 saddr[16];
	__u64 n;

	if (dm_ip6_is_zero(cfg->gateway_ipv6))
		return TC_ACT_SHOT;
	__builtin_memcpy(saddr, p->ip6->saddr.in6_u.u6_addr8, 16);
	if (dm_ip6_is_zero(saddr) || saddr[0] == 0xff || dm_ip6_is_link_local(saddr))
		return TC_ACT_SHOT;
	if (p->ip6->nexthdr == IPPROTO_ICMPV6) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr), &type, 1))
			return TC_ACT_SHOT;
		if (type < 128) /* an error message */
			return TC_ACT_SHOT;
	}
	n = skb->len;
	if (n < ETH_HLEN + DM_ICMP6_QUOTE_MIN)
		return TC_ACT_SHOT;
	n -= ETH_HLEN;
	if (n > DM_ICMP6_QUOTE)
		n = DM_ICMP6_QUOTE;
	/* Checked again on the register the call gets, for the verifier. */
	asm volatile("" : "+r"(n));
	if (n < DM_ICMP6_QUOTE_MIN || n > DM_ICMP6_QUOTE)
		return TC_ACT_SHOT;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, r.quote, n))
		return TC_ACT_SHOT;

	if (!dm_icmp_allowed()) /* rate limit (dm_maps.h) */
		return TC_ACT_SHOT;
	r.ip6.version = 6;
	r.ip6.payload_len = bpf_htons(sizeof(r) - sizeof(r.ip6));
	r.ip6.nexthdr = IPPROTO_ICMPV6;
	r.ip6.hop_limit = 64;
	__builtin_memcpy(r.ip6.saddr.in6_u.u6_addr8, cfg->gateway_ipv6, 16);
	__builtin_memcpy(r.ip6.daddr.in6_u.u6_addr8, saddr, 16);
	r.type = 3; /* time exceeded */
	r.code = 0; /* hop limit exceeded in transit */
	r.check = dm_icmp6_csum(cfg->gateway_ipv6, saddr, &r.type, sizeof(r) - sizeof(r.ip6));

	if (bpf_skb_change_tail(skb, ETH_HLEN + sizeof(r), 0))
		return TC_ACT_SHOT;
	if (bpf_skb_store_bytes(skb, ETH_HLEN, &r, sizeof(r), 0))
		return TC_ACT_SHOT;
	if (dm_parse_ip6(skb, p))
		return TC_ACT_SHOT;
	return dm_route6(skb, p, cfg, NULL);
}

/* The L4 header of an IPv6 packet, past at most DM_IP6_EXT_MAX extension
 * headers (hop-by-hop, routing, destination options, fragment, AH).
 * Returns the protocol and sets *off (from the start of the frame);
 * DM_L4_NONE for a fragment other than the first (it has no L4 header);
 * -1 when the chain is longer or truncated. */
#define DM_IP6_EXT_MAX 4
#define DM_L4_NONE 256
static __always_inline int dm_ip6_l4(struct __sk_buff *skb, const struct dm_ip6 *p, __u32 *off)
{
	__u32 o = ETH_HLEN + sizeof(struct ipv6hdr);
	__u8 nh = p->ip6->nexthdr;

#pragma unroll
	for (int i = 0; i < DM_IP6_EXT_MAX; i++) {
		__u8 h[4];

		if (nh != 0 && nh != 43 && nh != 44 && nh != 51 && nh != 60) {
			*off = o;
			return nh;
		}
		if (bpf_skb_load_bytes(skb, o, h, 4))
			return -1;
		if (nh == 44) {
			/* Fragment header: offset in the upper 13 bits of h[2..4]. */
			if ((h[2] << 5) | (h[3] >> 3))
				return DM_L4_NONE;
			o += 8;
		} else if (nh == 51) {
			o += ((__u32)h[1] + 2) * 4;
		} else {
			o += ((__u32)h[1] + 1) * 8;
		}
		nh = h[0];
	}
	return -1;
}

/* 1 when `daddr` is an IPv6 destination the IPv4 rules would capture for a
 * pod with the node-wide set: this node's or a peer's IPv6 pod CIDR. */
static __always_inline int dm_out6_captured_dst(const __u8 *daddr)
{
	struct dm_tunnel6_key k = {};
	struct dm_cidr_value *v;

	k.prefixlen = 128;
	__builtin_memcpy(k.addr, daddr, 16);
	v = bpf_map_lookup_elem(&dm_out_cidrs6, &k);
	return v && v->action == DM_CIDR_CAPTURE;
}

/* Fail closed for the mesh over IPv6. dpu-proxy listens on IPv4 only, so
 * IPv6 TCP that the IPv4 rules would steer into it cannot be steered; it is
 * refused (DM_DROP_MESH_IPV6) instead of bypassing mTLS and authorization.
 * That is a SYN (a connection's first packet) from the meshed pod `src`
 * (NULL from the fabric) to a captured destination that is not one of its
 * excluded ports, or to the meshed local pod `dst` (NULL: not local) on a
 * captured port. Pods with their own (IPv4) capture list capture no IPv6
 * destination, as their list names none. A packet whose TCP header cannot
 * be found (too many extension headers, truncated) is refused when a meshed
 * pod is involved; fragments other than the first pass, as for IPv4. UDP
 * and ICMPv6 are never captured. Returns 1 to drop. */
static __always_inline int dm_mesh6_refused(struct __sk_buff *skb, const struct dm_ip6 *p,
					    const struct dm_endpoint *src,
					    const struct dm_endpoint *dst)
{
	__u8 nh = p->ip6->nexthdr;
	struct tcphdr tcp;
	int out, in, proto;
	__u32 off = 0;

	if (nh == IPPROTO_UDP || nh == IPPROTO_ICMPV6)
		return 0;
	out = src && (src->flags & DM_EP_MESHED) && !(src->flags & DM_EP_CUSTOM_OUT_CIDRS) &&
	      dm_out6_captured_dst(p->ip6->daddr.in6_u.u6_addr8);
	in = dst && (dst->flags & DM_EP_MESHED);
	if (!out && !in)
		return 0;
	proto = dm_ip6_l4(skb, p, &off);
	if (proto == DM_L4_NONE)
		return 0;
	if (proto < 0)
		return 1;
	if (proto != IPPROTO_TCP)
		return 0;
	if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)))
		return 1;
	if (!dm_is_syn(&tcp))
		return 0;
	if (out && !dm_port_in(src->out_exclude_ports, tcp.dest))
		return 1;
	return in && dm_in_captured(dst, tcp.dest);
}

/* A pod's IPv6 packet, after the MAC check. */
static __always_inline int dm_rep_ingress6(struct __sk_buff *skb, const struct dm_endpoint *ep,
					   const struct dm_node_config *cfg,
					   struct dm_pod_counters *c)
{
	struct dm_ip6 p;
	__u8 saddr[16];
	__u8 d0, d1;
	int own;

	if (dm_parse_ip6(skb, &p))
		return dm_drop(c, DM_DROP_MALFORMED);
	if (p.ip6->nexthdr == IPPROTO_ICMPV6) {
		__u8 type;

		if (bpf_skb_load_bytes(skb, ETH_HLEN + sizeof(struct ipv6hdr), &type, 1))
			return dm_drop(c, DM_DROP_MALFORMED);
		if (type == DM_ND_NS)
			return dm_nd_reply(skb, &p, ep, cfg, c);
		if (dm_parse_ip6(skb, &p))
			return dm_drop(c, DM_DROP_MALFORMED);
	}
	__builtin_memcpy(saddr, p.ip6->saddr.in6_u.u6_addr8, 16);
	d0 = p.ip6->daddr.in6_u.u6_addr8[0];
	d1 = p.ip6->daddr.in6_u.u6_addr8[1];
	own = (ep->flags & DM_EP_IPV6) && dm_ip6_eq(saddr, ep->ipv6);
	/* Link-local and multicast traffic stays on the link; of it the
	 * dataplane serves only neighbour solicitations (router solicitations,
	 * MLD, DAD and the like are dropped as unsupported). */
	if (dm_ip6_is_zero(saddr) || dm_ip6_is_link_local(saddr) || d0 == 0xff ||
	    (d0 == 0xfe && (d1 & 0xc0) == 0x80)) {
		if (own || dm_ip6_is_zero(saddr) || dm_ip6_is_eui64_ll(saddr, ep->mac))
			return dm_drop(c, DM_DROP_UNSUPPORTED);
		return dm_drop(c, DM_DROP_SPOOF_IP);
	}
	if (!own)
		return dm_drop(c, DM_DROP_SPOOF_IP);
	/* IPv6 is not steered into the proxy (yet): what would be captured is
	 * refused, the rest forwarded as bypass. */
	if (p.ip6->nexthdr != IPPROTO_UDP && p.ip6->nexthdr != IPPROTO_ICMPV6) {
		struct dm_ip6_key dk;
		struct dm_endpoint *dst;

		__builtin_memcpy(dk.addr, p.ip6->daddr.in6_u.u6_addr8, 16);
		dst = bpf_map_lookup_elem(&dm_ep_ip6, &dk);
		if (dm_mesh6_refused(skb, &p, ep, dst))
			return dm_drop(c, DM_DROP_MESH_IPV6);
	}
	if (dm_hop_dec(&p) == DM_TTL_EXPIRED) {
		dm_count_drop(c, DM_DROP_TTL_EXCEEDED);
		return dm_icmp6_time_exceeded(skb, &p, cfg);
	}
	return dm_route6(skb, &p, cfg, c);
}

/* An IPv6 packet from the fabric: only packets for a local pod are ours. */
static __always_inline int dm_from_fabric6(struct __sk_buff *skb)
{
	struct dm_endpoint *dst;
	struct dm_node_config *cfg;
	struct dm_pod_counters *c;
	struct dm_ip6_key k;
	struct dm_ip6 p;

	if (dm_parse_ip6(skb, &p))
		return TC_ACT_OK;
	__builtin_memcpy(k.addr, p.ip6->daddr.in6_u.u6_addr8, 16);
	dst = bpf_map_lookup_elem(&dm_ep_ip6, &k);
	if (!dst)
		return TC_ACT_OK;
	cfg = dm_node_config();
	if (!cfg || !cfg->ready)
		return TC_ACT_OK;
	c = dm_counters_of(dst->slot);
	if (!c)
		return TC_ACT_SHOT;
	if (dm_mesh6_refused(skb, &p, NULL, dst))
		return dm_drop(c, DM_DROP_MESH_IPV6);
	/* Routed into the pod: one hop. */
	if (dm_hop_dec(&p) == DM_TTL_EXPIRED) {
		dm_count_drop(c, DM_DROP_TTL_EXCEEDED);
		return dm_icmp6_time_exceeded(skb, &p, cfg);
	}
	c->bypassed++;
	return dm_to_pod(p.eth, dst, cfg);
}


/* A pod's SYN its own outbound rule does not capture (an unmeshed sender,
 * or an excluded port or CIDR). If it is for a meshed pod on this node on a
 * port that pod captures inbound, it goes to the inbound listener, as from
 * the fabric: the destination's inbound policy (mTLS, authorization) holds
 * for callers on its own node too. Counted as steered inbound on the
 * destination; a missing listener is a drop on the sender (fail closed).
 * Anything else is forwarded. */
static __always_inline int dm_rep_to_local_pod(struct __sk_buff *skb, struct dm_ip4 *p,
					       const struct dm_node_config *cfg,
					       struct dm_pod_counters *c)
{
	struct dm_pod_counters *dc;
	struct dm_endpoint *dst;
	__be32 daddr;

	daddr = p->ip->daddr;
	dst = bpf_map_lookup_elem(&dm_ep_ip, &daddr);
	if (!dst || !dm_in_captured(dst, p->tcp->dest))
		return dm_forward(skb, p, cfg, c);
	if (dm_assign_listener(skb, p, cfg->inbound_port))
		return dm_drop(c, DM_DROP_NO_PROXY);
	dc = dm_counters_of(dst->slot);
	if (dc)
		dc->steered_inbound++;
	return dm_deliver_local(skb, cfg->steer_mark);
}

SEC("classifier")
int dm_rep_ingress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct dm_endpoint *ep;
	struct dm_node_config *cfg;
	struct dm_pod_counters *c;
	struct dm_ip4 p;
	struct ethhdr *eth;
	void *data, *end;

	ep = bpf_map_lookup_elem(&dm_ep_ifindex, &ifindex);
	if (!ep)
		return dm_drop(dm_counters_of(DM_SLOT_UNATTRIBUTED), DM_DROP_UNKNOWN_VF);
	c = dm_counters_of(ep->slot);
	if (!c)
		return TC_ACT_SHOT;
	c->packets_out++;
	c->bytes_out += skb->len;

	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > end)
		return dm_drop(c, DM_DROP_MALFORMED);
	if (!dm_mac_eq(eth->h_source, ep->mac))
		return dm_drop(c, DM_DROP_SPOOF_MAC);
	cfg = dm_node_config();
	if (!cfg || !cfg->ready)
		return dm_drop(c, DM_DROP_NOT_READY);
	if (eth->h_proto == bpf_htons(ETH_P_ARP))
		return dm_arp_reply(skb, ep, cfg, c);
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return dm_rep_ingress6(skb, ep, cfg, c);
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return dm_drop(c, DM_DROP_UNSUPPORTED);
	if (dm_parse_ip4(skb, &p))
		return dm_drop(c, DM_DROP_MALFORMED);
	if (p.ip->saddr != ep->ipv4)
		return dm_drop(c, DM_DROP_SPOOF_IP);

	if (p.tcp) {
		if (dm_local_tcp_socket(skb, &p)) {
			c->to_proxy_socket++;
			return dm_deliver_local(skb, cfg->steer_mark);
		}
		if (dm_is_syn(p.tcp) && dm_out_captured(ep, &p)) {
			if (dm_assign_listener(skb, &p, cfg->outbound_port))
				return dm_drop(c, DM_DROP_NO_PROXY);
			c->steered_outbound++;
			return dm_deliver_local(skb, cfg->steer_mark);
		}
		if (dm_is_syn(p.tcp))
			return dm_rep_to_local_pod(skb, &p, cfg, c);
	}
	return dm_forward(skb, &p, cfg, c);
}

SEC("classifier")
int dm_rep_egress(struct __sk_buff *skb)
{
	__u32 ifindex = skb->ifindex;
	struct dm_endpoint *ep;
	struct dm_pod_counters *c;

	ep = bpf_map_lookup_elem(&dm_ep_ifindex, &ifindex);
	if (!ep)
		return TC_ACT_OK;
	c = dm_counters_of(ep->slot);
	if (c) {
		c->packets_in++;
		c->bytes_in += skb->len;
	}
	return TC_ACT_OK;
}

/* A packet from the fabric (the uplink, or the VXLAN device after decap):
 * only packets for a local pod are ours. */
static __always_inline int dm_from_fabric(struct __sk_buff *skb)
{
	struct dm_endpoint *dst;
	struct dm_node_config *cfg;
	struct dm_pod_counters *c;
	struct dm_ip4 p;
	struct ethhdr *eth;
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__be32 daddr;
	int t;

	eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;
	if (eth->h_proto == bpf_htons(ETH_P_IPV6))
		return dm_from_fabric6(skb);
	/* ARP and everything not for a local pod is the DPU's own business. */
	if (eth->h_proto != bpf_htons(ETH_P_IP))
		return TC_ACT_OK;
	if (dm_parse_ip4(skb, &p))
		return TC_ACT_OK;
	daddr = p.ip->daddr;
	dst = bpf_map_lookup_elem(&dm_ep_ip, &daddr);
	if (!dst)
		return TC_ACT_OK;
	cfg = dm_node_config();
	if (!cfg || !cfg->ready)
		return TC_ACT_OK;
	c = dm_counters_of(dst->slot);
	if (!c)
		return TC_ACT_SHOT;

	if (p.tcp) {
		if (dm_local_tcp_socket(skb, &p)) {
			c->to_proxy_socket++;
			return dm_deliver_local(skb, cfg->steer_mark);
		}
		if (dm_is_syn(p.tcp) && dm_in_captured(dst, p.tcp->dest)) {
			if (dm_assign_listener(skb, &p, cfg->inbound_port))
				return dm_drop(c, DM_DROP_NO_PROXY);
			c->steered_inbound++;
			return dm_deliver_local(skb, cfg->steer_mark);
		}
	}
	/* Routed into the pod: one hop, like the way out. */
	t = dm_ttl_dec(skb, &p);
	if (t == DM_TTL_EXPIRED)
		return dm_ttl_expired(skb, &p, cfg, c);
	if (t)
		return dm_drop(c, DM_DROP_MALFORMED);
	c->bypassed++;
	return dm_to_pod(p.eth, dst, cfg);
}

SEC("classifier")
int dm_uplink_ingress(struct __sk_buff *skb)
{
	return dm_from_fabric(skb);
}

SEC("classifier")
int dm_tunnel_ingress(struct __sk_buff *skb)
{
	return dm_from_fabric(skb);
}
