//! The pods file: discovery without Kubernetes (format in README.md), reloaded when it changes.
