//! Fetch: the asking path. When nothing fresh was observed, the agent sends the request itself
//! from inside the pod's network namespace to the app's loopback port.
