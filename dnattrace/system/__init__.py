"""Read-only evidence about the system: sysctls, links/routes/neighbours, firewall rules and counters,
conntrack statistics, listening sockets and Docker containers. Every reader takes the network namespace to
read as a path (/run/netns/X, /proc/PID/ns/net; None = the caller's own) and never changes anything.
"""
