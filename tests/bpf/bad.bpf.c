/* A program the verifier must reject (a map value used without the NULL check): the loader's tests
 * prove that the verifier's own message reaches the error a user sees. Never loaded by dnattrace. */
#include "skb.h"

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} counter SEC(".maps");

SEC("raw_tp/kfree_skb")
int bad_unchecked_lookup(void *ctx)
{
	__u32 zero = 0;
	__u64 *v = bpf_map_lookup_elem(&counter, &zero);
	*v += 1;   /* deliberately no NULL check */
	return 0;
}

/* The same mistake after a long stretch of valid code: the verifier's log runs to tens of kilobytes
 * and the reason is at its very end (a loader that keeps only a log's start shows no reason). */
SEC("raw_tp/kfree_skb")
int bad_after_long_log(void *ctx)
{
	__u32 zero = 0;
	__u64 sum = 0;
#pragma unroll
	for (int i = 0; i < 300; i++) {
		__u64 *w = bpf_map_lookup_elem(&counter, &zero);
		if (w)
			sum += *w;
	}
	__u64 *v = bpf_map_lookup_elem(&counter, &zero);
	*v += sum;   /* deliberately no NULL check */
	return 0;
}
