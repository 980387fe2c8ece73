"""An iptables-legacy FORWARD policy DROP beside Docker's iptables-nft rules drops the published port.

Two iptables back ends on one host (a firewall script or an older tool on iptables-legacy, Docker
or a docker-in-docker on iptables-nft) each register their own tables on the same hooks; `iptables
-L` (nft) shows Docker's ACCEPT rules and only warns "iptables-legacy tables present", while the
legacy FORWARD chain's DROP policy drops the forwarded connection.
https://github.com/docker-library/docker/issues/467  https://github.com/moby/moby/issues/46636
"""
from blind import common

SOURCE = "https://github.com/docker-library/docker/issues/467"
FAMILY = 4
PROTO = "tcp"
STALL = False
# measured: nf_hook_slow/NETFILTER_DROP in the host, one per SYN: x_tables returns NF_DROP and the hook
# loop frees the packet (an nft DROP frees it inside nft_do_chain instead); the legacy policy counter
# moves, Docker's nft ACCEPT counters stay at 0 (the legacy table ran first on the FORWARD hook)
TRUTH = {
    "drop": "nf_hook_slow/NETFILTER_DROP",
    "object": "the FORWARD chain's policy DROP in iptables-legacy's filter table (x_tables, not nft)",
    "right_if": ["legacy", "FORWARD"],
}


def build(prefix):
    ctx = {}
    common.docker_host(prefix, families=(4,), ctx=ctx)
    common.sh("iptables -A FORWARD -d %s -p tcp --dport %d -j ACCEPT"            # Docker's, in nft
              " && iptables -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
              " && iptables -P FORWARD DROP"
              " && iptables-legacy -A FORWARD -i lo -j ACCEPT"                    # the other firewall
              " && iptables-legacy -P FORWARD DROP" % (common.CTR4, common.CTR_PORT), ns=ctx["host_netns"])
    return ctx


def attempt(ctx):
    return common.attempt_tcp(ctx, FAMILY)


def fix(ctx):
    common.sh("iptables-legacy -P FORWARD ACCEPT", ns=ctx["host_netns"])


def teardown(ctx):
    common.teardown(ctx)
