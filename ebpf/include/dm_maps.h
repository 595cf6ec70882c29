/* SPDX-License-Identifier: Apache-2.0 */
/* The dataplane's maps. Layouts: dm_layout.h. Names stay under 16 bytes
 * (BPF_OBJ_NAME_LEN) because they are also the pin file names under
 * /run/dpumesh/bpf/<node>/, where the dataplane reuses them on restart. */
#ifndef DM_MAPS_H
#define DM_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "dm_layout.h"

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DM_MAX_PODS);
	__type(key, __u32); /* representor ifindex */
	__type(value, struct dm_endpoint);
} dm_ep_ifindex SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DM_MAX_PODS);
	__type(key, __be32); /* pod IPv4 */
	__type(value, struct dm_endpoint);
} dm_ep_ip SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, DM_MAX_PODS);
	__type(key, struct dm_ip6_key); /* pod IPv6 */
	__type(value, struct dm_endpoint);
} dm_ep_ip6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dm_node_config);
} dm_node SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DM_MAX_CIDRS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dm_cidr_key);
	__type(value, struct dm_cidr_value);
} dm_out_cidrs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DM_MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dm_tunnel_key);
	__type(value, struct dm_tunnel);
} dm_tunnels SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DM_MAX_PEERS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dm_tunnel6_key);
	__type(value, struct dm_tunnel);
} dm_tunnels6 SEC(".maps");

/* Node-wide IPv6 captured destinations (see dm_mesh6_refused in dm_tc.c). */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, DM_MAX_PEERS + 1);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct dm_tunnel6_key);
	__type(value, struct dm_cidr_value);
} dm_out_cidrs6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DM_COUNTER_SLOTS);
	__type(key, __u32); /* slot */
	__type(value, struct dm_pod_counters);
} dm_counters SEC(".maps");

/* ICMP errors the dataplane sends (time exceeded): one token bucket per
 * CPU, as Linux's net.ipv4.icmp_msgs_per_sec (1000) and icmp_msgs_burst
 * (50). Not pinned: a restart starts with full buckets. */
#define DM_ICMP_PER_SEC 1000
#define DM_ICMP_BURST 50
struct dm_icmp_bucket {
	__u64 last_ns;
	__u64 tokens;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dm_icmp_bucket);
} dm_icmp_rl SEC(".maps");

/* 1 when this CPU may send one more ICMP error now (a token is taken). */
static __always_inline int dm_icmp_allowed(void)
{
	__u32 zero = 0;
	struct dm_icmp_bucket *b = bpf_map_lookup_elem(&dm_icmp_rl, &zero);
	__u64 now, add;

	if (!b)
		return 0;
	now = bpf_ktime_get_ns();
	add = (now - b->last_ns) / (1000000000ULL / DM_ICMP_PER_SEC);
	if (add) {
		b->tokens += add;
		if (b->tokens > DM_ICMP_BURST)
			b->tokens = DM_ICMP_BURST;
		b->last_ns = now;
	}
	if (!b->tokens)
		return 0;
	b->tokens--;
	return 1;
}

static __always_inline struct dm_pod_counters *dm_counters_of(__u32 slot)
{
	return bpf_map_lookup_elem(&dm_counters, &slot);
}

static __always_inline void dm_count_drop(struct dm_pod_counters *c, enum dm_drop_reason r)
{
	if (c && r < DM_DROP_MAX)
		c->drops[r]++;
}

static __always_inline struct dm_node_config *dm_node_config(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&dm_node, &zero);
}

#endif /* DM_MAPS_H */
