"""attribute() on real journeys: watch follows the SYN through lab namespaces whose host holds Docker's
iptables-nft rules plus another owner's nft table, the rulesets and their counters are read before and
after, and the chain that dropped the SYN must be named with the others refuted by their counters."""
import subprocess
import time

import pytest

from dnattrace import model
from dnattrace.evidence import attribution, snapshot
from dnattrace.netns import build as net
from conftest import require
from test_watch import mine, watch_lab

pytestmark = pytest.mark.kernel


def last_bracket(j, hook, caps, want):
    """The chain bracket a dropped packet reached last on `hook`, where netfilter links exist (brackets are
    theirs); elsewhere the journey has none, and attribution goes by counters and evaluation alone."""
    got = [(s.stage, s.priority) for s in j.steps if s.hook == hook]
    if caps.has("netfilter_link"):
        assert got and got[-1] == ("chain", want), j.steps
    else:
        assert not [g for g in got if g[0] == "chain"], j.steps


def dropped_syn(inst, attempts=1):
    """(the first dropped SYN's journey, the host's evidence before, the host's delta) of one watch."""
    path = net.netns_path(inst.host_ns)
    before = snapshot.Snapshot.take(host_netns=path, target=inst.target())
    journeys, _ = watch_lab(inst, attempts=attempts)
    after = snapshot.Snapshot.take(host_netns=path, target=inst.target(), counters_only=True)
    syn = next(j for j in mine(journeys, inst) if j["steps"][0].get("tcp_flags") == "S"
               and j["outcome"] == "dropped")
    delta = snapshot.diff(before, after)
    return model.journey_from_dict(syn), before.host, delta.by_inode(before.host.inode)


def test_inet_forward_policy_named_and_iptables_forward_policy_refuted(lab_instance):
    inst = lab_instance("nft-inet-forward-drop")
    j, ev, d = dropped_syn(inst)
    rv = attribution.attribute(j, ev, d)
    assert rv is not None, j
    assert (rv.chain.family, rv.chain.table, rv.chain.chain, rv.chain.hook) == ("inet", "filter", "forward", "FORWARD")
    assert rv.policy and rv.verdict == "drop" and rv.how in ("evaluated", "chain"), rv
    # Docker's FORWARD (policy DROP) did not drop it: its policy counter did not move. (Whether its ACCEPT
    # counted the packet depends on which of the two chains at priority 0 runs first: 6.18 runs iptables'
    # first here, Debian's 6.1 the inet one; attribution treats chains at one priority as unordered.)
    assert any(r.startswith("iptables-nft filter FORWARD: no DROP/REJECT rule or policy counter moved")
               for r in rv.refuted), rv.refuted
    assert not any(m.policy and m.chain == "FORWARD" for m in d.moves)
    assert rv.fix and rv.fix[0].startswith("nsenter --net=%s nft insert rule inet filter forward ip daddr %s"
                                           % (net.netns_path(inst.host_ns), inst.container_addr))
    assert rv.fix[1].endswith("nft insert rule inet filter forward ct state established,related accept"), \
        "the chain accepts no reply either"
    assert rv.chain.owner == "unknown", "nftables.conf's tables are the initial namespace's, not a lab's"
    for cmd in rv.fix:                  # the printed fix repairs it
        subprocess.run(cmd, shell=True, check=True)
    journeys, summary = watch_lab(inst)
    conn = next(c for c in summary["connections"] if c["key"]["dport"] == inst.target_port)
    assert conn["outcome"] == "answered", conn


def f2b_ban(inst, priority=-10, port=None):
    net.run(["nft", "-f", "-"], netns=inst.host_ns, input=(
        "table inet f2b-table {\n set addr-set-web { type ipv4_addr; elements = { %s } }\n"
        " chain f2b-chain {\n  type filter hook forward priority %d; policy accept;\n"
        "  tcp dport %d ip saddr @addr-set-web counter reject\n }\n}\n"
        % (inst.client_addr, priority, port or inst.container_port)))


def test_counting_nft_drop_rule_of_another_owner_by_its_counter(lab_instance):
    """A fail2ban-style ban (table inet f2b-table, a counting reject rule on the forward hook, priority -1,
    next to iptables' 0: no bracket fits between): its counter names the rule, in nft -a form, and the fix
    is fail2ban's unban."""
    inst = lab_instance("healthy")
    f2b_ban(inst, -1)
    j, ev, d = dropped_syn(inst)
    assert not [s for s in j.steps if s.stage == "chain"], "adjacent priorities cannot be bracketed"
    rv = attribution.attribute(j, ev, d)
    assert (rv.chain.table, rv.chain.owner, rv.how, rv.verdict) == ("f2b-table", "fail2ban", "counter", "reject"), rv
    assert rv.rule.startswith("tcp dport %d ip saddr @addr-set-web counter reject" % inst.container_port)
    assert rv.rule.endswith("# handle 3") and rv.packets >= 1
    assert rv.fix == ["nsenter --net=%s fail2ban-client set web unbanip %s"
                      % (net.netns_path(inst.host_ns), inst.client_addr)]


def test_chain_brackets_name_the_group_that_dropped_it_without_counters(lab_instance, caps):
    """Chains at -10 (an nft table whose drop rule is counterless and not evaluated: meta mark) and 0
    (iptables-nft, Docker's): with no counters read, only watch's chain brackets can tell which one dropped
    the SYN. A packet that gets through passes both brackets."""
    require(caps.has("netfilter_link"), "netfilter_link (chain brackets are netfilter links)")
    inst = lab_instance("healthy")
    net.run(["nft", "-f", "-"], netns=inst.host_ns, input=(
        "table inet guard {\n chain screen {\n  type filter hook forward priority filter - 10; policy accept;\n"
        "  meta mark 0 tcp dport %d drop\n }\n}\n" % inst.container_port))
    j, ev, _ = dropped_syn(inst)
    brackets = [s.priority for s in j.steps if s.stage == "chain" and s.hook == "FORWARD"]
    assert brackets == [-11], j.steps
    rv = attribution.attribute(j, ev, None)
    assert (rv.chain.table, rv.chain.chain, rv.chain.priority, rv.how) == ("guard", "screen", -10, "chain"), rv
    assert any("meta mark" in r for r in rv.refuted)
    passed = attribution.chains_passed(j, ev)
    assert [(c.table, c.chain, what) for c, what in passed if c.hook == "FORWARD"] == [("guard", "screen", "dropped")]
    # the other port is not dropped: both brackets and the hook's last position see it
    net.run(["nft", "flush", "chain", "inet", "guard", "screen"], netns=inst.host_ns)
    journeys, _ = watch_lab(inst)
    syn = next(j for j in mine(journeys, inst) if j["steps"][0].get("tcp_flags") == "S")
    fwd = [(s["stage"], s.get("priority")) for s in syn["steps"] if s["point"] == "nf" and s.get("hook") == "FORWARD"]
    assert fwd == [("first", -(2 ** 31) + 1), ("chain", -11), ("chain", -1), ("last", 2 ** 31 - 2)], fwd
    assert syn["outcome"] == "delivered"


def test_legacy_rule_beside_iptables_nft_is_named_and_fixed_with_the_legacy_tool(lab_instance):
    """A DROP rule in an iptables-legacy table (a container shipping legacy iptables, an old script) beside
    Docker's iptables-nft rules: `iptables -S` does not show it, yet it drops. The rule is named in
    `iptables -S` form from iptables-legacy-save's counters, both backends are said to be loaded, and the
    printed fix (iptables-legacy -D ...) repairs it."""
    inst = lab_instance("legacy-forward-drop")
    try:
        j, ev, d = dropped_syn(inst)
        assert ev.both_backends and ev.legacy is not None
        rv = attribution.attribute(j, ev, d)
        assert (rv.chain.backend, rv.chain.table, rv.chain.chain, rv.how) == (
            "iptables-legacy", "filter", "FORWARD", "counter"), rv
        assert rv.rule == "-A FORWARD -s %s/32 -p tcp -j DROP" % inst.client_addr and rv.packets >= 1
        assert any(r.startswith("iptables-nft filter FORWARD: no DROP/REJECT") for r in rv.refuted), rv.refuted
        assert rv.fix == ["nsenter --net=%s iptables-legacy -t filter -D FORWARD -s %s/32 -p tcp -j DROP"
                          % (net.netns_path(inst.host_ns), inst.client_addr)]
        for cmd in rv.fix:
            subprocess.run(cmd, shell=True, check=True)
        journeys, summary = watch_lab(inst)
        conn = next(c for c in summary["connections"] if c["key"]["dport"] == inst.target_port)
        assert conn["outcome"] == "answered", conn
    finally:
        subprocess.run(["nsenter", "--net=" + net.netns_path(inst.host_ns), "iptables-legacy", "-F"],
                       capture_output=True)


def test_netdev_ingress_drop_before_prerouting(lab_instance):
    """A netdev-family ingress chain on the host's outside interface drops the client's SYN before any
    netfilter IP hook: the journey shows it received and freed by nft with no hook step; the chain is
    named by its counter, and deleting the rule (the printed fix) repairs it."""
    inst = lab_instance("netdev-ingress-drop")
    j, ev, d = dropped_syn(inst)
    assert not [s for s in j.steps if s.point == model.NF], j.steps
    rv = attribution.attribute(j, ev, d)
    assert (rv.chain.family, rv.chain.table, rv.chain.chain, rv.chain.hook, rv.how) == (
        "netdev", "edge", "in", "ingress", "counter"), rv
    assert rv.rule.startswith("tcp dport %d counter drop # handle" % inst.target_port)
    assert rv.fix == ["nsenter --net=%s nft delete rule netdev edge in handle 2" % net.netns_path(inst.host_ns)]
    for cmd in rv.fix:
        subprocess.run(cmd, shell=True, check=True)
    journeys, summary = watch_lab(inst)
    conn = next(c for c in summary["connections"] if c["key"]["dport"] == inst.target_port)
    assert conn["outcome"] == "answered", conn


def test_raw_priority_prerouting_drop_evaluated_without_a_counter(lab_instance, caps):
    """A counterless DROP in a raw-priority prerouting chain (before conntrack and Docker's DNAT): the
    chain brackets put the drop in that chain's group, evaluation names the rule."""
    inst = lab_instance("raw-prerouting-drop")
    j, ev, d = dropped_syn(inst)
    last_bracket(j, "PREROUTING", caps, -301)
    rv = attribution.attribute(j, ev, d)
    assert (rv.chain.table, rv.chain.chain, rv.chain.priority, rv.how, rv.policy) == (
        "early", "pre", -300, "evaluated", False), rv
    assert rv.rule == "tcp dport %d drop # handle 2" % inst.target_port


def test_watch_brackets_again_when_a_table_is_added_while_watching(lab_instance, caps):
    """A firewall started after watch: its chains' priority is bracketed within a few seconds, and a SYN
    it drops afterwards shows the new bracket as the last point it reached."""
    require(caps.has("netfilter_link"), "netfilter_link (chain brackets are netfilter links)")
    from test_watch import finish, start_watch
    from dnattrace.diagnose import probeclient
    from conftest import slow
    inst = lab_instance("healthy")
    p = start_watch("--port", str(inst.target_port), "--netns", inst.host_ns, "--duration", str(slow(7)))
    net.run(["nft", "-f", "-"], netns=inst.host_ns, input=(
        "table inet late {\n chain screen {\n  type filter hook forward priority filter - 20; policy accept;\n"
        "  tcp dport %d drop\n }\n}\n" % inst.container_port))
    time.sleep(slow(3))
    client = probeclient.start_connects(inst.client_ns, inst.target_addr, inst.target_port, 1, slow(2))
    try:
        journeys, _ = finish(p)
    finally:
        probeclient.stop(client)
    syn = next(j for j in mine(journeys, inst) if j["steps"][0].get("tcp_flags") == "S")
    fwd = [(s["stage"], s.get("priority")) for s in syn["steps"] if s["point"] == "nf" and s.get("hook") == "FORWARD"]
    assert fwd == [("first", -(2 ** 31) + 1), ("chain", -21)], fwd
    assert syn["outcome"] == "dropped"


def test_firewalld_final_reject_named_and_fixed_in_firewalld_language(lab_instance, caps):
    """firewalld's forward chain beside Docker's iptables rules (the classic "Docker port unreachable
    with firewalld"): the chain brackets put the drop in firewalld's chain (priority 10), evaluation walks
    its zone chains to the final reject, and the fix is firewalld's (the bridge into zone trusted); the raw
    fallback, applied here since no firewalld runs, repairs it."""
    inst = lab_instance("firewalld-forward-reject")
    j, ev, d = dropped_syn(inst)
    last_bracket(j, "FORWARD", caps, 9)
    rv = attribution.attribute(j, ev, d)
    assert (rv.chain.table, rv.chain.chain, rv.chain.owner, rv.how, rv.verdict) == (
        "firewalld", "filter_FORWARD", "firewalld", "evaluated", "reject"), rv
    assert rv.rule.startswith("reject with icmpx admin-prohibited # handle")
    prefix = "nsenter --net=%s " % net.netns_path(inst.host_ns)
    assert rv.fix == [prefix + "firewall-cmd --permanent --zone=trusted --change-interface=%s" % inst.bridge,
                      prefix + "firewall-cmd --reload"]
    raw = rv.fix_note.split("raw fallback: ", 1)[1].rsplit(" (", 1)[0]
    assert raw == prefix + "nft insert rule inet firewalld filter_FORWARD ip daddr %s tcp dport %d accept" % (
        inst.container_addr, inst.container_port)
    subprocess.run(raw, shell=True, check=True)
    journeys, summary = watch_lab(inst)
    conn = next(c for c in summary["connections"] if c["key"]["dport"] == inst.target_port)
    assert conn["outcome"] == "answered", conn


def test_ipv6_drop_by_an_ip6_rule_of_an_inet_chain(lab_instance, caps):
    """IPv6: a counting `ip6 saddr ... drop` in a native inet chain at priority -5 beside Docker's
    ip6tables rules; the IPv4 side of the same chain is not involved."""
    inst = lab_instance("v6-healthy")
    net.run(["nft", "-f", "-"], netns=inst.host_ns, input=(
        "table inet filter {\n chain forward {\n  type filter hook forward priority -5; policy accept;\n"
        "  ip6 saddr %s tcp dport %d counter drop\n }\n}\n" % (inst.client_addr, inst.container_port)))
    j, ev, d = dropped_syn(inst)
    assert j.first.tuple.family == 6
    rv = attribution.attribute(j, ev, d)
    assert (rv.chain.family, rv.chain.table, rv.chain.chain, rv.how) == ("inet", "filter", "forward", "counter"), rv
    assert rv.rule.startswith("ip6 saddr %s tcp dport %d counter drop # handle" % (inst.client_addr, inst.container_port))
    last_bracket(j, "FORWARD", caps, -6)        # bracketed: ip6tables' chain (priority 0) is not a candidate
    chains = attribution.chains_on_hook(ev, 6, "FORWARD")
    assert [(c.family, c.table) for c in chains] == [("inet", "filter"), ("ip6", "filter")]
