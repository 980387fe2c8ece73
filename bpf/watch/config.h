/* watch's options, set by user space before the programs run (struct dt_config in watch.h): which
 * packets of a followed flow are news (all_packets), whether events carry the packet (capture), and how
 * many new connections a second are followed (max_new). */
#ifndef DNATTRACE_WATCH_CONFIG_H
#define DNATTRACE_WATCH_CONFIG_H

#include "skb.h"
#include "watch.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct dt_config);
} watch_config SEC(".maps");

#endif
