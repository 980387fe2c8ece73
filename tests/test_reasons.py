"""The shared table of drop reason meanings, checked against the running kernel's enum."""
from dnattrace.kernel import btf, reasons

REQUIRED = ["NETFILTER_DROP", "NO_SOCKET", "OTHERHOST", "CPU_BACKLOG", "PKT_TOO_SMALL", "SOCKET_RCVBUFF",
            "IP_RPFILTER", "NOT_SPECIFIED", "QUEUE_PURGE", "TCP_INVALID_SYN", "TCP_LISTEN_OVERFLOW",
            "TCP_FLAGS"]


def test_every_name_exists_in_this_kernel_or_is_marked_as_another_kernels():
    kernel = btf.enum_values("skb_drop_reason", "SKB_DROP_REASON_")
    unknown = [n for n in reasons.MEANINGS if n not in kernel and n not in reasons.OTHER_KERNELS]
    assert unknown == []
    assert reasons.OTHER_KERNELS <= set(reasons.MEANINGS)


def test_the_families_the_issue_asks_for_are_covered():
    kernel = btf.enum_values("skb_drop_reason", "SKB_DROP_REASON_")
    for prefix in ("IP_", "NEIGH_", "QDISC_"):
        family = [n for n in kernel if n.startswith(prefix)]
        assert family and all(n in reasons.MEANINGS for n in family), prefix
    for name in REQUIRED:
        assert name in reasons.MEANINGS


def test_meaning_and_fallback():
    assert "forwarding" in reasons.meaning("IP_INADDRERRORS")
    assert reasons.meaning("SKB_DROP_REASON_NO_SOCKET") == reasons.MEANINGS["NO_SOCKET"]
    assert "SOMETHING_NEW" in reasons.meaning("SOMETHING_NEW")
    assert reasons.meaning(None)
