/* Empty programs at the points `dnattrace watch` attaches to by default: the receive, route, transmit,
 * drop and consume tracepoints, and a netfilter program for the first and last position of each hook.
 * scripts/bench watch attaches them as condition f, to measure what the attach points cost by
 * themselves on this machine (the floor under condition b). Never loaded by dnattrace itself. */
#include "skb.h"

char LICENSE[] SEC("license") = "GPL";

SEC("tp_btf/netif_receive_skb")
int floor_rx(void *ctx) { return 0; }

SEC("tp_btf/fib_table_lookup")
int floor_fib(void *ctx) { return 0; }

SEC("tp_btf/net_dev_xmit")
int floor_xmit(void *ctx) { return 0; }

SEC("tp_btf/kfree_skb")
int floor_drop(void *ctx) { return 0; }

SEC("tp_btf/consume_skb")
int floor_consume(void *ctx) { return 0; }

/* libbpf 1.1 does not know SEC("netfilter"): the loader sets the program type. */
SEC("netfilter")
int floor_nf(struct bpf_nf_ctx *ctx) { return 1; /* NF_ACCEPT */ }
