"""dnattrace: eBPF tracing for kernel packet-drop attribution (Docker DNAT, netfilter, routing)."""
__version__ = "0.1.0"
