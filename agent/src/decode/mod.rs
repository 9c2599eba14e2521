//! Decode: the exposition codec. Exact, streaming parsing of Prometheus text 0.0.4 and
//! OpenMetrics 1.0, validation, and the merge of many pods' bodies into one node target. No I/O.
