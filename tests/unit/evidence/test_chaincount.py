"""drops --by chain / --by rule (evidence/chaincount.py): the split of an interval's drops, on described
rows and counter moves as the drop counter and the rulesets give them."""
from dnattrace.evidence import chaincount


def row(count, reason="NETFILTER_DROP", function="nft_do_chain", netns="host", inode=7):
    return {"count": count, "reason": reason, "function": function, "netns": netns, "netns_inode": inode}


def test_counted_uncounted_elsewhere_and_not_netfilter():
    described = [row(10), row(4, "NO_SOCKET", "tcp_v4_rcv"), row(3, netns="other", inode=9),
                 row(2, "NOT_SPECIFIED", "nf_hook_slow")]
    moves = [("nft inet t input", "tcp dport 1 counter drop # handle 2", "unknown", 6),
             ("iptables filter FORWARD", "policy DROP", "docker", 2),
             ("nft inet t input", "tcp dport 2 counter drop # handle 3", "unknown", 1)]
    rows = chaincount.split(described, moves, "chain", "host", 2.0, inode=7)
    got = [(r["chain"], r["count"], r["rate"]) for r in rows]
    assert got == [("nft inet t input", 7, 3.5), ("iptables filter FORWARD", 2, 1.0),
                   (chaincount.UNCOUNTED, 3, 1.5),            # 12 netfilter drops here, 9 counted
                   (chaincount.ELSEWHERE % "other", 3, 1.5), (chaincount.NOT_NETFILTER, 4, 2.0)]
    by_rule = chaincount.split(described, moves, "rule", "host", 2.0, inode=7)
    assert [(r["rule"], r["count"]) for r in by_rule[:3]] == [
        ("tcp dport 1 counter drop # handle 2", 6), ("policy DROP", 2), ("tcp dport 2 counter drop # handle 3", 1)]


def test_counters_above_the_drops_seen_leave_nothing_uncounted():
    rows = chaincount.split([row(1)], [("nft inet t input", "r", "", 5)], "chain", "host", 1.0, inode=7)
    assert [(r["chain"], r["count"]) for r in rows] == [("nft inet t input", 5)]
