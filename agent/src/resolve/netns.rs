//! Entering a network namespace on a dedicated thread and coming back.
