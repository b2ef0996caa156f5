"""Pure domain code: no I/O, no clock reads, imports nothing else of tracker's."""
