/* State the richer hooks keep between a function's entry and its return (fentry/fexit on nf_hook_slow,
 * and the kprobe/kretprobe fallbacks on nf_hook_slow and ip_route_input_noref). */
#ifndef DNATTRACE_WATCH_STASH_H
#define DNATTRACE_WATCH_STASH_H

#include "skb.h"
#include "watch.h"
#include "follow.h"

/* The kprobe fallbacks stash their entry arguments until the return probe runs, per execution context
 * (a task, or a CPU's idle task: all idle tasks are pid 0) and per probed function (ip_route_input_noref
 * runs inside nf_hook_slow under br_netfilter). Only calls made for a followed skb are stashed. */
struct stash_key {
	__u32 pid;
	__u32 cpu;      /* 1 + the CPU when pid is 0, else 0 */
	__u32 kind;     /* STASH_VERDICT, STASH_ROUTE */
};

struct entry_args {
	__u64 skb;
	__u32 hook;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct stash_key);
	__type(value, struct entry_args);
} entries SEC(".maps");


/* fentry/kprobe nf_hook_slow -> fexit/kretprobe: the hook call of a followed skb, by skb (a dropped skb
 * is freed, and forgotten by `tracked`, before nf_hook_slow returns: the return cannot ask `tracked`). ts is the hook's first event's: the verdict event carries ts + 1, so a drop
 * inside the hook (kfree_skb, reported before nf_hook_slow returns) sorts after the verdict. state is
 * read again at the return (it lives in the caller's frame until then). */
struct hook_call {
	__u64 ts;
	__u64 state;
	__u32 netns;
	__u8 hook;
	__u8 pad[3];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u64);
	__type(value, struct hook_call);
} hook_calls SEC(".maps");

/* stash_key.kind: which probed function stashed the entry */
#define STASH_VERDICT 0
#define STASH_ROUTE 1
#define STASH_HOOK 2

static __always_inline void stash_key(struct stash_key *k, __u32 kind)
{
	__u32 pid = (__u32)bpf_get_current_pid_tgid();
	k->pid = pid;
	k->cpu = pid ? 0 : bpf_get_smp_processor_id() + 1;
	k->kind = kind;
}

/* Entry: remember a call made for a followed skb (others are not stashed: they cost one lookup). */
static __always_inline void stash(struct sk_buff *skb, __u32 hook, __u32 kind)
{
	__u64 key = (__u64)skb;
	if (!tracked_entry(key))
		return;
	struct stash_key k;
	stash_key(&k, kind);
	struct entry_args a = { .skb = key, .hook = hook };
	bpf_map_update_elem(&entries, &k, &a, BPF_ANY);
}

static __always_inline struct entry_args *unstash(struct entry_args *out, __u32 kind)
{
	struct stash_key k;
	stash_key(&k, kind);
	struct entry_args *a = bpf_map_lookup_elem(&entries, &k);
	if (!a)
		return NULL;
	*out = *a;
	bpf_map_delete_elem(&entries, &k);
	return out;
}

#endif
