//! The command line (clap). Every flag also reads a `LOUPE_...` environment variable.
