"""Every cause, family by family, in the order used to break ties. Adding a cause is one entry in its
family module's CAUSES and one test; this module only puts the families together."""
from __future__ import annotations

from dnattrace.diagnose import conntrack, layer2, netfilter, queueing, routing, sockets
from dnattrace.diagnose.replay import Cause

FAMILIES = (routing, netfilter, sockets, layer2, conntrack, queueing)
CATALOGUE: tuple[Cause, ...] = tuple(c for fam in FAMILIES for c in fam.CAUSES)
