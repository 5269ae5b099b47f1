"""Storage: the byte-range map of a torrent onto files, mmap/pwrite I/O, hashing pools, create."""
