/* SPDX-License-Identifier: Apache-2.0 */
/*
 * Steering into dpu-proxy. The mechanism (contract: docs/dataplane.md):
 *
 *  1. Any TCP packet that belongs to a socket in the DPU netns (the proxy's
 *     accepted connections, its transparent outbound connections and their
 *     SYN-RECV/TIME-WAIT states) is marked with steer_mark and passed up.
 *     The dataplane installs `ip rule fwmark <mark> lookup <table>` and
 *     `ip route local 0.0.0.0/0 dev lo table <table>`, so the stack delivers
 *     it locally whatever its destination address, and TCP's own lookup
 *     finds the socket. The packet type is set to PACKET_HOST (frames to
 *     the gateway MAC arrive as PACKET_OTHERHOST, which ip_rcv drops). Listeners do not count: a pod must not reach a DPU
 *     service just by using its port.
 *  2. A SYN to a captured destination is assigned (bpf_sk_assign) to the
 *     proxy's listener (outbound 15001 / inbound 15006), found with the
 *     packet's own destination address, and marked as in 1. The listener
 *     accepts it with the ORIGINAL destination as the local address, which
 *     the proxy reads with getsockname().
 *  3. No listener = proxy down: captured SYNs are dropped (fail closed).
 */
#ifndef DM_STEER_H
#define DM_STEER_H

#include "dm_pkt.h"
#include "dm_maps.h"

#ifndef BPF_TCP_LISTEN
#define BPF_TCP_LISTEN 10
#endif

static __always_inline void dm_tuple(struct bpf_sock_tuple *t, const struct dm_ip4 *p, __be16 dport)
{
	t->ipv4.saddr = p->ip->saddr;
	t->ipv4.daddr = p->ip->daddr;
	t->ipv4.sport = p->tcp->source;
	t->ipv4.dport = dport;
}

#ifndef PACKET_HOST
#define PACKET_HOST 0
#endif

/* Let the stack deliver the packet to a local socket. A pod addresses its
 * frames to the gateway MAC, which is not the representor's, so the kernel
 * classified them PACKET_OTHERHOST and ip_rcv would drop them: reclassify. */
static __always_inline int dm_deliver_local(struct __sk_buff *skb, __u32 mark)
{
	skb->mark = mark;
	bpf_skb_change_type(skb, PACKET_HOST);
	return TC_ACT_OK;
}

/* 1 when the packet belongs to a non-listening socket of the DPU netns. */
static __always_inline int dm_local_tcp_socket(struct __sk_buff *skb, const struct dm_ip4 *p)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	int local;

	dm_tuple(&t, p, p->tcp->dest);
	sk = bpf_skc_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return 0;
	local = sk->state != BPF_TCP_LISTEN;
	bpf_sk_release(sk);
	return local;
}

/* Assign a SYN to the proxy listener on listen_port. 0 on success. */
static __always_inline int dm_assign_listener(struct __sk_buff *skb, const struct dm_ip4 *p,
					      __be16 listen_port)
{
	struct bpf_sock_tuple t = {};
	struct bpf_sock *sk;
	long err;

	dm_tuple(&t, p, listen_port);
	sk = bpf_sk_lookup_tcp(skb, &t, sizeof(t.ipv4), BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return -1;
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return -1;
	}
	err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? -1 : 0;
}

#endif /* DM_STEER_H */
