/* Empty programs at every point `dnattrace watch` can attach to: one per section watch.bpf.c uses (the
 * receive, route, transmit, drop and consume tracepoints as tp_btf, raw_tp or tracepoint; nf_hook_slow
 * and ip_route_input_noref as fentry/fexit or kprobe/kretprobe; a netfilter program for the links).
 * scripts/bench watch and watchtoggle load the ones the kernel's probe plan chose for watch (its
 * sections, bench_watch.plan_sections) and attach them as condition f: what those points cost by
 * themselves on this kernel (the floor under watch). Never loaded by dnattrace itself. */
#include "skb.h"

char LICENSE[] SEC("license") = "GPL";

#define EMPTY(name, section) SEC(section) int name(void *ctx) { return 0; }

EMPTY(floor_rx_btf, "tp_btf/netif_receive_skb")
EMPTY(floor_rx_raw, "raw_tp/netif_receive_skb")
EMPTY(floor_rx_tp, "tracepoint/net/netif_receive_skb")
EMPTY(floor_fib_btf, "tp_btf/fib_table_lookup")
EMPTY(floor_fib_raw, "raw_tp/fib_table_lookup")
EMPTY(floor_fib6_btf, "tp_btf/fib6_table_lookup")
EMPTY(floor_fib6_raw, "raw_tp/fib6_table_lookup")
EMPTY(floor_xmit_btf, "tp_btf/net_dev_xmit")
EMPTY(floor_drop_btf, "tp_btf/kfree_skb")
EMPTY(floor_drop_tp, "tracepoint/skb/kfree_skb")
EMPTY(floor_consume_btf, "tp_btf/consume_skb")
EMPTY(floor_consume_tp, "tracepoint/skb/consume_skb")
EMPTY(floor_hook_fentry, "fentry/nf_hook_slow")
EMPTY(floor_hook_fexit, "fexit/nf_hook_slow")
EMPTY(floor_hook_kprobe, "kprobe/nf_hook_slow")
EMPTY(floor_hook_kretprobe, "kretprobe/nf_hook_slow")
EMPTY(floor_route_fentry, "fentry/ip_route_input_noref")
EMPTY(floor_route_fexit, "fexit/ip_route_input_noref")
EMPTY(floor_route_kprobe, "kprobe/ip_route_input_noref")
EMPTY(floor_route_kretprobe, "kretprobe/ip_route_input_noref")

/* libbpf 1.1 does not know SEC("netfilter"): the loader sets the program type. */
SEC("netfilter")
int floor_nf(struct bpf_nf_ctx *ctx) { return 1; /* NF_ACCEPT */ }
