//! A minimal ISO 9660 (with Joliet names) writer for config drives.
