"""Chain brackets (kernel/plan.py): where watch links them, from a namespace's chain priorities."""
from dnattrace.kernel import plan


def test_one_bracket_below_each_group_on_hooks_with_two_or_more():
    assert plan.groups("FORWARD", [-10, 0, 0]) == [-10, 0]
    assert plan.groups("FORWARD", [0]) == []                 # first/last positions bracket a lone group
    b = plan.brackets({(4, "FORWARD"): [-10, 0], (6, "INPUT"): [0]})
    assert [(x.hook, x.family, x.slot, x.program, x.priority) for x in b] == [
        ("FORWARD", 4, 0, "nf_chain0", -11), ("FORWARD", 4, 1, "nf_chain1", -1)]


def test_adjacent_priorities_and_taken_places_merge_groups():
    assert plan.groups("FORWARD", [-1, 0]) == []             # nothing fits between fail2ban's -1 and 0
    assert plan.groups("FORWARD", [-300, -1, 0]) == [-300, -1]
    # -199 is --hook-detail's conntrack position in PREROUTING: a chain at -198 joins the group before it
    assert plan.groups("PREROUTING", [-300, -198, -100]) == [-300, -100]


def test_more_groups_than_slots_get_none():
    prios = [-70, -60, -50, -40, -30, -20, -10]
    assert len(prios) > len(plan.CHAIN_PROGRAMS) and plan.groups("FORWARD", prios) == []
