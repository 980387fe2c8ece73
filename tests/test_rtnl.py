"""netns/rtnl.py, the plain-socket netlink questions watch asks at start, against pyroute2's answers on
real namespaces (a lab host: veths to a client and a container namespace, several addresses)."""
import os

import pytest


def test_rtnl_answers_as_pyroute2_does(lab_instance):
    from pyroute2 import IPRoute
    from dnattrace.netns import rtnl
    from dnattrace.netns.enter import entered

    def ipr_in(path):
        """pyroute2 in the namespace, as evidence/links.py opens it (a socket made inside)."""
        with entered(path):
            return IPRoute()
    inst = lab_instance("healthy")
    paths = ["/run/netns/" + ns for ns in (inst.host_ns, inst.client_ns, inst.container_ns)]
    for path in paths:
        with ipr_in(path) as ipr:
            raw = list(ipr.get_addr(family=2)) + list(ipr.get_addr(family=10))
            want_addrs = sorted(a.get_attr("IFA_ADDRESS") for a in raw if not a.get_attr("IFA_ADDRESS").startswith("fe80:"))
            want_peers = {l.get_attr("IFLA_LINK_NETNSID") for l in ipr.get_links()
                          if l.get_attr("IFLA_LINK_NETNSID") is not None}
        assert sorted(rtnl.addresses(path)) == want_addrs
        assert want_addrs, path     # every lab namespace has addresses: the comparison is not vacuous
        assert rtnl.veth_peer_nsids(path) == want_peers
    host = paths[0]
    assert rtnl.veth_peer_nsids(host), "the lab host's veths have peers in other namespaces"
    for other in paths[1:]:
        fd = os.open(other, os.O_RDONLY)
        try:
            with ipr_in(host) as ipr:
                want = ipr.get_netnsid(fd=fd).get("nsid")
        finally:
            os.close(fd)
        assert rtnl.nsid_of(other, host) == want
        assert want in rtnl.veth_peer_nsids(host)
    # a namespace has no id for itself
    assert rtnl.nsid_of(host, host) is None


def test_a_namespace_that_is_gone_is_an_oserror(root):
    from dnattrace.errors import UsageError
    from dnattrace.netns import rtnl
    with pytest.raises((OSError, UsageError)):
        rtnl.addresses("/run/netns/dnattrace-no-such-namespace")
