//! Expose: the HTTP server that renders the merged node target.
