"""The route lookup replayed through the policy rules (diagnose/policy.py), on rules and routes as `ip -j`
prints them."""
from dnattrace.diagnose import policy

KERNEL = [{"priority": 0, "src": "all", "table": "local"}, {"priority": 32766, "src": "all", "table": "main"},
          {"priority": 32767, "src": "all", "table": "default"}]
MAIN = [{"dst": "default", "gateway": "203.0.113.254", "dev": "eth0"}, {"dst": "203.0.113.0/24", "dev": "eth0"},
        {"dst": "172.17.0.0/16", "dev": "docker0"}]


def test_the_kernels_own_rules_find_the_main_tables_route():
    w = policy.walk(KERNEL, MAIN, "172.17.0.2", "198.51.100.7", "eth0")
    assert w.verdict == "route" and w.table == "main" and w.route["dev"] == "docker0" and not w.by_policy


def test_a_source_rule_sends_the_lookup_to_its_table_and_skip_shows_what_main_would_say():
    rules = KERNEL + [{"priority": 100, "src": "198.51.100.0", "srclen": 24, "table": "7"}]
    routes = MAIN + [{"type": "blackhole", "dst": "default", "table": "7"}]
    w = policy.walk(rules, routes, "172.17.0.2", "198.51.100.7", "eth0")
    assert w.verdict == "blackhole" and w.by_policy and policy.rule_text(w.rule) == "100: from 198.51.100.0/24 lookup 7"
    assert policy.walk(rules, routes, "172.17.0.2", "198.51.100.7", "eth0", skip=(100,)).table == "main"
    assert policy.walk(rules, routes, "172.17.0.2", "203.0.113.9", "eth0").table == "main"   # not from that range


def test_throw_and_suppress_prefixlength_fall_through_to_the_next_rule():
    rules = KERNEL + [{"priority": 50, "src": "all", "table": "main", "suppress_prefixlen": 0},
                      {"priority": 60, "src": "all", "table": "9"}]
    routes = [{"dst": "default", "dev": "eth0"}, {"type": "throw", "dst": "172.17.0.0/16", "table": "9"}]
    w = policy.walk(rules, routes, "172.17.0.2", None, "")
    assert w.verdict == "route" and w.table == "main" and w.rule["priority"] == 32766


def test_an_action_rule_and_a_negated_iif_are_replayed():
    rules = KERNEL + [{"priority": 10, "not": None, "src": "all", "iif": "lo", "dst": "172.17.0.0", "dstlen": 16,
                       "action": "prohibit"}]
    assert policy.walk(rules, MAIN, "172.17.0.2", "198.51.100.7", "eth0").verdict == "prohibit"
    assert policy.walk(rules, MAIN, "172.17.0.2", "198.51.100.7", "lo").verdict == "route"


def test_a_mark_selector_is_unknown_not_guessed_and_ipv6_uses_its_own_rules():
    rules = KERNEL + [{"priority": 5, "src": "all", "fwmark": "0x1", "table": "3"}]
    w = policy.walk(rules, MAIN, "172.17.0.2", None, "")
    assert w.unknown == ["5: from all fwmark 0x1 lookup 3"] and w.table == "main"
    v6 = [dict(r, family=6) for r in KERNEL]
    assert policy.walk(v6, [{"dst": "2001:db8::/32", "dev": "br0", "family": 6}], "2001:db8::5").route["dev"] == "br0"
    assert policy.walk(v6, [], "2001:db8::5").verdict == "none"
