//! `loupe doctor`: what will and will not work on this node, and why.
