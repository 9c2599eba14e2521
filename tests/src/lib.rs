//! The testbed: real parts, really started.
