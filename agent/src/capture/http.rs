//! HTTP/1.x message parsing over a reassembled byte stream.
