"""The data a trace produces, as plain dataclasses: the contract between the kernel side (events), the
journey builder, the cause catalogue and the renderers. Nothing here touches the kernel, so recorded
journeys can be rebuilt from JSON in unit tests (to_dict / from_dict round-trip).
"""
from __future__ import annotations

import dataclasses
import functools
import ipaddress
from dataclasses import dataclass, field
from typing import NamedTuple, Optional

HOOKS = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")

# Step.point values
RX = "rx"              # device receive (netif_receive_skb): the packet arrived on an interface
NF = "nf"              # seen by a netfilter hook at one priority (Step.hook, Step.stage)
ROUTE = "route"        # route decision for the packet (fib lookup / route input result)
XMIT = "xmit"          # handed to a device for transmit (net_dev_xmit)
DROP = "drop"          # freed as dropped (kfree_skb): location + reason
CONSUME = "consume"    # freed as consumed (consume_skb): delivered to a socket or done after transmit
VERDICT = "verdict"    # a netfilter hook's verdict when it was not ACCEPT (fexit/kretprobe nf_hook_slow)
RTRESULT = "rtresult"  # the route input result (fexit/kretprobe ip_route_input_noref): location = dst->input
POINTS = (RX, NF, ROUTE, XMIT, DROP, CONSUME, VERDICT, RTRESULT)

# Step.stage values for NF steps: where inside the hook the probe sits. "chain": a chain bracket, linked
# just before the base chains at Step.priority (the chains before it let the packet through)
STAGES = ("first", "conntrack", "dnat", "filter", "snat", "last", "chain")

PROTO_NAMES = {1: "icmp", 6: "tcp", 17: "udp"}
PROTO_NUMBERS = {v: k for k, v in PROTO_NAMES.items()}


def hostport(addr: str, port: int) -> str:
    """ADDR:PORT, with an IPv6 address in brackets ([2001:db8::1]:80) as URLs and ss write it."""
    return ("[%s]:%d" if ":" in (addr or "") else "%s:%d") % (addr, port)


def family_of(addr: str) -> int:
    """4 or 6, from an address's text."""
    return 6 if ":" in (addr or "") else 4


class Tuple5(NamedTuple):
    """A packet's addresses; a named tuple because watch makes hundreds of thousands of them."""
    proto: int          # IP protocol number
    src: str            # dotted quad, or IPv6 text
    sport: int
    dst: str
    dport: int

    def reversed(self) -> "Tuple5":
        return Tuple5(self.proto, self.dst, self.dport, self.src, self.sport)

    def __str__(self):
        return "%s -> %s" % (hostport(self.src, self.sport), hostport(self.dst, self.dport))

    @property
    def family(self) -> int:
        return family_of(self.src)

    def __repr__(self):
        return "Tuple5(%d, %s)" % (self.proto, self)

    @property
    def proto_name(self):
        return PROTO_NAMES.get(self.proto, str(self.proto))


@dataclass
class CtInfo:
    """The conntrack entry attached to the packet, when it has one."""
    state: str                      # NEW, ESTABLISHED, RELATED, REPLY (established reply), INVALID
    orig: Optional[Tuple5] = None   # original direction tuple
    reply: Optional[Tuple5] = None  # reply direction tuple (shows the NAT: reply.src != orig.dst means DNAT)
    status: int = 0                 # IPS_* bits

    @property
    def dnat(self) -> Optional[tuple[str, int]]:
        """(address, port) the connection is DNATed to, or None."""
        if self.orig and self.reply and (self.reply.src, self.reply.sport) != (self.orig.dst, self.orig.dport):
            return self.reply.src, self.reply.sport
        return None


@dataclass
class RouteInfo:
    table: int                      # routing table id (254 main, 255 local)
    oif: str = ""                   # output device of the result ("" when none)
    err: int = 0                    # 0, or the negative errno of the lookup
    dst: str = ""                   # address looked up
    gateway: str = ""
    local: Optional[bool] = None    # True: delivered locally; False: must be forwarded; None: unknown
    reverse: bool = False           # the reverse-path (source validation) lookup, not the forward one


@dataclass(slots=True)
class Step:
    """One observation of one packet at one probe point."""
    ts_ns: int
    point: str                      # one of POINTS
    netns: int = 0                  # network namespace inode
    netns_name: str = ""            # "host", an ip-netns name, a container name, or "netns:<inode>"
    ifname: str = ""                # device: receive device, hook's in (or out) device, transmit device
    hook: Optional[str] = None      # NF only: one of HOOKS
    stage: Optional[str] = None     # NF only: one of STAGES
    priority: Optional[int] = None  # NF only: the probe's priority within the hook
    tuple: Optional[Tuple5] = None  # the packet's addresses as seen here (after any rewrite before here)
    tcp_flags: str = ""             # e.g. "S", "SA", "R", "A"
    ct: Optional[CtInfo] = None
    route: Optional[RouteInfo] = None
    location: str = ""              # DROP / CONSUME: symbolized site, e.g. "ip_error+0x68"
    reason: str = ""                # DROP: kernel drop reason name, e.g. "IP_INADDRERRORS"; RTRESULT: errno name
    out_ifname: str = ""            # NF: the hook's output device when known
    seq: Optional[int] = None       # TCP: the sequence number (a SYN's tells a new connection on a reused port)
    reason_inferred: Optional[bool] = None   # DROP: True when the kernel reports no drop reasons (before 5.17): inferred from the site

    @property
    def where(self) -> str:
        if self.point == NF:
            return "%s/%s" % (self.hook, self.stage)
        return self.point


@dataclass
class Journey:
    """One packet (one skb, followed across NAT rewrites and veth pairs) from its first to its last step."""
    skb: int
    steps: list[Step] = field(default_factory=list)
    direction: str = "request"      # "request" (towards the service) or "reply"
    lost_events: int = 0            # ring-buffer losses while this journey was open
    unobservable: list[str] = field(default_factory=list)   # points this kernel cannot show ("netfilter hooks")

    @property
    def first(self) -> Step:
        return self.steps[0]

    @property
    def last(self) -> Step:
        return self.steps[-1]

    @property
    def outcome(self) -> str:
        """dropped | delivered (consumed by a local socket) | sent (left by an interface) | unfinished."""
        end = self.end_step
        if end is None:
            return "unfinished"
        if end.point == DROP:
            return "dropped"
        if end.point == CONSUME:
            # freed after it was handed to a device: it left this host (transmit completion)
            before = [s for s in self.steps if s.ts_ns <= end.ts_ns and s is not end]
            if before and before[-1].point == XMIT:
                return "sent"
            return "delivered"
        return "sent"

    @property
    def end_step(self) -> Optional[Step]:
        for s in reversed(self.steps):
            if s.point in (DROP, CONSUME):
                return s
        if self.steps and self.steps[-1].point == XMIT:
            return self.steps[-1]
        return None

    @property
    def drop(self) -> Optional[Step]:
        s = self.end_step
        return s if s is not None and s.point == DROP else None

    @property
    def left(self) -> bool:
        """The packet was handed to a device after its last route decision, or delivered here, or its end
        is known. A packet routed but not left may still be dropped: parked on a neighbour that does not
        answer, a reply (reply-policy-route) is dropped about 3 s later."""
        if self.outcome != "unfinished":
            return True
        routes = self.routes()
        if routes and routes[-1].route is not None and routes[-1].route.local:
            return True         # delivered to this namespace's own socket (TCP frees it without a tracepoint)
        return any(s.point == XMIT and (not routes or s.ts_ns > routes[-1].ts_ns) for s in self.steps)

    def hooks_seen(self, netns: Optional[int] = None) -> list[str]:
        """Netfilter hooks the packet reached, in order, without repeats (optionally in one namespace)."""
        out: list[str] = []
        for s in self.steps:
            if s.point == NF and (netns is None or s.netns == netns) and (not out or out[-1] != s.hook):
                out.append(s.hook)
        return out

    def last_nf(self) -> Optional[Step]:
        for s in reversed(self.steps):
            if s.point == NF:
                return s
        return None

    def routes(self) -> list[Step]:
        return [s for s in self.steps if s.point == ROUTE]

    def tuples(self) -> list[Tuple5]:
        """Every distinct tuple the packet carried, in order (shows NAT rewrites)."""
        out: list[Tuple5] = []
        for s in self.steps:
            if s.tuple is not None and s.tuple not in out:
                out.append(s.tuple)
        return out


def _after_handshake(j: Journey) -> bool:
    return bool(j.steps) and bool(j.first.tcp_flags) and "S" not in j.first.tcp_flags and "R" not in j.first.tcp_flags


@dataclass
class Connection:
    """The journeys of one connection attempt: the client's packets (retransmissions grouped) and the replies."""
    key: Tuple5                                 # the client's original tuple (before any NAT)
    requests: list[Journey] = field(default_factory=list)
    replies: list[Journey] = field(default_factory=list)

    @property
    def openers(self) -> list[Journey]:
        """The transmissions of the attempt: the SYNs for TCP (first and retransmitted), every packet for UDP."""
        if self.key is None or self.key.proto != 6:
            return self.requests
        return [j for j in self.requests if "S" in j.first.tcp_flags] or self.requests

    @property
    def attempts(self) -> int:
        return len(self.openers)

    @property
    def dropped(self) -> int:
        return sum(1 for j in self.openers if j.outcome == "dropped")

    @property
    def answered(self) -> bool:
        return bool(self.replies)

    @property
    def data_requests(self) -> list[Journey]:
        """TCP: the client's followed packets after the handshake (they carry data: bare ACKs are not followed)."""
        return [j for j in self.requests if _after_handshake(j)]

    @property
    def data_replies(self) -> list[Journey]:
        return [j for j in self.replies if _after_handshake(j)]

    @property
    def outcome(self) -> str:
        """answered | refused (RST reply) | stalled | reply-dropped | reply-unfinished | dropped | no-reply |
        unfinished | incomplete. A reply counts as an answer only if it was not dropped on its way back and
        was seen leaving (or delivered): the verdict is about the client. Replies dropped and none out is
        "reply-dropped", even when a later one (the SYN-ACK retransmitted) is still parked when watching
        ends; parked replies alone (on a neighbour that may not answer) are "reply-unfinished". Neither is
        an answer. TCP: a handshake answered whose data replies (the followed ones: the first data
        packet, every one with --all) were all dropped, or whose data requests were all dropped, is
        "stalled". A failure seen while events were lost
        is "incomplete": the missing events may hold the answer, so no verdict is given that they could
        contradict."""
        if self._refused():
            return "refused"
        if any(j.outcome != "dropped" and j.left for j in self.replies):
            data, sent = self.data_replies, self.data_requests
            if data and all(j.outcome == "dropped" for j in data):
                return "stalled"
            if sent and not data and all(j.outcome == "dropped" for j in sent):
                return "stalled"        # the handshake passed, the client's data did not
            return "answered"
        if any(j.lost_events for j in self.requests + self.replies):
            return "incomplete"
        if any(j.outcome == "dropped" for j in self.replies):
            return "reply-dropped"
        if self.replies:
            return "reply-unfinished"
        if self.openers and all(j.outcome == "dropped" for j in self.openers):
            return "dropped"
        if any(j.outcome == "unfinished" for j in self.openers):
            return "unfinished"
        return "no-reply"

    def _refused(self) -> bool:
        """A RST answered the attempt: it came back before any handshake answer (SYN-ACK) left for the
        client. A RST after the handshake was answered ends a connection that worked (the server's
        close of a socket the client left, a conntrack entry gone under a late packet): not a refusal."""
        resets = [j.first.ts_ns for j in self.replies if j.steps and "R" in j.first.tcp_flags]
        if not resets:
            return False
        answers = [j.first.ts_ns for j in self.replies if j.steps and "S" in j.first.tcp_flags
                   and "A" in j.first.tcp_flags and j.outcome != "dropped" and j.left]
        return not answers or min(resets) < min(answers)


# --- JSON round trip (stable field names; used by --json output and by recorded test journeys) ---

_SCALARS = (str, int, float, bool)
_FIELD_NAMES: dict[type, tuple[str, ...]] = {}


def _field_names(cls) -> tuple[str, ...]:
    names = _FIELD_NAMES.get(cls)
    if names is None:
        names = _FIELD_NAMES[cls] = tuple(f.name for f in dataclasses.fields(cls))
    return names


def to_dict(obj):
    """Dataclass -> plain dict, dropping empty values to keep JSON lines short. (watch --json writes one
    per journey: this is on its hot path, hence the cached field names and the scalar shortcut.)"""
    t = type(obj)
    if t in _SCALARS or obj is None:
        return obj
    if t is Tuple5:
        return obj._asdict()
    if t is list:
        return [to_dict(v) for v in obj]
    if t is Step:
        return _step_dict(obj)
    if dataclasses.is_dataclass(obj):
        out = {}
        for name in _field_names(t):
            v = getattr(obj, name)
            if v is None or v == "" or v == []:
                continue
            out[name] = v if type(v) in _SCALARS else to_dict(v)
        return out
    return obj


def _step_dict(s: Step) -> dict:
    """A Step's dict, written out: the generic path costs several times more per step."""
    d = {"ts_ns": s.ts_ns, "point": s.point, "netns": s.netns}
    if s.netns_name:
        d["netns_name"] = s.netns_name
    if s.ifname:
        d["ifname"] = s.ifname
    if s.hook is not None:
        d["hook"] = s.hook
    if s.stage is not None:
        d["stage"] = s.stage
    if s.priority is not None:
        d["priority"] = s.priority
    if s.tuple is not None:
        d["tuple"] = _tuple_dict(s.tuple)
    if s.tcp_flags:
        d["tcp_flags"] = s.tcp_flags
    if s.ct is not None:
        d["ct"] = _ct_dict(s.ct)
    if s.route is not None:
        d["route"] = to_dict(s.route)
    if s.location:
        d["location"] = s.location
    if s.reason:
        d["reason"] = s.reason
    if s.out_ifname:
        d["out_ifname"] = s.out_ifname
    if s.seq is not None:
        d["seq"] = s.seq
    if s.reason_inferred:
        d["reason_inferred"] = True
    return d


@functools.lru_cache(maxsize=4096)
def _tuple_dict(t: Tuple5) -> dict:
    """A tuple's dict, shared by every step that carries the tuple (the steps of one flow repeat a few
    tuples many times; callers only read it)."""
    return t._asdict()


def _ct_dict(ct: CtInfo) -> dict:
    d = {"state": ct.state}
    if ct.orig is not None:
        d["orig"] = _tuple_dict(ct.orig)
    if ct.reply is not None:
        d["reply"] = _tuple_dict(ct.reply)
    d["status"] = ct.status
    return d


def _tuple(d):
    return Tuple5(**d) if d else None


def step_from_dict(d) -> Step:
    d = dict(d)
    d["tuple"] = _tuple(d.get("tuple"))
    if d.get("ct"):
        ct = dict(d["ct"])
        ct["orig"], ct["reply"] = _tuple(ct.get("orig")), _tuple(ct.get("reply"))
        d["ct"] = CtInfo(**ct)
    if d.get("route"):
        d["route"] = RouteInfo(**d["route"])
    return Step(**d)


def journey_from_dict(d) -> Journey:
    return Journey(skb=d["skb"], steps=[step_from_dict(s) for s in d.get("steps", [])],
                   direction=d.get("direction", "request"), lost_events=d.get("lost_events", 0),
                   unobservable=list(d.get("unobservable", [])))


def connection_from_dict(d) -> Connection:
    return Connection(key=Tuple5(**d["key"]),
                      requests=[journey_from_dict(j) for j in d.get("requests", [])],
                      replies=[journey_from_dict(j) for j in d.get("replies", [])])


def ip_in(addr: str, cidr: str) -> bool:
    return ipaddress.ip_address(addr) in ipaddress.ip_network(cidr, strict=False)


@dataclass
class ChainRef:
    """A netfilter base chain as the kernel runs it: every base chain registered on a hook runs, in the
    order of its priority, whatever table, family or tool it belongs to (evidence/attribution.py)."""
    family: str                     # nft family: ip, ip6, inet, bridge, netdev, arp
    table: str                      # "filter", "firewalld", "nat", ...
    chain: str                      # "FORWARD", "filter_FORWARD", ...
    hook: str                       # PREROUTING|INPUT|FORWARD|OUTPUT|POSTROUTING|ingress|egress
    priority: int
    backend: str = "nft"            # nft | iptables-nft | iptables-legacy
    owner: str = "unknown"          # docker, podman, firewalld, ufw, kube-proxy, cni, crowdsec, fail2ban, nftables, unknown

    def __str__(self):
        return "%s %s %s (%s, %s priority %d%s)" % (
            self.family, self.table, self.chain, self.backend, self.hook, self.priority,
            "" if self.owner == "unknown" else ", " + self.owner)
