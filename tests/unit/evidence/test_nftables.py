"""nft's ruleset as read (evidence/nftables.py): the rule lines of `nft -a list ruleset` keyed by where
they sit, whatever blocks come before them."""
from dnattrace.evidence import nftables

BAN_LIST = """table ip crowdsec { # handle 3
	set crowdsec-blacklists { # handle 2
		type ipv4_addr
		flags timeout
		elements = { 198.51.100.2 timeout 3h expires 2h59m,
			     203.0.113.9 timeout 3h expires 2h }
	}

	chain crowdsec-chain-forward { # handle 4
		type filter hook forward priority filter - 10; policy accept;
		ip saddr @crowdsec-blacklists counter packets 1 bytes 60 drop # handle 5
	}
}
"""


def test_a_set_whose_elements_span_lines_does_not_hide_the_rules_after_it():
    assert nftables.parse_text(BAN_LIST) == {
        "ip crowdsec crowdsec-chain-forward 5": "ip saddr @crowdsec-blacklists counter drop # handle 5"}
