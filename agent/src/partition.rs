//! Partition images: the disk layout (GPT or MBR), swap, ephemeral and ESP filesystems, the root image.
