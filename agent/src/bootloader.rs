//! grub-install in a chroot of the deployed root for BIOS partition images.
