/* What `dnattrace drops` shares with user space (dnattrace/drops/counter.py): its options (struct
 * drops_config and FLAG_*), the key of its counts (struct drop_key, common/drop_key.h) and the slots of
 * drops_stats. Plain C, no BPF helpers: tests/test_drops_layout.py compiles it with the host compiler
 * and checks counter.py's struct formats and flags against it. */
#ifndef DNATTRACE_DROPS_H
#define DNATTRACE_DROPS_H

#include "drop_key.h"        /* the drops map's key */

#define FLAG_PORT    1   /* count only packets from or to config.port (before or after NAT), key by it */
#define FLAG_STACKS  2   /* record a kernel stack id per key */
#define FLAG_NETNS   4   /* count only drops in namespace config.netns */
#define MAX_KEYS     10240

struct drops_config {
	__u32 netns;         /* with FLAG_NETNS */
	__u16 port;          /* with FLAG_PORT, host order */
	__u8 l4proto;        /* 0: all protocols */
	__u8 flags;
};

/* drops_stats slots */
#define DROPS_STAT_OVERFLOW 0   /* drops not stored because the hash was full */
#define DROPS_STAT_COUNTED  1   /* all drops counted, a cross-check */
#define DROPS_STAT_MAX      2

#endif
