"""A CrowdSec ban of the client's own address, enforced in a forward-hooked nft chain.

Docker users asked the CrowdSec firewall bouncer to hook FORWARD too (`nftables_hooks: [input,
forward]`), because bans in the input chain did not reach containers; once it does, a client whose
address landed in the blocklist set (a false positive, a shared NAT address) silently loses every
published port while the Docker rules look fine.
https://github.com/crowdsecurity/cs-firewall-bouncer/issues/229
https://github.com/crowdsecurity/cs-firewall-bouncer/issues/312
"""
from blind import common
from blind.scenarios import b_common

SOURCE = "https://github.com/crowdsecurity/cs-firewall-bouncer/issues/229"
FAMILY = 4
PROTO = "tcp"
STALL = False
SET = "crowdsec-blacklists-crowdsec"
# measured: nft_do_chain/NETFILTER_DROP in the host, one per SYN (table ip crowdsec, chain
# crowdsec-chain-forward, hook forward priority -10)
TRUTH = {
    "drop": "nft_do_chain/NETFILTER_DROP",
    "object": "element %s of set %s in table ip crowdsec" % (common.CLIENT4, SET),
    "right_if": ["crowdsec-blacklists", common.CLIENT4],
}
RULESET = f"""
table ip crowdsec {{
  set {SET} {{ type ipv4_addr; flags timeout; elements = {{ 203.0.113.77 timeout 4h, {common.CLIENT4} timeout 4h }} }}
  chain crowdsec-chain-input {{ type filter hook input priority -10; policy accept;
    ip saddr @{SET} counter drop;
  }}
  chain crowdsec-chain-forward {{ type filter hook forward priority -10; policy accept;
    ip saddr @{SET} counter drop;
  }}
}}
"""


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    b_common.nft(ctx, RULESET)
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    """What `cscli decisions delete --ip` makes the bouncer do."""
    common.sh("nft delete element ip crowdsec %s '{ %s }'" % (SET, common.CLIENT4), ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
