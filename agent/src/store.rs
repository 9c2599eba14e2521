//! Store: the latest good snapshot per (pod, endpoint), with its age, source, size and error.
