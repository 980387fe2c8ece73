"""A CrowdSec ban of the client's own address, enforced in a forward-hooked nft chain.

Docker users asked the CrowdSec firewall bouncer to hook FORWARD too (`nftables_hooks: [input,
forward]`), because bans in the input chain did not reach containers; once it does, a client whose
address landed in the blocklist set (a false positive, a shared NAT address) silently loses every
published port while the Docker rules look fine.
https://github.com/crowdsecurity/cs-firewall-bouncer/issues/229
https://github.com/crowdsecurity/cs-firewall-bouncer/issues/312
"""
from blind.scenarios import b_common as c

SOURCE = "https://github.com/crowdsecurity/cs-firewall-bouncer/issues/229"
FAMILY = 4
PROTO = "tcp"
STALL = False
SET = "crowdsec-blacklists-crowdsec"
TRUTH = {
    "drop": "nft_do_chain / NETFILTER_DROP in the host (measured, one per SYN, in table ip crowdsec,"
            " chain crowdsec-chain-forward, hook forward priority -10)",
    "object": f"element {c.CLIENT4} of set ip crowdsec {SET}",
    "right_if": ["crowdsec-blacklists", c.CLIENT4],
}
BODY = b"hello from the container\n"
RULESET = f"""
table ip crowdsec {{
  set {SET} {{ type ipv4_addr; flags timeout; elements = {{ 203.0.113.77 timeout 4h, {c.CLIENT4} timeout 4h }} }}
  chain crowdsec-chain-input {{ type filter hook input priority -10; policy accept;
    ip saddr @{SET} counter drop;
  }}
  chain crowdsec-chain-forward {{ type filter hook forward priority -10; policy accept;
    ip saddr @{SET} counter drop;
  }}
}}
"""


def build(prefix: str) -> dict:
    ctx = c.build_host(prefix)
    c.guarded(ctx, lambda: (c.http_server(ctx), c.nft(ctx, RULESET)))
    return ctx


def attempt(ctx) -> bool:
    return c.http_get(ctx["names"]["client"], f"http://{c.HOST4}:{ctx['port']}/index.html", BODY)


def fix(ctx) -> None:
    c.sh(f"nft delete element ip crowdsec {SET} '{{ {c.CLIENT4} }}'", ctx["host_netns"])


def teardown(ctx) -> None:
    c.teardown_host(ctx)
