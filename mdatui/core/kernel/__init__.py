"""Everything that calls bpf(2), loads BPF with BCC or reads a perf ring; the rest of core reads the
kernel through these modules."""
