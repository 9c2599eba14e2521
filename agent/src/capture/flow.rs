//! Flow reassembly by TCP sequence number; bounded per flow and in total.
