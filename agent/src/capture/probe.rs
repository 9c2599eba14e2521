//! Loading the eBPF object, attaching it in pod namespaces, reading its ring buffer.
