//! Config drives: built from Ironic's dict or decoded from a gzip+base64 ISO, written to a `config-2` partition.
