//! UEFI boot entries through efivarfs: load options for the deployed OS, first in BootOrder.
