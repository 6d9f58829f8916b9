"""mdatui: a terminal console for an eBPF sockmap accelerator of same-node service-mesh traffic."""

__version__ = "0.1.0"
