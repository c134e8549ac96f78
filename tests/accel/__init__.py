"""Tests of vmcore/accel: the software CPU, the KVM exit loop, coalesced regions and ioeventfds."""
