/* The key of a count of drops, shared by drops.bpf.c (every drop) and watch.bpf.c (the watched flows'
 * packets dropped while not followed), and the one function that counts a drop under it.
 *
 * The struct is plain C that the host compiler reads too (with <linux/types.h>): dnattrace/drops/counter.py
 * decodes it (_KEY) and tests/test_drops_layout.py checks the two agree. The counting function needs the
 * BPF helpers, so only the BPF side sees it. */
#ifndef DNATTRACE_DROP_KEY_H
#define DNATTRACE_DROP_KEY_H

struct drop_key {
	__u64 location;      /* address the skb was freed from */
	__u32 reason;        /* enum skb_drop_reason */
	__u32 netns;         /* network namespace inode, 0 if unknown */
	__s32 stack_id;      /* -1 when stacks are off or the stack could not be stored */
	__u16 l3proto;       /* ethertype, host order (0x0800 IPv4, 0x86dd IPv6) */
	__u16 port;          /* the port asked about (drops --port, watch's service), else 0 */
	__u8 l4proto;        /* IP protocol (IPv6: the upper-layer header past any extension headers), else 0 */
	__u8 pad[7];
};

#ifdef __bpf__
/* One more drop at key in a per-CPU hash of drop counts (map). A kfree_skb that interrupts this one on
 * the same CPU may create the key between the lookup and the insert: then the insert fails with EEXIST
 * and the count is found again. Returns 0, or the insert's error (the hash is full). */
static __always_inline long count_one_drop(void *map, const struct drop_key *key)
{
	__u64 *count = bpf_map_lookup_elem(map, key);
	if (count) {
		*count += 1;
		return 0;
	}
	__u64 one = 1;
	long err = bpf_map_update_elem(map, key, &one, BPF_NOEXIST);
	if (err == -17 /* EEXIST */) {
		count = bpf_map_lookup_elem(map, key);
		if (count)
			*count += 1;
		return 0;
	}
	return err;
}
#endif

#endif
