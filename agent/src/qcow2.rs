//! qcow2 streamed in one sequential pass: metadata is parsed as it passes, data clusters go straight to the disk.
