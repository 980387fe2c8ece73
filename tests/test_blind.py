"""The blind set as regression tests: every scenario built from a public report (blind/scenarios/, written
by someone who did not write the causes) is diagnosed through the real CLI, and its verdict may only get
better. The ones diagnose gets right must stay right; none may be wrong (Unexplained, the kernel's own
word, is allowed: it is not a claim about the user's host). The harness also checks that the scenario is
broken before its fix, that bpftrace sees the drop its ground truth names, and that the fix repairs it.

Scores and how they were taken: README.md's Accuracy section and blind/RESULTS.md."""
import sys

import pytest

from blind import run as blind_run

CLI = "%s -m dnattrace.cli" % sys.executable
# right in the run recorded in the README (engine at this commit's parent); a regression guard, not a goal
RIGHT = {"a_bridge_addr_removed", "a_iface_forwarding", "a_v6_fib_rpfilter", "a_v6_ptb_filtered",
         "a_vpn_table_overlap", "b_brnf_off", "b_crowdsec_ban", "b_isolation_stage2", "b_legacy_forward_drop",
         "b_loopback_bind", "b_tbf_burst_stall", "b_udp_stale_backend", "b_v6_ndp_input_drop"}


@pytest.mark.kernel
@pytest.mark.parametrize("name", blind_run.all_scenarios())
def test_a_blind_scenario_is_never_diagnosed_wrong(root, name):
    r = blind_run.run_one(name, CLI)
    assert r["verdict"] not in ("BROKEN", "ERROR"), r
    assert r.get("drop_agrees") is not False, r         # the kernel dropped where the ground truth says
    assert r.get("fix_verified") is True, r
    if name in RIGHT:
        assert r["verdict"] == "RIGHT", r
    else:
        assert r["verdict"] in ("RIGHT", "UNEXPLAINED"), r
