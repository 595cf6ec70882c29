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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, DM_COUNTER_SLOTS);
	__type(key, __u32); /* slot */
	__type(value, struct dm_pod_counters);
} dm_counters SEC(".maps");

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
