/* SPDX-License-Identifier: Apache-2.0 */
/* Packet parsing and small rewrite helpers for the TC programs. */
#ifndef DM_PKT_H
#define DM_PKT_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/in.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "dm_layout.h"

/* IPv4 over Ethernet ARP, as on the wire. */
struct dm_arp {
	__be16 hrd;
	__be16 pro;
	__u8 hln;
	__u8 pln;
	__be16 op;
	__u8 sha[ETH_ALEN];
	__u8 spa[4];
	__u8 tha[ETH_ALEN];
	__u8 tpa[4];
} __attribute__((packed));

#define DM_ARP_REQUEST 1
#define DM_ARP_REPLY 2

/* The parsed view of one IPv4 packet; pointers are into the skb's linear data. */
struct dm_ip4 {
	struct ethhdr *eth;
	struct iphdr *ip;
	struct tcphdr *tcp; /* NULL unless TCP with a complete header */
};

static __always_inline int dm_mac_eq(const __u8 *a, const __u8 *b)
{
	/* Byte compare: the verifier rejects unaligned wide loads on packet data. */
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline void dm_mac_copy(__u8 *dst, const __u8 *src)
{
	__builtin_memcpy(dst, src, ETH_ALEN);
}

/* Parse Ethernet + IPv4 (+ TCP). Returns 0 on success, -1 when truncated or
 * malformed; the caller has already checked the ethertype. */
static __always_inline int dm_parse_ip4(struct __sk_buff *skb, struct dm_ip4 *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end)
		return -1;
	if (ip->ihl < 5 || ip->version != 4)
		return -1;
	p->eth = eth;
	p->ip = ip;
	p->tcp = NULL;
	if (ip->protocol == IPPROTO_TCP) {
		/* Fragments other than the first carry no TCP header: leave tcp NULL,
		 * they are forwarded like any non-TCP packet. */
		if (ip->frag_off & bpf_htons(0x1fff))
			return 0;
		struct tcphdr *tcp = (void *)ip + ip->ihl * 4;
		if ((void *)(tcp + 1) > end)
			return -1;
		p->tcp = tcp;
	}
	return 0;
}

static __always_inline int dm_is_syn(const struct tcphdr *tcp)
{
	return tcp->syn && !tcp->ack;
}

static __always_inline int dm_port_in(const __be16 *list, __be16 port)
{
#pragma unroll
	for (int i = 0; i < DM_MAX_PORTS; i++)
		if (list[i] && list[i] == port)
			return 1;
	return 0;
}

/* One routing hop (RFC 1812): decrement the IPv4 TTL and patch the header
 * checksum incrementally. The helper may move the packet data, so `p` is
 * parsed again. Returns 0 when done, DM_TTL_EXPIRED when the TTL would
 * reach 0 (the packet is unchanged and must not be forwarded), -1 when the
 * rewrite failed. */
#define DM_TTL_EXPIRED 1
static __always_inline int dm_ttl_dec(struct __sk_buff *skb, struct dm_ip4 *p)
{
	__u8 ttl = p->ip->ttl;
	__u8 proto = p->ip->protocol;
	/* TTL and protocol form one 16-bit word of the checksummed header. */
	__be16 old_word = bpf_htons(((__u16)ttl << 8) | proto);
	__be16 new_word = bpf_htons(((__u16)(ttl - 1) << 8) | proto);

	if (ttl <= 1)
		return DM_TTL_EXPIRED;
	p->ip->ttl = ttl - 1;
	if (bpf_l3_csum_replace(skb, ETH_HLEN + __builtin_offsetof(struct iphdr, check), old_word,
				new_word, sizeof(new_word)))
		return -1;
	return dm_parse_ip4(skb, p);
}

/* The parsed view of one IPv6 packet (fixed header only: extension headers
 * are forwarded untouched, never parsed). */
struct dm_ip6 {
	struct ethhdr *eth;
	struct ipv6hdr *ip6;
};

#ifndef IPPROTO_ICMPV6
#define IPPROTO_ICMPV6 58
#endif
#define DM_ND_RS 133
#define DM_ND_NS 135
#define DM_ND_NA 136

static __always_inline int dm_parse_ip6(struct __sk_buff *skb, struct dm_ip6 *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct ipv6hdr *ip6 = (void *)(eth + 1);

	if ((void *)(ip6 + 1) > end)
		return -1;
	if (ip6->version != 6)
		return -1;
	p->eth = eth;
	p->ip6 = ip6;
	return 0;
}

static __always_inline int dm_ip6_eq(const __u8 *a, const __u8 *b)
{
	const __u32 *x = (const __u32 *)a, *y = (const __u32 *)b;

	return x[0] == y[0] && x[1] == y[1] && x[2] == y[2] && x[3] == y[3];
}

static __always_inline int dm_ip6_is_zero(const __u8 *a)
{
	const __u32 *x = (const __u32 *)a;

	return (x[0] | x[1] | x[2] | x[3]) == 0;
}

/* fe80::/10 */
static __always_inline int dm_ip6_is_link_local(const __u8 *a)
{
	return a[0] == 0xfe && (a[1] & 0xc0) == 0x80;
}

/* fe80::/64 with the modified EUI-64 interface id of `mac` (RFC 4291
 * appendix A): the link-local address a VF derives from its MAC. */
static __always_inline int dm_ip6_is_eui64_ll(const __u8 *a, const __u8 *mac)
{
	const __u32 *x = (const __u32 *)a;

	return a[0] == 0xfe && a[1] == 0x80 && a[2] == 0 && a[3] == 0 && x[1] == 0 &&
	       a[8] == (mac[0] ^ 0x02) && a[9] == mac[1] && a[10] == mac[2] && a[11] == 0xff &&
	       a[12] == 0xfe && a[13] == mac[3] && a[14] == mac[4] && a[15] == mac[5];
}

/* One routing hop for IPv6: the hop limit is not covered by any checksum.
 * Returns 0 when done, DM_TTL_EXPIRED when it would reach 0 (unchanged). */
static __always_inline int dm_hop_dec(struct dm_ip6 *p)
{
	if (p->ip6->hop_limit <= 1)
		return DM_TTL_EXPIRED;
	p->ip6->hop_limit--;
	return 0;
}

#endif /* DM_PKT_H */
