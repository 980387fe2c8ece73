"""Broken-on-purpose Docker-style hosts in network namespaces, each with its ground truth."""
